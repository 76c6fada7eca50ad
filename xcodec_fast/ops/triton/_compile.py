"""Ahead-of-time compile check for every Triton kernel of the backend, without a GPU.

Triton compiles on the host (PTX, then a cubin through the ptxas in its wheel), so a CPU-only
machine can prove that each kernel compiles for sm_80 / sm_90 at exactly the launch
configurations the dispatch uses, and can read registers, spills and tensor-core instructions
from the machine code. The interpreter cannot: it accepts things the compiler rejects (dot tiles
under 16, libdevice-free shortcuts).

Registration: every kernel module of this package exposes ``COMPILE_CONFIGS``, a list of
:class:`KernelConfig` built with :func:`kernel_config` from the same tables its launcher reads
(so the check covers what really runs). :func:`collect` gathers them.

The kernels must be real ``@triton.jit`` functions, so this runs in a process without
``TRITON_INTERPRET``:

    python -m xcodec_fast.ops.triton._compile [--arch 90 80] [--filter snake] [--json] [--jobs N]
        [--record bench/results/triton-sass-<major.minor>.json]

``--record`` stores the per-config figures (registers, stack, spills, shared memory, tensor-core
instructions) for the Triton version at hand; the kernel docstrings cite those files.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from typing import Any

import torch

from ...errors import short_error

TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32"}

WATCH = re.compile(
    r"\b(HGMMA|HMMA|IMMA|QGMMA|FFMA|FMUL|FADD|MUFU\.\w+|LDG\.E[.\w]*|STG\.E[.\w]*|LDS[.\w]*|STS[.\w]*"
    r"|LDL[.\w]*|STL[.\w]*|BAR\.SYNC|SHFL[.\w]*)\b"
)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One launch configuration of one kernel, as its launcher runs it."""

    name: str  # readable id, e.g. "snake[fp16,BLOCK_T=1024]"
    kernel: Any  # the @triton.jit function
    signature: dict  # argument name -> Triton type ("*fp32", "i32", "constexpr", ...)
    constexprs: dict  # constexpr argument name -> value
    num_warps: int = 4
    num_stages: int = 3
    enable_fp_fusion: bool = False
    expect_tensor_cores: bool = False  # the half-precision matmul paths must use HMMA/HGMMA
    multiple_of_16: tuple = ()  # int arguments that are multiples of 16 at the model's sizes


def kernel_config(
    name: str,
    kernel,
    types: dict,
    constexprs: dict,
    *,
    num_warps: int = 4,
    num_stages: int = 3,
    enable_fp_fusion: bool = False,
    expect_tensor_cores: bool = False,
    multiple_of_16: tuple = (),
) -> KernelConfig:
    """Build a config from per-argument types; ``types`` values may be torch dtypes ("pointer to"),
    or Triton type strings. Arguments named in ``constexprs`` become "constexpr". The runtime
    specializes integer arguments that are multiples of 16 (and pointers, 16-byte aligned);
    ``multiple_of_16`` names the integers that are so at the real model's sizes (e.g. D = 1024),
    so the check compiles the variant that runs there."""
    names = _arg_names(kernel)
    signature = {}
    for arg in names:
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in types:
            t = types[arg]
            signature[arg] = "*" + TRITON_TYPES[t] if isinstance(t, torch.dtype) else t
        else:
            raise ValueError(f"{name}: no type given for argument {arg!r} of {kernel.__name__}")
    extra = set(types) - set(names)
    if extra:
        raise ValueError(f"{name}: {sorted(extra)} are not arguments of {kernel.__name__}")
    unknown = set(multiple_of_16) - set(types)
    if unknown:
        raise ValueError(f"{name}: multiple_of_16 names {sorted(unknown)}, not typed arguments")
    return KernelConfig(name, kernel, signature, dict(constexprs), num_warps, num_stages, enable_fp_fusion,
                        expect_tensor_cores, tuple(multiple_of_16))


def kernel_name(kernel) -> str:
    return getattr(kernel, "__name__", None) or getattr(kernel, "fn").__name__


def _arg_names(kernel) -> list[str]:
    fn = getattr(kernel, "fn", kernel)  # JITFunction or interpreter wrapper
    return list(getattr(kernel, "arg_names", None) or fn.__code__.co_varnames[: fn.__code__.co_argcount])


