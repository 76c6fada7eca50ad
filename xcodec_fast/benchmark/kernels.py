"""Kernel micro-benchmarks: every op x site x batch x dtype x backend, against a measured roofline."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import ops
from ..dtypes import BY_NAME
from ..ops import backend as dispatch
from . import cases
from .machine import last_level_cache_bytes, op_math_mode
from ..errors import short_error
from .timing import Policy, measure, rotation_count, summarize

DTYPES = {name: BY_NAME[name] for name in ("float32", "bfloat16", "float16")}  # the report's order


def backend_status(backends: list[str], device: torch.device) -> dict:
    """Which backends this run can time, and why the others are skipped."""
    status = {}
    for name in backends:
        ok, reason = ops.availability(name, device)
        if ok and name == "triton" and device.type != "cuda":
            # The interpreter runs kernels in numpy, one program at a time: a test aid, not a speed.
            ok, reason = False, f"not timed on {device.type}: {reason}"
        status[name] = {
            "available": ok,
            "reason": reason,
            "ops": dispatch.implemented_ops(name) if ok else [],
        }
    return status


# ---- roofline ceilings -------------------------------------------------------------------------


def _matmul_context(dtype: torch.dtype, device: torch.device):
    """fp32 ceiling under the math mode the ops themselves get: on CUDA cuDNN convolutions (and
    Triton dots) use TF32 by default, so the fp32 ceiling allows it whenever cuDNN does."""

    class _Ctx:
        def __enter__(self):
            self.saved = torch.backends.cuda.matmul.allow_tf32
            if device.type == "cuda" and dtype == torch.float32:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32

        def __exit__(self, *exc):
            torch.backends.cuda.matmul.allow_tf32 = self.saved

    return _Ctx()


def ceiling_sizes(device: torch.device, quick: bool) -> tuple[int, int]:
    """(copy bytes, matmul n) large enough to reach each ceiling on this device."""
    if device.type == "cuda":
        return 1 << 30, 8192
    # The copy must overflow the last-level cache (hundreds of MB on server CPUs) to time DRAM.
    cache = last_level_cache_bytes(device)
    if quick:
        return min(max(2 * cache, 64 << 20), 512 << 20), 1024
    return min(max(4 * cache, 256 << 20), 1 << 30), 2048


def measure_ceilings(device: torch.device, dtypes: list[str], copy_bytes: int, matmul_n: int, policy: Policy) -> dict:
    """The two roofline ceilings, measured now on this device: copy bandwidth and matmul peak."""
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_times = measure(lambda s, d: d.copy_(s), [(src, dst)], device, policy)
    median = summarize(copy_times)["median_s"]
    ceilings = {
        "copy_bytes": copy_bytes,
        "bandwidth_gbps": 2 * copy_bytes / median / 1e9,  # read + write
        "matmul_n": matmul_n,
        "matmul_tflops": {},
        "matmul_tf32": {},
    }
    del src, dst
    for name in dtypes:
        dtype = DTYPES[name]
        try:
            a = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
            b = torch.randn(matmul_n, matmul_n, device=device).to(dtype)
            with _matmul_context(dtype, device):
                times = measure(torch.matmul, [(a, b)], device, policy)
                ceilings["matmul_tf32"][name] = bool(
                    device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
                )
        except RuntimeError as exc:
            ceilings["matmul_tflops"][name] = None
            ceilings.setdefault("errors", {})[name] = short_error(exc, limit=200, with_type=False)
            continue
        ceilings["matmul_tflops"][name] = 2 * matmul_n**3 / summarize(times)["median_s"] / 1e12
    return ceilings


# ---- the suite ---------------------------------------------------------------------------------


def run_kernels(
    sites: list,
    batches: list[int],
    dtypes: list[str],
    backends: dict,
    device: torch.device,
    ceilings: dict,
    policy: Policy,
    cache_bytes: int,
    memory_budget_bytes: int,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[dict]:
    records: list[dict] = []
    for site in sites:
        for batch in batches:
            for dtype_name in dtypes:
                records.extend(
                    _run_case(
                        site,
                        batch,
                        dtype_name,
                        backends,
                        device,
                        ceilings,
                        policy,
                        cache_bytes,
                        memory_budget_bytes,
                        seed,
                        log,
                    )
                )
    return records


def _pack_stats(backend: str):
    """The weight-packing counter (Triton and native pack once per weight), reset for one case
    (None for eager)."""
    if backend == "eager":
        return None
    from ..ops import packing

    packing.STATS.reset()
    return packing.STATS


def _run_case(site, batch, dtype_name, backends, device, ceilings, policy, cache_bytes, memory_budget_bytes, seed, log):
    dtype = DTYPES[dtype_name]
    nbytes, flops = cases.cost(site, batch, dtype)
    base = {
        "op": site.op,
        "site": site.where,
        "label": site.label(),
        "params": dict(site.params),
        "batch": batch,
        "dtype": dtype_name,
        "bytes": nbytes,
        "flops": flops,
    }
    gen = torch.Generator().manual_seed(seed)
    params = cases.prepare(site, cases.to_device(cases.make_params(site, gen), device, dtype))
    device_gen = torch.Generator(device=device).manual_seed(seed)
    first = cases.to_device(cases.make_input(site, batch, device_gen), device, dtype)
    input_bytes = sum(t.numel() * t.element_size() for t in first.values())
    count = rotation_count(input_bytes, cache_bytes, memory_budget_bytes)
    arg_sets = [(first,)] + [
        (cases.to_device(cases.make_input(site, batch, device_gen), device, dtype),) for _ in range(count - 1)
    ]
    base["input_sets"] = count
    # GPUs flush L2 before every call; a CPU cannot cheaply, so say when data may stay cached
    # (such cases can beat the DRAM-bandwidth ceiling: a roofline fraction above 1).
    base["cache_resident"] = device.type != "cuda" and count * nbytes <= cache_bytes

    def run_once(inputs):
        return cases.call(site, params, inputs)

    records, reference, eager_median = [], None, None
    for name, status in backends.items():
        record = dict(base, backend=name, math_mode=op_math_mode(site.op, name, device, dtype),
                      eager_math_mode=op_math_mode(site.op, "eager", device, dtype))
        records.append(record)
        if not status["available"]:
            record.update(status="skipped", reason=status["reason"])
            continue
        if site.op not in status["ops"]:
            record.update(status="skipped", reason=f"{name} does not implement {site.op} (it would run eagerly)")
            continue
        try:
            packs = _pack_stats(name)
            with ops.use_backend(name):
                result = run_once(first)
                times = measure(run_once, arg_sets, device, policy, cache_bytes)
            if packs is not None:
                # weights are packed on the first call only: what that cost, kept out of the timings
                record.update(weight_packs=packs.packs, weight_pack_s=packs.seconds)
        except Exception as exc:  # an unsupported dtype or a failing kernel: record it, go on
            record.update(status="error", reason=short_error(exc))
            log(f"  {name:7s} {site.op} {site.label()} b={batch} {dtype_name}: {record['reason']}")
            continue
        stats = summarize(times)
        median = stats["median_s"]
        peak = (ceilings.get("matmul_tflops") or {}).get(dtype_name)
        bound_s = max(nbytes / (ceilings["bandwidth_gbps"] * 1e9), flops / (peak * 1e12) if peak else 0.0)
        record.update(
            status="ok",
            **stats,
            gbps=nbytes / median / 1e9,
            tflops=flops / median / 1e12,
            roofline_s=bound_s,
            roofline_fraction=bound_s / median,
            bound=(
                "memory"
                if nbytes / ceilings["bandwidth_gbps"] / 1e9 >= (flops / (peak * 1e12) if peak else 0)
                else "compute"
            ),
        )
        if name == "eager":
            reference, eager_median = result, median
        elif reference is not None:
            record.update(cases.agreement(site, result, reference))
        if eager_median is not None:
            record["speedup_vs_eager"] = eager_median / median
        log(
            f"  {name:7s} {site.op:22s} {site.label():48s} b={batch:<3d} {dtype_name:8s} "
            f"{median * 1e3:9.3f} ms {record['gbps']:8.1f} GB/s {record['tflops']:7.3f} TF/s "
            f"{100 * record['roofline_fraction']:5.1f}% roof"
        )
    del arg_sets, first, params
    return records


def geometric_mean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None
