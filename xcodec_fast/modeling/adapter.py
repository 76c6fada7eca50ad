"""X-Codec's semantic encoder and decoder: small ELU conv stacks around the semantic features.

Parameter names equal transformers' ``SemanticEncoder`` / ``SemanticDecoder``. The encoder runs on
every ``encode``; the decoder only reconstructs semantic features (X-Codec's training target) and is
kept so that checkpoints round-trip; ``decode`` does not use it. Optional ``lengths`` work as in
:mod:`.acoustic`: frames past each item's length are zeroed before every temporal conv (ELU(0) == 0).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import XcodecConfig
from ..lengths import conv_output_length
from .acoustic import zero_beyond


class EluResidualUnit(nn.Module):
    """``x + conv1x1(elu(conv_k(elu(x))))`` with 'same' padding, no biases."""

    def __init__(self, config: XcodecConfig, channels: int, dilation: int):
        super().__init__()
        kernel = config.unit_kernel_size
        self.conv1 = nn.Conv1d(
            channels, channels, kernel, padding=((kernel - 1) // 2) * dilation, dilation=dilation, bias=False
        )
        self.conv2 = nn.Conv1d(channels, channels, 1, bias=False)
        self.activation = nn.ELU()

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        x = zero_beyond(x, lengths)
        return x + self.conv2(self.activation(self.conv1(self.activation(x))))


def _same_length_conv(conv: nn.Conv1d, x: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor | None]:
    x = conv(zero_beyond(x, lengths))
    if lengths is not None:
        lengths = conv_output_length(lengths, conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0])
    return x, lengths


class SemanticEncoderBlock(nn.Module):
    def __init__(self, config: XcodecConfig, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.res_units = nn.ModuleList(
            [EluResidualUnit(config, in_channels, dilation) for dilation in config.block_dilations]
        )
        # X-Codec's rule: stride 1 uses a 3-tap conv, stride s > 1 a 2s-tap one.
        kernel = 3 if stride == 1 else 2 * stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        for unit in self.res_units:
            x = unit(x, lengths)
        return _same_length_conv(self.conv, x, lengths)


class SemanticEncoder(nn.Module):
    """semantic features (B, H, T) -> (B, H·channel_ratios[-1], T')."""

    def __init__(self, config: XcodecConfig):
        super().__init__()
        hidden = config.semantic_hidden_size
        kernel = config.kernel_size
        self.conv = nn.Conv1d(hidden, hidden, kernel, 1, kernel // 2, bias=False)
        blocks, channels = [], hidden
        for ratio, stride in zip(config.channel_ratios, config.strides):
            out_channels = int(hidden * ratio)
            blocks.append(SemanticEncoderBlock(config, channels, out_channels, stride))
            channels = out_channels
        self.conv_blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x, lengths = _same_length_conv(self.conv, x, lengths)
        for block in self.conv_blocks:
            x, lengths = block(x, lengths)
        return x, lengths

    def output_length(self, frames: int) -> int:
        """Frames out for ``frames`` in (only strided blocks change it)."""
        for conv in [self.conv] + [block.conv for block in self.conv_blocks]:
            frames = conv_output_length(frames, conv.kernel_size[0], conv.stride[0], conv.padding[0])
        return frames


class SemanticDecoderBlock(nn.Module):
    def __init__(self, config: XcodecConfig, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if stride == 1:
            self.conv = nn.Conv1d(in_channels, out_channels, 3, stride=1, padding=1)
        else:
            self.conv = nn.ConvTranspose1d(
                in_channels, out_channels, 2 * stride, stride, (stride + 1) // 2, stride % 2, bias=False
            )
        self.res_units = nn.ModuleList(
            [EluResidualUnit(config, out_channels, dilation) for dilation in config.block_dilations]
        )

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if isinstance(self.conv, nn.ConvTranspose1d):
            x = self.conv(zero_beyond(x, lengths))
            if lengths is not None:
                lengths = lengths * self.conv.stride[0]
        else:
            x, lengths = _same_length_conv(self.conv, x, lengths)
        for unit in self.res_units:
            x = unit(x, lengths)
        return x, lengths


class SemanticDecoder(nn.Module):
    """quantized semantic part (B, H, T) -> reconstructed semantic features (B, H, T')."""

    def __init__(self, config: XcodecConfig):
        super().__init__()
        hidden = config.semantic_hidden_size
        kernel = config.kernel_size
        ratios = list(config.channel_ratios)
        self.conv1 = nn.Conv1d(hidden, int(hidden * ratios[0]), kernel, 1, kernel // 2, bias=False)
        blocks = []
        for i, stride in enumerate(config.strides):
            in_channels = int(hidden * ratios[i])
            out_channels = int(hidden * ratios[i + 1]) if i + 1 < len(ratios) else hidden
            blocks.append(SemanticDecoderBlock(config, in_channels, out_channels, stride))
        self.conv_blocks = nn.ModuleList(blocks)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel, 1, kernel // 2, bias=False)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x, lengths = _same_length_conv(self.conv1, x, lengths)
        for block in self.conv_blocks:
            x, lengths = block(x, lengths)
        x, lengths = _same_length_conv(self.conv2, x, lengths)
        return zero_beyond(x, lengths), lengths
