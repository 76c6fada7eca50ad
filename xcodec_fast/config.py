"""Configuration of X-Codec, read from and written to Hugging Face ``config.json`` files.

Defaults equal transformers' ``XcodecConfig()``; unknown keys are kept so that a loaded config
round-trips into a file transformers can read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A config.json that does not describe a model xcodec_fast can build."""


def _pick(cls, data: dict) -> tuple[dict, dict]:
    names = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
    known = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names}
    return known, extra


@dataclass
class AcousticConfig:
    """The DAC encoder/decoder inside X-Codec (model_type ``dac``)."""

    encoder_hidden_size: int = 64
    downsampling_ratios: list = field(default_factory=lambda: [8, 5, 4, 2])
    decoder_hidden_size: int = 1024
    upsampling_ratios: list = field(default_factory=lambda: [8, 5, 4, 2])
    hidden_size: int = 256
    sampling_rate: int = 16000
    extra: dict = field(default_factory=dict)

    model_type = "dac"

    @classmethod
    def from_dict(cls, data: dict) -> "AcousticConfig":
        data = dict(data)
        model_type = data.pop("model_type", "dac")
        if model_type != "dac":
            raise ConfigError(f"acoustic_model_config must have model_type 'dac', got {model_type!r}")
        known, extra = _pick(cls, data)
        cfg = cls(**known, extra=extra)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if list(self.downsampling_ratios) != list(self.upsampling_ratios)[::-1] and math.prod(
            self.downsampling_ratios
        ) != math.prod(self.upsampling_ratios):
            raise ConfigError(
                f"acoustic downsampling_ratios {self.downsampling_ratios} and upsampling_ratios "
                f"{self.upsampling_ratios} must have the same product (the hop length)"
            )
        for name in ("encoder_hidden_size", "decoder_hidden_size", "hidden_size"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"acoustic {name} must be positive, got {getattr(self, name)}")
        if self.decoder_hidden_size % (2 ** len(self.upsampling_ratios)) != 0:
            raise ConfigError(
                f"acoustic decoder_hidden_size {self.decoder_hidden_size} must be divisible by "
                f"2**{len(self.upsampling_ratios)} (it halves at every upsampling block)"
            )

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return {**self.extra, **out, "model_type": "dac"}


