"""Who ran the benchmark: machine identity, library versions and the git commit under test."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from ..hardware import cpu_cores, cpu_name, slug  # noqa: F401  (re-exported for the benchmark's callers)


def last_level_cache_bytes(device: torch.device) -> int:
    """L2 on a GPU, the last cache level on a CPU: what input rotation has to defeat."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 50 * 2**20))
    best = 0
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        best = max(best, int(size.rstrip("KMG")) * unit)
    return best or 32 * 2**20


def machine_info(device: torch.device) -> dict:
    cores = cpu_cores()
    info = {
        "kind": "gpu" if device.type == "cuda" else "cpu",
        "cpu": cpu_name(),
        "cpu_cores": cores,
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cache_bytes": last_level_cache_bytes(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        info["id"] = f"gpu-{slug(props.name)}"
    else:
        info["gpu"] = None
        info["id"] = f"cpu-{slug(info['cpu'])}-{cores}c"
    return info


def versions() -> dict:
    import xcodec_fast

    found = {"torch": torch.__version__, "xcodec_fast": xcodec_fast.__version__}
    for name in ("triton", "transformers", "numpy"):
        try:
            found[name] = __import__(name).__version__
        except Exception:  # not installed, or broken: either way not part of this run
            found[name] = None
    return found


def git_state() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


RVQ_OPS = ("rvq_encode", "rvq_decode", "dequantize_project")


def math_modes(device: torch.device, dtype: torch.dtype) -> dict:
    """What torch computes in on ``device`` for ``dtype`` under its current switches:
    convolutions (cuDNN, ``torch.backends.cudnn.allow_tf32``, on by default) and matmuls
    (``torch.backends.cuda.matmul.allow_tf32``, off by default): ieee / tf32 / fp16 / bf16."""
    if dtype != torch.float32:
        name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
        return {"conv": name, "matmul": name}
    cuda = torch.device(device).type == "cuda"
    return {
        "conv": "tf32" if cuda and torch.backends.cudnn.allow_tf32 else "ieee",
        "matmul": "tf32" if cuda and torch.backends.cuda.matmul.allow_tf32 else "ieee",
    }


def op_math_mode(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The math mode of one op on one backend: eager follows torch's switches (RVQ scores are a
    matmul, the rest convolutions); Triton's conv dots follow torch's conv switch and its RVQ
    scores are always IEEE fp32; native computes in fp32 (half dtypes stored reduced)."""
    modes = math_modes(device, dtype)
    if backend == "eager":
        return modes["matmul"] if op in RVQ_OPS else modes["conv"]
    if backend == "triton":
        return ("ieee" if dtype == torch.float32 else modes["conv"]) if op in RVQ_OPS else modes["conv"]
    return modes["conv"] if dtype != torch.float32 else "ieee"
