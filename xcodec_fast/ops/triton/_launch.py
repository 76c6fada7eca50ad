"""Host-side helpers the Triton launchers share."""

from __future__ import annotations

import os

import torch
import triton

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
INT32_LIMIT = 2**31  # offsets at or past this need 64-bit index math


def pow2(n: int, lo: int = 16) -> int:
    """Next power of two of ``n``, at least ``lo`` (the GPU compiler's smallest dot dimension)."""
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def flat(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1).contiguous()


def bf16_in_interpreter(x: torch.Tensor) -> bool:
    """Triton's interpreter has no bf16: such calls run through fp32 there (tests only; GPUs do bf16)."""
    return INTERPRETING and x.device.type == "cpu" and x.dtype == torch.bfloat16


def float_or_none(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` in fp32, None staying None: the operands of a launch rerun in fp32 (bf16_in_interpreter)."""
    return None if t is None else t.float()


def split_launch_options(cfg: dict) -> tuple[dict, dict]:
    """A config-table row as (kernel constexprs, launch options): num_warps and num_stages are
    launch options, everything else a block size the kernel takes as a constexpr."""
    blocks = dict(cfg)
    return blocks, {k: blocks.pop(k) for k in ("num_warps", "num_stages")}


def needs_int64_offsets(*tensors: torch.Tensor | None) -> bool:
    """Whether any tensor's elements reach past int32 offsets (e.g. 64 channels × 35 min of 16 kHz)."""
    return any(t is not None and t.numel() >= INT32_LIMIT for t in tensors)


def frame_chunks(frames: int, channels: int, pad: int = 16) -> list[tuple[int, int]]:
    """Split a (channels, frames) plane into frame ranges whose offsets fit int32, in multiples of
    ``pad`` frames: for ops whose frames are independent (RVQ), splitting is cheaper than paying
    64-bit index math in every kernel."""
    step = max(pad, (INT32_LIMIT // max(channels, 1) - pad) // pad * pad)
    return [(s, min(s + step, frames)) for s in range(0, frames, step)] or [(0, 0)]


# (dtype, dot precision) pairs a launch can run in; tf32 only for fp32 dots on a GPU.
MATH_MODES = ((torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee"), (torch.bfloat16, "ieee"))


def default_model_sites():
    """Every op site of the default (published) model; frames do not change a launch config."""
    from ...config import XcodecConfig
    from ...sites import model_sites

    return model_sites(XcodecConfig(), 16_000, dilations=(1,))


def config_key(cfg) -> tuple:
    """What a compile config compiles: kernel, types, constants and launch options (not its name)."""
    return (cfg.kernel, tuple(cfg.signature.items()), tuple(sorted(cfg.constexprs.items())), cfg.num_warps,
            cfg.num_stages)


def unique_configs(configs):
    """Drop configs that compile the same thing as an earlier one."""
    seen, kept = set(), []
    for cfg in configs:
        key = config_key(cfg)
        if key not in seen:
            seen.add(key)
            kept.append(cfg)
    return kept


def mode_label(dtype: torch.dtype, precision: str = "ieee", int64: bool = False) -> str:
    """fp32-ieee / fp32-tf32 / fp16 / bf16, with -int64 for the 64-bit offset variant."""
    base = {torch.float32: f"fp32-{precision}", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    return base + ("-int64" if int64 else "")
