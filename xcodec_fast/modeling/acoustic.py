"""The DAC acoustic encoder and decoder, in X-Codec's variant (decoder ConvTranspose output_padding
= stride % 2, no final tanh).

Parameter names equal transformers' ``DacEncoder`` / ``DacDecoder`` state-dict keys (with weight norm
already folded into plain ``weight`` tensors); the Snake and conv compute goes through
:mod:`xcodec_fast.ops`, so the backend is chosen there, not here.

Every ``forward`` takes optional per-item ``lengths`` (valid frames of a right-padded batch) and
returns the new lengths: frames past an item's length are zeroed before each temporal conv, so each
item's valid output equals what it gives alone (zero padding of a conv == zeroed frames).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..config import AcousticConfig
from ..ops.winograd import tile_period, tile_reach
from ..lengths import conv_output_length
from ..sites import RESIDUAL_DILATIONS, RESIDUAL_KERNEL

def _on(lengths: Tensor, device: torch.device) -> Tensor:
    # Host lengths (the model keeps them on the CPU) go to the device without a stream sync.
    return lengths.to(device, non_blocking=True)


def zero_beyond(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Zero the frames of x (B, C, T) at or after each item's length; no-op without lengths."""
    if lengths is None:
        return x
    valid = torch.arange(x.shape[-1], device=x.device)[None, :] < _on(lengths, x.device)[:, None]
    return x.masked_fill(~valid[:, None, :], 0)


def zero_outside(x: Tensor, starts: Tensor | None, lengths: Tensor | None) -> Tensor:
    """Zero the frames of x (B, C, T) before ``starts[b]`` or at/after ``lengths[b]`` (either may be None)."""
    if starts is None:
        return zero_beyond(x, lengths)
    frames = torch.arange(x.shape[-1], device=x.device)[None, :]
    valid = frames >= _on(starts, x.device)[:, None]
    if lengths is not None:
        valid &= frames < _on(lengths, x.device)[:, None]
    return x.masked_fill(~valid[:, None, :], 0)


# Decode windows start on the decoder's grid (block_frames code frames, a multiple of the native
# Winograd tile periods), and the decoder's first and last convs and its transposed convs go
# through the ops' grid variants: on the native backend every frame is then computed as in the whole stream
# (oneDNN picks a convolution's algorithm, so its summation order, by width and batch: a 50-frame
# window of a 150-frame decode was 1.6e-6 of the peak apart at the first transposed conv). The
# eager reference keeps transformers' calls; so do graphs traced by torch.compile / torch.export
# (the grid ops take their plain call while tracing).
LATENT_BLOCK_MIN = 16


def _scaled(bound: Tensor | None, factor: int) -> Tensor | None:
    return None if bound is None else bound * factor


class Snake(nn.Module):
    """Holds Snake's per-channel α, shaped (1, C, 1) like transformers' ``Snake1d.alpha``."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return ops.snake(x, self.alpha)


class ResidualUnit(nn.Module):
    """``x + conv1x1(snake(conv7_dilated(snake(x))))``, one :func:`ops.residual_unit` call."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(channels, channels, RESIDUAL_KERNEL, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(channels)
        self.conv2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor, lengths: Tensor | None = None, starts: Tensor | None = None) -> Tensor:
        # snake(0) == 0, so zeroing the unit's input is all the dilated conv needs.
        x = zero_outside(x, starts, lengths)
        return ops.residual_unit(
            x,
            self.snake1.alpha,
            self.conv1.weight,
            self.conv1.bias,
            self.dilation,
            self.snake2.alpha,
            self.conv2.weight,
            self.conv2.bias,
        )


