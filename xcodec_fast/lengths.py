"""Convolution output lengths: the one place they are computed (ints or integer tensors)."""

from __future__ import annotations


def conv_output_length(length, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1):
    """torch's Conv1d output length (floor division, as torch computes it)."""
    return (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_transpose_output_length(length, kernel: int, stride: int = 1, padding: int = 0, output_padding: int = 0,
                                 dilation: int = 1):
    """torch's ConvTranspose1d output length."""
    return (length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
