"""Checkpoints: load transformers X-Codec checkpoints (hub or local, safetensors only), save them
back in the layout transformers reads, load original X-Codec ``.pth`` files, and random weights.

Weight norm is folded into plain ``weight`` tensors at load (either spelling: ``weight_g/weight_v``
or ``parametrizations.weight.original0/original1``). Keys are checked strictly: the only keys that
may be left over are training-only buffers listed in :data:`IGNORED_SUFFIXES`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .config import AcousticConfig, ConfigError, SemanticConfig, XcodecConfig
from .dtypes import parse_dtype

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

# Training-only state transformers/X-Codec checkpoints carry and inference never reads.
IGNORED_SUFFIXES = (
    ".codebook.inited",
    ".codebook.cluster_size",
    ".codebook.embed_avg",
    "semantic_model.masked_spec_embed",
)

# (magnitude, direction) names of a weight-normed tensor, old and new torch spelling.
WEIGHT_NORM_SPELLINGS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)

# Convs transformers' XcodecModel keeps weight-normed (module prefix -> weight_norm dim).
TRANSFORMERS_WEIGHT_NORMED = {"semantic_model.encoder.pos_conv_embed.conv": 2}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


# ---- dtype ----------------------------------------------------------------------------------
def resolve_dtype(dtype, config: XcodecConfig, tensors: Mapping[str, Tensor]) -> torch.dtype:
    """None -> float32; 'auto' -> the dtype the checkpoint says it holds; else the named dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype == "auto":
        stored = config.extra.get("dtype") or config.extra.get("torch_dtype")
        if stored is not None:
            return parse_dtype(stored, "config.json dtype")
        for tensor in tensors.values():
            if tensor.is_floating_point():
                return parse_dtype(tensor.dtype, "checkpoint tensors")
        return torch.float32
    return parse_dtype(dtype, "dtype")


# ---- files ----------------------------------------------------------------------------------
def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of one safetensors file (CPU); a truncated or corrupt file is a CheckpointError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except PermissionError as exc:
        raise CheckpointError(f"{path}: permission denied, cannot read the model's weights (check the file's "
                              "permissions)") from exc
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def _read_weights(files: list[Path]) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for file in files:
        for key, value in read_safetensors(file).items():
            if key in tensors:
                raise CheckpointError(f"{file}: tensor {key!r} also appears in another shard")
            tensors[key] = value
    return tensors


def _shard_names(index_file: Path) -> list[str]:
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_file} is not a valid safetensors index ({exc})") from exc
    return sorted(set(weight_map.values()))


def _local_files(directory: Path) -> tuple[Path, list[Path]]:
    config = directory / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
    if (directory / WEIGHTS_NAME).is_file():
        return config, [directory / WEIGHTS_NAME]
    if (directory / WEIGHTS_INDEX_NAME).is_file():
        return config, [directory / name for name in _shard_names(directory / WEIGHTS_INDEX_NAME)]
    pickled = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt*")]
    hint = f" (found {', '.join(pickled)}: pickle files are never loaded; convert them to safetensors)" if pickled else ""
    raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}{hint}")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it, with its own true values,
    read now rather than at import (huggingface_hub.constants.HF_HUB_OFFLINE is frozen at import)."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.strip().upper() in ENV_VARS_TRUE_VALUES


