"""The one place conv output lengths are computed, against torch's own layers."""

import pytest
import torch

from xcodec_fast.lengths import conv_output_length, conv_transpose_output_length, truncating_conv_output_length


@pytest.mark.parametrize("kernel, stride, padding, dilation", [(7, 1, 3, 1), (8, 4, 2, 1), (3, 1, 9, 9), (10, 5, 0, 1),
                                                               (16, 8, 4, 1), (2, 2, 0, 1), (7, 1, 27, 9)])
def test_lengths_match_torch(kernel, stride, padding, dilation):
    for length in (1, 2, 7, 100, 321):
        if length + 2 * padding - dilation * (kernel - 1) - 1 >= 0:
            conv = torch.nn.Conv1d(1, 1, kernel, stride, padding, dilation)
            assert conv(torch.zeros(1, 1, length)).shape[-1] == conv_output_length(length, kernel, stride, padding, dilation)
        output_padding = stride % 2 if stride > 1 else 0
        transposed = torch.nn.ConvTranspose1d(1, 1, kernel, stride, padding, output_padding, dilation=dilation)
        expected = transposed(torch.zeros(1, 1, length)).shape[-1] if (length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1 > 0 else None
        if expected is not None:
            assert expected == conv_transpose_output_length(length, kernel, stride, padding, output_padding, dilation)
    lengths = torch.tensor([1, 50, 321])
    assert conv_output_length(lengths, kernel, stride, padding, dilation).tolist() == [
        conv_output_length(int(n), kernel, stride, padding, dilation) for n in lengths]



@pytest.mark.parametrize("kernel, stride, padding, dilation", [(7, 1, 3, 1), (8, 4, 2, 1), (3, 1, 9, 9), (10, 5, 0, 1),
                                                               (16, 8, 4, 1), (2, 2, 0, 1), (7, 1, 27, 9)])
def test_truncating_length_is_transformers_arithmetic(kernel, stride, padding, dilation):
    """transformers' int(numerator / stride + 1): torch's length wherever the numerator is
    non-negative; for negative numerators it truncates toward zero where torch floors."""
    for length in range(0, 400):
        numerator = length + 2 * padding - dilation * (kernel - 1) - 1
        ours = truncating_conv_output_length(length, kernel, stride, padding, dilation)
        assert ours == int(numerator / stride + 1)
        if numerator >= 0:
            assert ours == conv_output_length(length, kernel, stride, padding, dilation)
        else:
            assert ours >= conv_output_length(length, kernel, stride, padding, dilation)


def test_truncating_length_differs_from_torch_for_negative_numerators():
    # numerator 2 - 7 = -5 with stride 4: transformers int(-0.25) = 0, torch's floor -2 + 1 = -1.
    assert truncating_conv_output_length(2, 8, 4) == 0
    assert conv_output_length(2, 8, 4) == -1
    # Within one stride below zero they still agree (both 0), and a multiple of the stride too.
    assert truncating_conv_output_length(4, 8, 4) == conv_output_length(4, 8, 4) == 0
    assert truncating_conv_output_length(1, 9, 4) == conv_output_length(1, 9, 4) == -1
