"""What machine this is: CPU model and usable cores (for result files and per-machine caches)."""

from __future__ import annotations

import functools
import os
import platform
import re
from pathlib import Path


def slug(text: str) -> str:
    """'Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz family 6 model 143' ->
    'intel-xeon-platinum-8480-family-6-model-143': stable, filename-safe."""
    text = re.sub(r"@\s*[\d.]+\s*[gm]hz", " ", text.lower())
    text = re.sub(r"\((r|tm|c)\)", "", text)
    text = re.sub(r"\b(cpu|processor)\b", " ", text)
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "unknown"


def cpu_identity(cpuinfo: str) -> str | None:
    """The first CPU's model name with its family and model numbers, from /proc/cpuinfo's text:
    'AMD EPYC family 25 model 17'. Virtual machines often report a bare 'AMD EPYC' or 'Intel(R)
    Xeon(R) Processor' for several generations, whose kernels time differently (Zen 4 and Zen 5 both
    read 'AMD EPYC'), so the numbers are part of every per-machine result and cache."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # one processor's block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return None
    family, model = fields.get("cpu family"), fields.get("model")
    if family and model and family.isdigit() and model.isdigit():
        name = f"{name} family {family} model {model}"
    return name


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    # read once: the per-machine caches ask on every op call
    try:
        name = cpu_identity(Path("/proc/cpuinfo").read_text())
    except OSError:
        name = None
    return name or platform.processor() or platform.machine() or "unknown-cpu"


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
