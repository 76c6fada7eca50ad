"""The one place conv output lengths are computed, against torch's own layers."""

import pytest
import torch

from xcodec_fast.lengths import conv_output_length, conv_transpose_output_length


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