class EncoderBlock(nn.Module):
    """Three residual units at C channels, then snake + strided conv to 2C channels."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.padding = math.ceil(stride / 2)
        self.res_unit1 = ResidualUnit(channels, 1)
        self.res_unit2 = ResidualUnit(channels, 3)
        self.res_unit3 = ResidualUnit(channels, 9)
        self.snake1 = Snake(channels)
        self.conv1 = nn.Conv1d(channels, 2 * channels, 2 * stride, stride=stride, padding=self.padding)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        for unit in (self.res_unit1, self.res_unit2, self.res_unit3):
            x = unit(x, lengths)
        x = zero_beyond(x, lengths)
        x = ops.snake_conv1d(x, self.snake1.alpha, self.conv1.weight, self.conv1.bias, self.stride, self.padding)
        if lengths is not None:
            lengths = conv_output_length(lengths, 2 * self.stride, self.stride, self.padding)
        return x, lengths

    def context(self, left: int, right: int) -> tuple[int, int]:
        """Input samples (before, after) ``j * stride`` that output frame j reads, given that the
        next layer reads [j - left, j + right] of this block's output."""
        # Strided conv: output i reads inputs [i * stride - padding, i * stride - padding + kernel - 1].
        kernel = self.conv1.kernel_size[0]
        left = left * self.stride + self.padding
        right = right * self.stride + kernel - 1 - self.padding
        return _units_context(left, right)


