"""Convolution output lengths: the one place they are computed (ints or integer tensors).

``conv_output_length`` is torch's (floor division); ``truncating_conv_output_length`` is
transformers' X-Codec arithmetic (truncation toward zero), kept only where we must decide as
transformers does.
"""

from __future__ import annotations


def conv_output_length(length, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1):
    """torch's Conv1d output length (floor division, as torch computes it)."""
    return (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def truncating_conv_output_length(length: int, kernel: int, stride: int = 1, padding: int = 0,
                                  dilation: int = 1) -> int:
    """transformers' ``conv1d_output_length`` (X-Codec): ``int(numerator / stride + 1)``, a float
    division truncated toward zero. Equal to :func:`conv_output_length` for non-negative numerators
    (inputs at least the kernel's reach); for negative ones (inputs shorter than it) it truncates
    toward zero where torch floors, so below -stride it can be larger (numerator -5, stride 4: 0
    where the floor gives -1). Python ints only: the codec uses it to decide, on the host, whether
    transformers would pad the acoustic input (XcodecModel.acoustic_needs_padding)."""
    numerator = length + 2 * padding - dilation * (kernel - 1) - 1
    return int(numerator / stride + 1)


def conv_transpose_output_length(length, kernel: int, stride: int = 1, padding: int = 0, output_padding: int = 0,
                                 dilation: int = 1):
    """torch's ConvTranspose1d output length."""
    return (length - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