@dataclass
class SemanticConfig:
    """The HuBERT or WavLM semantic model (model_type ``hubert`` or ``wavlm``)."""

    model_type: str = "hubert"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    feat_proj_layer_norm: bool = True
    conv_dim: list = field(default_factory=lambda: [512] * 7)
    conv_stride: list = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])
    conv_kernel: list = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    conv_pos_batch_norm: bool = False
    do_stable_layer_norm: bool = False
    num_buckets: int = 320
    max_bucket_distance: int = 800
    extra: dict = field(default_factory=dict)

    SUPPORTED = ("hubert", "wavlm")

    @classmethod
    def from_dict(cls, data: dict) -> "SemanticConfig":
        data = dict(data)
        data.setdefault("model_type", "hubert")
        known, extra = _pick(cls, data)
        cfg = cls(**known, extra=extra)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.model_type not in self.SUPPORTED:
            raise ConfigError(
                f"semantic_model_config has model_type {self.model_type!r}; xcodec_fast supports "
                f"{', '.join(self.SUPPORTED)}"
            )
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel)):
            raise ConfigError(
                f"semantic conv_dim ({len(self.conv_dim)}), conv_stride ({len(self.conv_stride)}) and "
                f"conv_kernel ({len(self.conv_kernel)}) must have the same length"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ConfigError(
                f"semantic hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise ConfigError(f"semantic feat_extract_norm must be 'group' or 'layer', got {self.feat_extract_norm!r}")
        if self.conv_pos_batch_norm:
            raise ConfigError("semantic conv_pos_batch_norm=True is not supported (no X-Codec checkpoint uses it)")

    @property
    def downsampling(self) -> int:
        return math.prod(self.conv_stride)

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        if self.model_type == "hubert":
            out.pop("num_buckets")
            out.pop("max_bucket_distance")
        else:
            out.pop("feat_proj_layer_norm")
            out.pop("conv_pos_batch_norm")
        return {**self.extra, **out}


@dataclass
class XcodecConfig:
    """Top-level X-Codec configuration (model_type ``xcodec``)."""

    target_bandwidths: list = field(default_factory=lambda: [0.5, 1, 1.5, 2, 4])
    sample_rate: int = 16000
    kernel_size: int = 3
    channel_ratios: list = field(default_factory=lambda: [1, 1])
    strides: list = field(default_factory=lambda: [1, 1])
    block_dilations: list = field(default_factory=lambda: [1, 1])
    unit_kernel_size: int = 3
    codebook_size: int = 1024
    codebook_dim: int | None = None
    acoustic_model_config: AcousticConfig = field(default_factory=AcousticConfig)
    semantic_model_config: SemanticConfig = field(default_factory=SemanticConfig)
    extra: dict = field(default_factory=dict)

    model_type = "xcodec"

    def __post_init__(self):
        if isinstance(self.acoustic_model_config, dict):
            self.acoustic_model_config = AcousticConfig.from_dict(self.acoustic_model_config)
        if isinstance(self.semantic_model_config, dict):
            self.semantic_model_config = SemanticConfig.from_dict(self.semantic_model_config)
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size
        self.validate()

    # ---- derived values -------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        return math.prod(self.acoustic_model_config.downsampling_ratios)

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sample_rate / self.hop_length)

    @property
    def codebook_nbits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    @property
    def hidden_size(self) -> int:
        return self.acoustic_model_config.hidden_size + self.semantic_model_config.hidden_size

    @property
    def semantic_hidden_size(self) -> int:
        return self.semantic_model_config.hidden_size

    @property
    def num_quantizers(self) -> int:
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * self.codebook_nbits))

    @property
    def bandwidth_per_quantizer(self) -> float:
        return math.log2(self.codebook_size) * self.frame_rate / 1000

    def num_quantizers_for_bandwidth(self, bandwidth: float | None) -> int:
        """Quantizers used at ``bandwidth`` kbps (None: the highest). Rejects unsupported values."""
        if bandwidth is None:
            return self.num_quantizers
        if hasattr(bandwidth, "item") and getattr(bandwidth, "ndim", 0) == 0:
            bandwidth = bandwidth.item()  # numpy scalars and 0-dim tensors, as transformers accepts
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, numbers.Real) or bandwidth not in self.target_bandwidths:
            raise ValueError(
                f"This model doesn't support the bandwidth {bandwidth}. Select one of {self.target_bandwidths}."
            )
        if bandwidth <= 0:
            return self.num_quantizers
        return int(max(1, math.floor(bandwidth / self.bandwidth_per_quantizer)))

    def validate(self) -> None:
        if not self.target_bandwidths:
            raise ConfigError("target_bandwidths must not be empty")
        if len(self.strides) != len(self.channel_ratios):
            raise ConfigError(
                f"strides ({len(self.strides)}) and channel_ratios ({len(self.channel_ratios)}) must have the same length"
            )
        if self.codebook_dim != self.hidden_size:
            raise ConfigError(
                f"codebook_dim {self.codebook_dim} must equal acoustic hidden_size + semantic hidden_size "
                f"= {self.hidden_size} (the quantizer works on their concatenation)"
            )
        if self.codebook_size < 2:
            raise ConfigError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.num_quantizers < 1:
            raise ConfigError(
                f"target_bandwidths {self.target_bandwidths} give no quantizer at frame rate {self.frame_rate}"
            )
        if self.sample_rate != self.acoustic_model_config.sampling_rate:
            raise ConfigError(
                f"sample_rate {self.sample_rate} differs from the acoustic model's sampling_rate "
                f"{self.acoustic_model_config.sampling_rate}"
            )
        if self.semantic_model_config.downsampling != self.hop_length:
            raise ConfigError(
                f"the semantic model's total conv stride {self.semantic_model_config.downsampling} must equal the "
                f"acoustic hop length {self.hop_length}, or their frame counts cannot line up"
            )

    # ---- (de)serialisation ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> "XcodecConfig":
        data = dict(data)
        model_type = data.pop("model_type", None)
        if model_type != "xcodec":
            raise ConfigError(
                f"config has model_type {model_type!r}, but xcodec_fast loads X-Codec models (model_type 'xcodec'); "
                "pass a checkpoint such as 'hf-audio/xcodec-hubert-librispeech'"
            )
        known, extra = _pick(cls, data)
        return cls(**known, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "XcodecConfig":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        except PermissionError as exc:
            raise ConfigError(f"{path}: permission denied, cannot read the model's config (check the file's "
                              "permissions)") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("extra", "acoustic_model_config", "semantic_model_config")
        }
        out["acoustic_model_config"] = self.acoustic_model_config.to_dict()
        out["semantic_model_config"] = self.semantic_model_config.to_dict()
        return {**self.extra, **out, "model_type": "xcodec"}

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")


def tiny_config(semantic_model_type: str = "hubert", **overrides) -> XcodecConfig:
    """A small X-Codec config with the real hop length (320), quantizer count (8) and codebook
    size (1024): every code path of the full model, at a size that runs in milliseconds on CPU.
    Used by the tests and by the offline demo."""
    semantic = {
        "model_type": semantic_model_type,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "conv_dim": [8] * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "num_buckets": 16,
        "max_bucket_distance": 40,
    }
    semantic.update(overrides.pop("semantic_model_config", {}))
    acoustic = {"encoder_hidden_size": 4, "decoder_hidden_size": 32, "hidden_size": 16}
    acoustic.update(overrides.pop("acoustic_model_config", {}))
    return XcodecConfig(
        acoustic_model_config=AcousticConfig.from_dict(acoustic),
        semantic_model_config=SemanticConfig.from_dict(semantic),
        **overrides,
    )
