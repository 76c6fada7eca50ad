"""How to compile the native kernels: shared by setup.py (prebuilt ``xcodec_fast._C``) and
xcodec_fast/ops/native.py (build on first use), so that both produce the same binary.

Loaded by file path, not imported as a package module: setup.py must read it without importing
xcodec_fast. Needs torch only inside the functions.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
SOURCES = ("snake.cpp", "residual_unit.cpp", "residual_unit_winograd.cpp", "bf16_brgemm.cpp", "conv.cpp", "bindings.cpp")
# Files whose content decides the binary (the cache key hashes them).
HEADERS = ("common.h", "defaults.h", "ops.h")
HASHED_FILES = SOURCES + HEADERS + ("build_config.py",)

_ISA_FLAGS = {
    # The same ISA set ATen compiles its own CPU_CAPABILITY kernels with, so that Vectorized<float>
    # (and sin, where it comes from Sleef) behaves as in torch's kernels on this machine.
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}


def target_capability() -> str:
    """The SIMD level to compile for: what torch itself dispatches to on this CPU (honours
    ATEN_CPU_CAPABILITY), reduced to the levels the kernels know."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability().upper()
    if capability.startswith("AVX512"):
        return "AVX512"
    if capability == "AVX2":
        return "AVX2"
    return "DEFAULT"


def compile_flags(capability: str) -> list[str]:
    # -ffp-contract=off: no fused multiply-add, so every rounding matches eager torch's separate ops.
    # -fopenmp: ATen's at::parallel_for is a header template that is only parallel when the including
    # code is compiled with OpenMP (torch's build is AT_PARALLEL_OPENMP); without it every kernel ran
    # on one thread. Compile flag only: the GOMP symbols resolve to the libgomp libtorch_cpu loads, so
    # there is one OpenMP runtime and thread pool in the process.
    # (Linux only: Apple clang rejects -fopenmp; there the kernels stay serial but still build.)
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", *openmp, *_ISA_FLAGS[capability]]
    if capability != "DEFAULT":
        flags += [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
    return flags


def source_paths(kernel_dir: Path = KERNEL_DIR) -> list[str]:
    return [str(kernel_dir / name) for name in SOURCES]


def source_digest(kernel_dir: Path = KERNEL_DIR) -> str:
    """Hash of the files that decide the binary; compiled into it (build_info's ``source``), so that
    a prebuilt ``_C`` older than the sources beside it is never loaded."""
    digest = hashlib.sha256()
    for name in HASHED_FILES:
        digest.update((kernel_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def build_flags(capability: str, kernel_dir: Path = KERNEL_DIR) -> list[str]:
    """compile_flags plus the source digest define: what setup.py and the first-use build pass."""
    return [*compile_flags(capability), f"-DXCODEC_SOURCE_DIGEST={source_digest(kernel_dir)}"]


def cache_key(capability: str, kernel_dir: Path = KERNEL_DIR) -> str:
    """Changes with the sources, the flags, torch, Python and the SIMD level."""
    import torch

    digest = hashlib.sha256()
    for name in HASHED_FILES:
        digest.update((kernel_dir / name).read_bytes())
    digest.update(" ".join(compile_flags(capability)).encode())
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"torch{torch.__version__}-{python}-{capability.lower()}-{digest.hexdigest()[:12]}"
