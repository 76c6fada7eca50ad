"""Where each op runs inside X-Codec: every op call of one encode and one decode, with its geometry.

Derived from the config (channels, strides, kernel sizes of the DAC encoder and decoder, codebook
geometry) and a clip length, never hard-coded. The benchmark's kernel cases and the Triton compile
check (every launch configuration the real model makes) both read this list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import XcodecConfig
from .lengths import conv_output_length, conv_transpose_output_length

RESIDUAL_KERNEL = 7  # DAC residual units: Conv1d(k=7, dilation d) then Conv1d(k=1)
RESIDUAL_DILATIONS = (1, 3, 9)


@dataclass(frozen=True)
class Site:
    """One place in the model where an op runs, with its per-item (batch-free) geometry."""

    op: str
    where: str  # e.g. "enc.block1", "dec.block3"
    params: dict = field(hash=False)

    def label(self) -> str:
        p = self.params
        if self.op in ("snake", "add_snake"):
            return f"{self.where} C={p['channels']} T={p['frames']}"
        if self.op == "residual_unit":
            return f"{self.where} C={p['channels']} T={p['frames']} d={p['dilation']}"
        if self.op in ("snake_conv1d", "snake_conv_transpose1d", "conv1d", "conv1d_time_major"):
            return (
                f"{self.where} {p['in_channels']}->{p['out_channels']} T={p['frames']} k={p['kernel']} s={p['stride']}"
            )
        if self.op == "linear":
            return f"{self.where} {p['in_features']}->{p['out_features']} T={p['frames']}"
        return f"{self.where} Q={p['num_quantizers']} K={p['codebook_size']} D={p['dim']} T={p['frames']}"


def model_sites(config: XcodecConfig, num_samples: int, dilations=RESIDUAL_DILATIONS) -> list[Site]:
    """Every op call of one encode and one decode of a ``num_samples`` clip, deduplicated."""
    acoustic = config.acoustic_model_config
    sites: list[Site] = []

    def activation_sites(where: str, channels: int, frames: int) -> None:
        for dilation in dilations:
            sites.append(Site("residual_unit", where, dict(channels=channels, frames=frames, dilation=dilation)))
        # snake and add_snake run on the residual stream between units: same tensors.
        sites.append(Site("snake", where, dict(channels=channels, frames=frames)))
        sites.append(Site("add_snake", where, dict(channels=channels, frames=frames)))

    # Encoder: conv1 (k=7, 'same') to encoder_hidden_size, then blocks that double channels.
    frames, channels = num_samples, acoustic.encoder_hidden_size
    for index, stride in enumerate(acoustic.downsampling_ratios, start=1):
        activation_sites(f"enc.block{index}", channels, frames)
        kernel, padding = 2 * stride, math.ceil(stride / 2)
        sites.append(
            Site(
                "snake_conv1d",
                f"enc.block{index}",
                dict(
                    in_channels=channels,
                    out_channels=2 * channels,
                    frames=frames,
                    kernel=kernel,
                    stride=stride,
                    padding=padding,
                ),
            )
        )
        frames, channels = conv_output_length(frames, kernel, stride, padding), 2 * channels
    sites.append(
        Site(
            "snake_conv1d",
            "enc.out",
            dict(in_channels=channels, out_channels=acoustic.hidden_size, frames=frames, kernel=3, stride=1, padding=1),
        )
    )

    # Semantic model: its feature encoder's convs on the padded clip (X-Codec pads 160 samples per
    # side), then its layers at the code frame rate (HuBERT / WavLM hop 320), then the codec's fc / fc1.
    code_frames = frames
    semantic = config.semantic_model_config
    conv_frames, conv_in = num_samples + 2 * (config.hop_length // 2), 1
    for index, (width, kernel, stride) in enumerate(zip(semantic.conv_dim, semantic.conv_kernel, semantic.conv_stride)):
        geometry = dict(in_channels=conv_in, out_channels=width, frames=conv_frames, kernel=kernel, stride=stride,
                        padding=0)
        # the eager reference runs (B, C, T) convs, native the time-major ones (ops.runs_time_major)
        sites.append(Site("conv1d", f"sem.conv{index}", geometry))
        sites.append(Site("conv1d_time_major", f"sem.conv{index}", dict(geometry)))
        conv_frames, conv_in = conv_output_length(conv_frames, kernel, stride, 0), width
    for where, features_in, features_out in (
        ("sem.projection", semantic.conv_dim[-1], semantic.hidden_size),
        ("sem.attention", semantic.hidden_size, semantic.hidden_size),
        ("sem.ffn_in", semantic.hidden_size, semantic.intermediate_size),
        ("sem.ffn_out", semantic.intermediate_size, semantic.hidden_size),
        ("codec.fc", config.hidden_size, config.hidden_size),
        ("codec.fc1", config.hidden_size, config.semantic_hidden_size),
    ):
        sites.append(Site("linear", where, dict(in_features=features_in, out_features=features_out, frames=code_frames)))

    # Quantizer, at the code frame rate.
    vq = dict(
        num_quantizers=config.num_quantizers,
        codebook_size=config.codebook_size,
        dim=config.codebook_dim,
        frames=code_frames,
    )
    sites.append(Site("rvq_encode", "quantizer", dict(vq)))
    sites.append(Site("rvq_decode", "quantizer", dict(vq)))
    sites.append(Site("dequantize_project", "quantizer", dict(vq, out_dim=acoustic.hidden_size)))

    # Decoder: conv1 to decoder_hidden_size, then blocks that halve channels while upsampling.
    frames, channels = code_frames, acoustic.decoder_hidden_size
    for index, stride in enumerate(acoustic.upsampling_ratios, start=1):
        kernel, padding, output_padding = 2 * stride, math.ceil(stride / 2), stride % 2  # X-Codec's output_padding
        sites.append(
            Site(
                "snake_conv_transpose1d",
                f"dec.block{index}",
                dict(
                    in_channels=channels,
                    out_channels=channels // 2,
                    frames=frames,
                    kernel=kernel,
                    stride=stride,
                    padding=padding,
                    output_padding=output_padding,
                ),
            )
        )
        frames, channels = conv_transpose_output_length(frames, kernel, stride, padding, output_padding), channels // 2
        activation_sites(f"dec.block{index}", channels, frames)
    sites.append(
        Site(
            "snake_conv1d",
            "dec.out",
            dict(in_channels=channels, out_channels=1, frames=frames, kernel=7, stride=1, padding=3),
        )
    )
    return _merge_duplicates(sites)


def _merge_duplicates(sites: list[Site]) -> list[Site]:
    """One case per distinct (op, geometry); e.g. snake at 64 x N runs in both encoder and decoder."""
    merged: dict[tuple, Site] = {}
    for site in sites:
        key = (site.op, tuple(sorted(site.params.items())))
        if key in merged:
            first = merged[key]
            merged[key] = Site(site.op, f"{first.where}+{site.where}", first.params)
        else:
            merged[key] = site
    return list(merged.values())
