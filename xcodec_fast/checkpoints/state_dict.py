"""Checkpoint tensors onto the model: strict key matching, weight-norm pairs folded, the model built
on the meta device and filled; and the reverse, the layout transformers' XcodecModel reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from ..config import XcodecConfig
from ..dtypes import parse_dtype
from .files import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_weights, resolve_files
from .weight_norm import WEIGHT_NORM_SPELLINGS, fold_weight_norm, norm_dim, unfold_weight_norm

# Training-only state transformers/X-Codec checkpoints carry and inference never reads.
IGNORED_SUFFIXES = (
    ".codebook.inited",
    ".codebook.cluster_size",
    ".codebook.embed_avg",
    "semantic_model.masked_spec_embed",
)

# Convs transformers' XcodecModel keeps weight-normed (module prefix -> weight_norm dim).
TRANSFORMERS_WEIGHT_NORMED = {"semantic_model.encoder.pos_conv_embed.conv": 2}


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
                g, v = unfold_weight_norm(out.pop(key), norm_dim(expected[f"{prefix}.{g_name}"].shape))
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
    raw = read_weights(weight_files)
    source = str(weight_files[0]) if len(weight_files) == 1 else f"the {len(weight_files)} shards of {name_or_path}"
    return build_model(cls, config, raw, dtype=dtype, device=device, backend=backend, source=source)


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