class DacEncoder(nn.Module):
    """audio (B, 1, N) -> acoustic embedding (B, hidden_size, frames)."""

    def __init__(self, config: AcousticConfig):
        super().__init__()
        width = config.encoder_hidden_size
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        blocks = []
        for stride in config.downsampling_ratios:
            blocks.append(EncoderBlock(width, stride))
            width *= 2
        self.block = nn.ModuleList(blocks)
        self.snake1 = Snake(width)
        self.conv2 = nn.Conv1d(width, config.hidden_size, 3, padding=1)

    def forward(self, audio: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = F.conv1d(zero_beyond(audio, lengths), self.conv1.weight, self.conv1.bias, padding=3)
        for block in self.block:
            x, lengths = block(x, lengths)
        x = ops.snake_conv1d(zero_beyond(x, lengths), self.snake1.alpha, self.conv2.weight, self.conv2.bias, 1, 1)
        return x, lengths

    def context(self) -> tuple[int, int]:
        """Samples (before, after) ``j * hop_length`` that output frame j depends on: encoding a
        segment that starts on a frame boundary with this much audio around each kept frame gives
        the whole-stream values there. Derived from the layers, not a constant."""
        pad = self.conv2.padding[0]
        left, right = pad, self.conv2.kernel_size[0] - 1 - pad
        for block in reversed(self.block):
            left, right = block.context(left, right)
        return left + self.conv1.padding[0], right + self.conv1.kernel_size[0] - 1 - self.conv1.padding[0]

    def conv_layers(self) -> list[nn.Conv1d]:
        """Every Conv1d in module order: what transformers walks to predict the output length."""
        return [m for m in self.modules() if isinstance(m, nn.Conv1d)]


class DecoderBlock(nn.Module):
    """snake + ConvTranspose (×stride frames, C -> C/2 channels), then three residual units."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, block_frames: int):
        super().__init__()
        self.stride = stride
        # Input frames per grid step of the transposed conv (ops.snake_conv_transpose1d_on_grid).
        self.block_frames = block_frames
        self.padding = math.ceil(stride / 2)
        # X-Codec's DAC: output_padding = stride % 2 makes every block output exactly stride × frames.
        self.output_padding = stride % 2
        self.snake1 = Snake(in_channels)
        self.conv_t1 = nn.ConvTranspose1d(
            in_channels, out_channels, 2 * stride, stride, self.padding, output_padding=self.output_padding
        )
        self.res_unit1 = ResidualUnit(out_channels, 1)
        self.res_unit2 = ResidualUnit(out_channels, 3)
        self.res_unit3 = ResidualUnit(out_channels, 9)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        x = ops.snake_conv_transpose1d_on_grid(zero_outside(x, starts, lengths), self.snake1.alpha,
                                               self.conv_t1.weight, self.conv_t1.bias, self.stride, self.padding,
                                               self.output_padding, self.block_frames)
        lengths, starts = _scaled(lengths, self.stride), _scaled(starts, self.stride)
        for unit in (self.res_unit1, self.res_unit2, self.res_unit3):
            x = unit(x, lengths, starts)
        return x, lengths

    def context(self, left: int, right: int, tiles: bool = False) -> tuple[int, int]:
        """Input frames of context each side that outputs with ``left``/``right`` frames of context
        need (``tiles``: with the Winograd tiles' rounding reach, see :func:`_units_context`)."""
        left, right = _units_context(left, right, tiles)
        # ConvTranspose: output n reads inputs i with 0 <= n + padding - i * stride < 2 * stride.
        kernel = self.conv_t1.kernel_size[0]
        left = (left + kernel - 1 - self.padding) // self.stride
        right = (right + self.padding - 1) // self.stride + 1
        return left, right


def _latent_block_frames(upsampling_ratios) -> int:
    """Code frames per block of the decoder's code-rate layers, which is also the grid its windows
    start on: a multiple of every residual unit's Winograd tile period counted in code frames
    (tiles then start on the whole decode's tile grid too), at least LATENT_BLOCK_MIN."""
    period, rate = 1, 1
    for stride in upsampling_ratios:
        rate *= stride
        for dilation in RESIDUAL_DILATIONS:
            tile = tile_period(dilation)
            period = math.lcm(period, tile // math.gcd(tile, rate))
    return period * -(-LATENT_BLOCK_MIN // period)


def _units_context(left: int, right: int, tiles: bool = False) -> tuple[int, int]:
    """Context through the three residual units (k=7 at dilations 1, 3, 9; their 1x1 conv adds none);
    ``tiles``: also the frames that move the rounding of a Winograd unit's outputs (tile_reach)."""
    reach = sum((RESIDUAL_KERNEL // 2) * d + (tile_reach(d) if tiles else 0) for d in RESIDUAL_DILATIONS)
    return left + reach, right + reach


class DacDecoder(nn.Module):
    """latent (B, hidden_size, T) -> audio (B, 1, hop_length * T); no tanh (X-Codec removed it)."""

    def __init__(self, config: AcousticConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.conv1 = nn.Conv1d(config.hidden_size, width, 7, padding=3)
        self.block_frames = _latent_block_frames(config.upsampling_ratios)
        blocks, rate = [], 1
        for stride in config.upsampling_ratios:
            blocks.append(DecoderBlock(width, width // 2, stride, self.block_frames * rate))
            width //= 2
            rate *= stride
        self.output_block = self.block_frames * rate  # the last conv's block, in samples
        self.block = nn.ModuleList(blocks)
        self.snake1 = Snake(width)
        self.conv2 = nn.Conv1d(width, 1, 7, padding=3)

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, starts: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Frames outside ``[starts[b], lengths[b])`` are padding: zeroed before every convolution
        (the same as the convolutions' own zero padding at the stream's edges) and 0 in the output."""
        x = ops.conv1d_on_grid(zero_outside(x, starts, lengths), self.conv1.weight, self.conv1.bias,
                               self.conv1.padding[0], self.block_frames)
        for block in self.block:
            x, _ = block(x, lengths, starts)
            lengths, starts = _scaled(lengths, block.stride), _scaled(starts, block.stride)
        x = ops.snake_conv1d_on_grid(zero_outside(x, starts, lengths), self.snake1.alpha, self.conv2.weight,
                                     self.conv2.bias, self.conv2.padding[0], self.output_block)
        return zero_outside(x, starts, lengths), lengths

    def context(self, tiles: bool = False) -> tuple[int, int]:
        """Latent frames (left, right) whose values can reach an output frame's samples: decoding a
        window with this much context on each side reproduces the whole-stream output inside it.
        Derived from the layers (their kernels, dilations, strides, paddings), not a constant.
        ``tiles``: enough more that Winograd residual units round the kept frames as in the whole decode."""
        last_pad = self.conv2.padding[0]  # the last conv, in output samples
        left, right = last_pad, self.conv2.kernel_size[0] - 1 - last_pad
        for block in reversed(self.block):
            left, right = block.context(left, right, tiles)
        # The first conv (k=7, "same" padding) reads `padding` frames each side.
        pad = self.conv1.padding[0]
        return left + pad, right + (self.conv1.kernel_size[0] - 1 - pad)
