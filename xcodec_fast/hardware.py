"""What machine this is: CPU model and usable cores (for result files and per-machine caches)."""

from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path


def slug(text: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz' -> 'intel-xeon-platinum-8480': stable, filename-safe."""
    text = text.lower().split("@")[0]
    text = re.sub(r"\((r|tm|c)\)", "", text)
    text = re.sub(r"\b(cpu|processor)\b", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    # read once: the per-machine caches ask on every op call
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown-cpu"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, not the host's
    except AttributeError:
        return os.cpu_count() or 1


def bf16_instructions(device) -> str | None:
    """The bf16 matrix instructions ``device`` has ("amx", "avx512_bf16", "cuda"), or None where
    bf16 would be computed in fp32 (no speed to gain, so no bf16 path is offered or benchmarked)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    if torch.cpu._is_avx512_bf16_supported():
        return "avx512_bf16"
    return None