def _hub_files(repo_id: str, revision, cache_dir, local_files_only: bool) -> tuple[Path, list[Path]]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or hub_offline()

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=offline))

    try:
        config = fetch(CONFIG_NAME)
        try:
            return config, [fetch(WEIGHTS_NAME)]
        except EntryNotFoundError:
            try:
                index = fetch(WEIGHTS_INDEX_NAME)
            except EntryNotFoundError:
                raise FileNotFoundError(
                    f"{repo_id} has no {WEIGHTS_NAME} (xcodec_fast loads safetensors only, never pickle)"
                ) from None
            return config, [fetch(name) for name in _shard_names(index)]
    except LocalEntryNotFoundError as exc:
        if local_files_only:
            why = "local_files_only=True"
        else:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
        raise OSError(
            f"{repo_id!r} is not in the local Hugging Face cache and {why}; download it once while online, "
            f"or pass a local directory ({exc})"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise OSError(f"{repo_id!r} is neither a local directory nor a hub repository you can access") from exc
    except RevisionNotFoundError as exc:
        raise OSError(f"{repo_id!r} has no revision {revision!r}") from exc
    except HFValidationError as exc:
        raise OSError(f"{repo_id!r} is neither a local directory nor a valid hub repository id ({exc})") from exc


def resolve_files(name_or_path, revision=None, cache_dir=None, local_files_only=False) -> tuple[Path, list[Path]]:
    """(config.json, [safetensors files]) for a local directory or a hub id."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return _local_files(path)
    if path.is_file():
        raise ValueError(f"{name} is a file; pass the directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"no such directory: {name}")
    return _hub_files(name, revision, cache_dir, local_files_only)


# ---- state-dict conversion --------------------------------------------------------------------
def _norm_dim(magnitude_shape: torch.Size) -> int:
    """The dim weight_norm kept: the one axis where the magnitude is not 1. An all-singleton
    magnitude (a conv with one output channel, as the decoder's last) is dim 0, as weight_norm's
    default that X-Codec and transformers use: the same norm as over the whole tensor, but torch
    rounds the two differently. -1 (whole-tensor norm) only for a 0-dim magnitude."""
    dims = [d for d, size in enumerate(magnitude_shape) if size != 1]
    if len(dims) > 1:
        raise CheckpointError(f"weight-norm magnitude of shape {tuple(magnitude_shape)} has more than one axis")
    if dims:
        return dims[0]
    return 0 if len(magnitude_shape) else -1


def fold_weight_norm(magnitude: Tensor, direction: Tensor) -> Tensor:
    # torch._weight_norm is what both torch weight-norm implementations compute: identical numbers.
    wide = torch.float32 if magnitude.dtype in (torch.float16, torch.bfloat16) else magnitude.dtype
    return torch._weight_norm(direction.to(wide), magnitude.to(wide), _norm_dim(magnitude.shape)).to(direction.dtype)


def unfold_weight_norm(weight: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """A plain weight as (magnitude, direction) with magnitude = ‖weight‖ over all axes but ``dim``."""
    axes = [d for d in range(weight.dim()) if d != dim]
    return weight.norm(dim=axes, keepdim=True), weight


def convert_state_dict(raw: Mapping[str, Tensor], expected: Mapping[str, Tensor], source: str) -> dict[str, Tensor]:
    """Map checkpoint tensors onto the model's keys (``expected``: the model's state_dict): fold or
    rename weight-norm pairs, drop known training-only buffers, and fail listing every missing,
    unexpected or mis-shaped key."""
    out: dict[str, Tensor] = {}
    pairs: dict[str, dict[str, Tensor]] = {}
    for key, value in raw.items():
        for g_name, v_name in WEIGHT_NORM_SPELLINGS:
            for part, name in (("g", g_name), ("v", v_name)):
                if key.endswith("." + name):
                    pairs.setdefault(key[: -len(name) - 1], {})[part] = (name, value)
                    break
            else:
                continue
            break
        else:
            out[key] = value
    unexpected = []
    for prefix, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            unexpected += [f"{prefix}.{name}" for name, _ in pair.values()]
            continue
        (g_key, g), (v_key, v) = pair["g"], pair["v"]
        if f"{prefix}.weight" in expected:
            out[f"{prefix}.weight"] = fold_weight_norm(g, v)
        else:
            for g_name, v_name in WEIGHT_NORM_SPELLINGS:
                if f"{prefix}.{g_name}" in expected:
                    out[f"{prefix}.{g_name}"], out[f"{prefix}.{v_name}"] = g, v
                    break
            else:
                unexpected += [f"{prefix}.{g_key}", f"{prefix}.{v_key}"]
    # A plain weight where the model keeps a weight-normed pair: split it.
    for key in list(out):
        prefix = key.removesuffix(".weight")
        for g_name, v_name in WEIGHT_NORM_SPELLINGS:
            if key.endswith(".weight") and f"{prefix}.{g_name}" in expected and key not in expected:
                g, v = unfold_weight_norm(out.pop(key), _norm_dim(expected[f"{prefix}.{g_name}"].shape))
                out[f"{prefix}.{g_name}"], out[f"{prefix}.{v_name}"] = g, v
                break

    unexpected += [k for k in out if k not in expected and not k.endswith(IGNORED_SUFFIXES)]
    missing = [k for k in expected if k not in out]
    mismatched = [
        f"{k}: checkpoint {tuple(out[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in out and tuple(out[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(sorted(missing))}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(sorted(unexpected))}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model's config:\n  " + "\n  ".join(problems))
    return {k: out[k] for k in expected}


def build_model(cls, config: XcodecConfig, raw: Mapping[str, Tensor], *, dtype, device, backend, source: str):
    """Construct ``cls(config)`` without initialising weights and fill it from ``raw`` tensors."""
    target_dtype = resolve_dtype(dtype, config, raw)
    with torch.device("meta"):
        model = cls(config, backend=backend)
    expected = model.state_dict()
    state = convert_state_dict(raw, expected, source)
    state = {k: (v.to(target_dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    leftover = [name for name, t in tensors if t is not None and t.is_meta]
    if leftover:
        derived = {f"quantizer.{n}" for n in ("codebooks", "codebook_sq_norms", "projected_codebooks")}
        leftover = [n for n in leftover if n not in derived]
        if leftover:
            raise RuntimeError(f"model tensors not filled by the checkpoint: {', '.join(leftover)}")
    if device is not None:
        model.to(device)
    model.refresh_derived()
    model.requires_grad_(False)
    return model.eval()


def load_pretrained(cls, name_or_path, *, revision=None, cache_dir=None, local_files_only=False, dtype=None,
                    device=None, backend=None):
    config_file, weight_files = resolve_files(name_or_path, revision, cache_dir, local_files_only)
    config = XcodecConfig.from_json_file(config_file)
    raw = _read_weights(weight_files)
    source = str(weight_files[0]) if len(weight_files) == 1 else f"the {len(weight_files)} shards of {name_or_path}"
    return build_model(cls, config, raw, dtype=dtype, device=device, backend=backend, source=source)


# ---- saving ---------------------------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def transformers_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights keyed and laid out as transformers' XcodecModel.state_dict() has them."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    for prefix, dim in TRANSFORMERS_WEIGHT_NORMED.items():
        if f"{prefix}.weight" in state:
            g, v = unfold_weight_norm(state.pop(f"{prefix}.weight"), dim)
            state[f"{prefix}.parametrizations.weight.original0"] = g.contiguous()
            state[f"{prefix}.parametrizations.weight.original1"] = v
    # Training-only buffers transformers expects; their values never affect inference.
    for key in [k for k in state if k.endswith(".codebook.embed")]:
        embed = state[key]
        stem = key.removesuffix(".embed")
        state[f"{stem}.inited"] = torch.ones(1, dtype=embed.dtype)
        state[f"{stem}.cluster_size"] = torch.ones(embed.shape[0], dtype=embed.dtype)
        state[f"{stem}.embed_avg"] = embed.clone()
    semantic = model.config.semantic_model_config
    uses_masking = semantic.extra.get("mask_time_prob", 0.05) > 0 or semantic.extra.get("mask_feature_prob", 0.0) > 0
    if uses_masking and "semantic_model.masked_spec_embed" not in state:
        state["semantic_model.masked_spec_embed"] = torch.zeros(semantic.hidden_size, dtype=model.dtype)
    return {k: v.cpu() for k, v in state.items()}


def save_pretrained(model, save_directory) -> None:
    from safetensors.torch import save_file

    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("torch_dtype", None)
    config["dtype"] = _dtype_name(model.dtype)
    with open(directory / CONFIG_NAME, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
        fh.write("\n")
    save_file(transformers_state_dict(model), str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


# ---- original X-Codec checkpoints -------------------------------------------------------------
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


# ---- random weights -------------------------------------------------------------------------
@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic random weights at scales that keep activations O(1): every conv/linear weight
    ~ N(0, 1/fan_in) (residual branches' last conv 10x smaller), small biases, Snake α ~ U(0.5, 1.5),
    norms ≈ identity, codebooks ~ N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std: float) -> Tensor:
        return torch.randn(shape, generator=generator) * std

    done: set[int] = set()
    for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
        params = dict(module.named_parameters(recurse=False))
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)) and "weight" in params:
            weight = module.weight
            if isinstance(module, nn.ConvTranspose1d):
                fan_in = weight.shape[0] * weight.shape[2] / module.stride[0]
            else:
                fan_in = weight[0].numel()
            # Residual branches start small (as in trained codecs), else variance doubles per unit.
            gain = 0.1 if re.search(r"res_units?\.?\d+\.conv2$", name) else 1.0
            weight.copy_(normal(weight.shape, gain / math.sqrt(fan_in)))
            done.add(id(weight))
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and "weight" in params:
            module.weight.copy_(1 + normal(module.weight.shape, 0.1))
            done.add(id(module.weight))
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if id(param) in done:
            continue
        if name.endswith("alpha"):
            param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
        elif param.dim() == 1 or name.endswith("bias"):
            param.copy_(normal(param.shape, 0.02))
        else:
            param.copy_(normal(param.shape, 1.0 / math.sqrt(param[0].numel())))
    for name, buffer in sorted(model.named_buffers(), key=lambda item: item[0]):
        if name.endswith("codebook.embed"):
            buffer.copy_(normal(buffer.shape, 1.0))
    model.refresh_derived()
    return model