def collect() -> list[KernelConfig]:
    """Every kernel config of every module of the Triton backend."""
    import xcodec_fast.ops.triton as pkg

    configs = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        configs.extend(getattr(module, "COMPILE_CONFIGS", []))
    return configs


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_config(cfg: KernelConfig, arch: int) -> dict:
    """Compile one config for sm_<arch>; return registers, spills, shared memory and instruction mix."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile checks need real @triton.jit kernels: run without TRITON_INTERPRET")
    # torch allocations are 16-byte aligned: the runtime specializes pointers on that, so do we.
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, (arg, t) in enumerate(cfg.signature.items())
        if t.startswith("*") or arg in cfg.multiple_of_16
    }
    src = ASTSource(fn=cfg.kernel, signature=cfg.signature, constexprs=cfg.constexprs, attrs=attrs)
    compiled = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "enable_fp_fusion": cfg.enable_fp_fusion},
    )
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), cubin], capture_output=True, text=True).stdout

    def field(name):
        m = re.search(rf"\b{name}:(\d+)", usage)
        return int(m.group(1)) if m else None

    ops = collections.Counter(WATCH.findall(sass))
    return {
        "name": cfg.name,
        "kernel": kernel_name(cfg.kernel),
        "arch": f"sm_{arch}",
        "num_warps": cfg.num_warps,
        "regs": field("REG"),
        "stack": field("STACK") or 0,
        "shared": getattr(compiled.metadata, "shared", None),
        "spill_loads": sum(v for k, v in ops.items() if k.startswith("LDL")),
        "spill_stores": sum(v for k, v in ops.items() if k.startswith("STL")),
        "tensor_core": sum(v for k, v in ops.items() if k.endswith("MMA")),
        "expect_tensor_cores": cfg.expect_tensor_cores,
        "ops": dict(ops.most_common()),
    }


_worker_configs: list[KernelConfig] = []


def _worker_init() -> None:
    _worker_configs.extend(collect())


def _compile_job(job: tuple[int, int]) -> dict:
    index, arch = job
    cfg = (_worker_configs or collect())[index]
    try:
        return compile_config(cfg, arch)
    except Exception as exc:  # report every failure, not just the first
        # the whole diagnostic for --json / --record, its first line for the one-line report
        return {"name": cfg.name, "arch": f"sm_{arch}", "error": f"{type(exc).__name__}: {exc}",
                "error_line": short_error(exc, limit=200)}


def compile_all(archs=(90, 80), name_filter: str | None = None, jobs: int | None = None) -> list[dict]:
    """Compile every matching config for every arch, in ``jobs`` processes (default: one per CPU)."""
    configs = collect()
    todo = [(i, arch) for i, cfg in enumerate(configs) if not name_filter or name_filter in cfg.name for arch in archs]
    jobs = max(1, min(len(todo), jobs or os.cpu_count() or 1))
    if jobs == 1:
        return [_compile_job(job) for job in todo]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fresh interpreter per worker; compiling is CPU-bound and holds the GIL
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init) as ex:
        return list(ex.map(_compile_job, todo))


def _line(r: dict) -> str:
    if "error" in r:
        return f"{r['name']:<58} {r['arch']}  FAILED: {r.get('error_line') or r['error'].splitlines()[0][:200]}"
    return (
        f"{r['name']:<58} {r['arch']}  warps {r['num_warps']}  regs {r['regs']:>3}  stack {r['stack']}  "
        f"spills {r['spill_loads']}/{r['spill_stores']}  smem {r['shared']}  tensor-core {r['tensor_core']}"
    )


RECORD_FIELDS = ("name", "arch", "num_warps", "regs", "stack", "shared", "spill_loads", "spill_stores", "tensor_core")


def record(results: list[dict], path: str) -> None:
    """Store compile figures, one row per config and arch, with the Triton version they are for."""
    import datetime

    import triton

    rows = [{k: r.get(k) for k in RECORD_FIELDS + ("error",) if k in r} for r in results]
    doc = {
        "triton": triton.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "how": "host-side compile, no GPU: python -m xcodec_fast.ops.triton._compile --record",
        "configs": len({r["name"] for r in results}),
        "failed": sum("error" in r for r in results),
        "spilling": sum(1 for r in results if r.get("spill_loads") or r.get("spill_stores")),
        "rows": rows,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--filter", default=None, help="only configs whose name contains this")
    ap.add_argument("--json", action="store_true", help="print one JSON list (for the tests)")
    ap.add_argument("--jobs", type=int, default=None, help="compile processes (default: one per CPU)")
    ap.add_argument("--record", default=None, help="write the figures to this JSON file")
    a = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    results = compile_all(a.arch, a.filter, a.jobs)
    if a.record:
        record(results, a.record)
    if a.json:
        json.dump(results, sys.stdout)
    else:
        for r in results:
            print(_line(r))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    # run the package's copy of this module, so that worker processes unpickle the same functions
    from xcodec_fast.ops.triton._compile import main as _main

    sys.exit(_main())
