"""Original X-Codec checkpoints (``.pth`` read weights-only, plus the training ``.yaml``): keys
mapped onto transformers' names, the config read from the yaml."""

from __future__ import annotations

import dataclasses
import io
import re

import torch
from torch import Tensor

from ..config import AcousticConfig, ConfigError, SemanticConfig, XcodecConfig
from .files import CheckpointError
from .state_dict import build_model

# A DAC residual unit's Sequential (Snake, conv k=7, Snake, conv 1x1) in transformers' names.
_UNIT_LAYERS = ("snake1", "conv1", "snake2", "conv2")


def _outer_layer(index: int, tail: str, blocks: int) -> str | None:
    """The DAC encoder's and decoder's first conv, final Snake and last conv around the blocks."""
    return {0: f"conv1.{tail}", blocks + 1: f"snake1.{tail}", blocks + 2: f"conv2.{tail}"}.get(index)


@dataclasses.dataclass(frozen=True)
class _BlockLayout:
    """Where the original checkpoint keeps the layers of a DAC encoder / decoder block."""

    top: str  # the module list of blocks: "block" (encoder) or "model" (decoder)
    units: str  # regex of the residual units' positions inside a block
    unit_offset: int  # original position + this = our res_unitN
    layers: dict  # other positions inside a block -> our layer name


_ENCODER_LAYOUT = _BlockLayout("block", r"\d+", 1, {"3": "snake1", "4": "conv1"})
_DECODER_LAYOUT = _BlockLayout("model", r"[2-4]", -1, {"0": "snake1", "1": "conv_t1"})


def _acoustic_key(rest: str, blocks: int, layout: _BlockLayout) -> str | None:
    match = re.match(rf"{layout.top}\.(\d+)\.(.*)", rest)
    if match is None:
        return None
    index, tail = int(match.group(1)), match.group(2)
    outer = _outer_layer(index, tail, blocks)
    if outer is not None:
        return outer
    unit = re.match(rf"block\.({layout.units})\.block\.([0-3])\.(.*)", tail)
    if unit is not None:
        layer = _UNIT_LAYERS[int(unit.group(2))]
        return f"block.{index - 1}.res_unit{int(unit.group(1)) + layout.unit_offset}.{layer}.{unit.group(3)}"
    other = re.match(r"block\.(\d+)\.(.*)", tail)
    if other is not None and other.group(1) in layout.layers:
        return f"block.{index - 1}.{layout.layers[other.group(1)]}.{other.group(2)}"
    return None


def original_key_to_transformers(key: str, blocks: int) -> str | None:
    """One original X-Codec (``soundstream_semantic``) key in transformers' naming, or None."""
    top, _, rest = key.partition(".")
    if top == "encoder":
        mapped = _acoustic_key(rest, blocks, _ENCODER_LAYOUT)
        return None if mapped is None else f"acoustic_encoder.{mapped}"
    if top == "decoder_2":
        mapped = _acoustic_key(rest, blocks, _DECODER_LAYOUT)
        return None if mapped is None else f"acoustic_decoder.{mapped}"
    if top in ("encoder_semantic", "decoder_semantic"):
        # The original wraps each conv in a module named ``conv``: drop that level.
        return f"{top}." + re.sub(r"(^|\.)(conv\d?)\.conv\.", r"\1\2.", rest)
    if top == "semantic_model":
        return key
    renamed = {"fc_prior": "fc", "fc_post1": "fc1", "fc_post2": "fc2"}
    if top in renamed:
        return f"{renamed[top]}.{rest}"
    quant = re.match(r"quantizer\.vq\.layers\.(\d+)\._codebook\.(.*)", key)
    if quant is not None:
        return f"quantizer.quantizers.{quant.group(1)}.codebook.{quant.group(2)}"
    return None


def config_from_original_yaml(yaml_path) -> XcodecConfig:
    try:
        import yaml
    except ImportError as exc:
        raise ImportError("reading an original X-Codec .yaml needs pyyaml: pip install pyyaml") from exc
    with open(yaml_path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    try:
        generator = data["generator"]["config"]
        ratios = list(generator["ratios"])
        teacher = generator["semantic_techer"]
        sample_rate = int(generator["sample_rate"])
        semantic_types = {"hubert_base": "hubert", "hubert_base_general": "hubert", "wavlm_base_plus": "wavlm"}
        if teacher not in semantic_types:
            raise ConfigError(f"{yaml_path}: unknown semantic teacher {teacher!r}; known: {', '.join(semantic_types)}")
        return XcodecConfig(
            target_bandwidths=list(generator["target_bandwidths"]),
            sample_rate=sample_rate,
            codebook_size=int(generator["bins"]),
            acoustic_model_config=AcousticConfig.from_dict(
                {"encoder_hidden_size": 64, "decoder_hidden_size": 1024, "downsampling_ratios": ratios,
                 "upsampling_ratios": ratios, "sampling_rate": sample_rate, "hidden_size": int(generator["D"])}
            ),
            # HuBERT-base / WavLM-base-plus: the defaults of SemanticConfig with the model type set.
            semantic_model_config=SemanticConfig.from_dict({"model_type": semantic_types[teacher]}),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{yaml_path} is not an X-Codec generator config (missing {exc})") from exc


def load_original_checkpoint(cls, checkpoint_path, yaml_path=None, *, config=None, dtype=None, device=None, backend=None):
    """An original X-Codec ``.pth`` (read with ``weights_only=True``) plus its ``.yaml`` config.
    Without a yaml (or ``config``) the default X-Codec config is used."""
    if config is None:
        config = config_from_original_yaml(yaml_path) if yaml_path is not None else XcodecConfig()
    try:
        # Some original checkpoints hold io.BytesIO entries next to the tensors; allow only that.
        with torch.serialization.safe_globals([io.BytesIO]):
            loaded = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{checkpoint_path} could not be read as a weights-only torch checkpoint: {exc}") from exc
    if isinstance(loaded, dict) and "generator" in loaded and isinstance(loaded["generator"], dict):
        loaded = loaded["generator"]
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{checkpoint_path} holds a {type(loaded).__name__}, not a state dict")
    blocks = len(config.acoustic_model_config.downsampling_ratios)
    raw, unmapped = {}, []
    for key, value in loaded.items():
        if not isinstance(value, Tensor):
            continue
        mapped = original_key_to_transformers(key, blocks)
        if mapped is None:
            unmapped.append(key)
        else:
            raw[mapped] = value
    if unmapped:
        raise CheckpointError(f"{checkpoint_path}: keys with no place in X-Codec: {', '.join(sorted(unmapped))}")
    return build_model(cls, config, raw, dtype=dtype, device=device, backend=backend, source=str(checkpoint_path))
