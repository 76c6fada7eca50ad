"""Timing and memory measurement that is honest on both CPU and CUDA.

CUDA: one pair of events per call, the L2 cache flushed before each call (as triton's do_bench
does), one synchronize at the end. CPU: perf_counter around each call. Both rotate through several
input sets so that a call does not find the previous call's data still in cache.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch


@dataclass
class Policy:
    warmup: int  # calls before timing (also absorbs autotuning and lazy compilation)
    min_reps: int
    max_reps: int
    budget_s: float  # timed repeats stop once they have taken this long (after min_reps)


QUICK = Policy(warmup=1, min_reps=3, max_reps=10, budget_s=0.2)
FULL = Policy(warmup=5, min_reps=10, max_reps=100, budget_s=2.0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _L2Flusher:
    """Writing a buffer twice the L2 size between calls evicts the previous call's data."""

    def __init__(self, device: torch.device, cache_bytes: int):
        self.buffer = None
        if device.type == "cuda":
            self.buffer = torch.empty(max(2 * cache_bytes, 2**20) // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        if self.buffer is not None:
            self.buffer.zero_()


def rotation_count(input_bytes: int, cache_bytes: int, memory_budget_bytes: int, most: int = 8) -> int:
    """How many distinct input sets to cycle through: enough to overflow the cache, within budget."""
    wanted = math.ceil(2 * cache_bytes / max(input_bytes, 1)) + 1
    affordable = max(memory_budget_bytes // max(input_bytes, 1), 1)
    return int(max(1, min(wanted, affordable, most)))


def measure(
    fn: Callable,
    arg_sets: Sequence[tuple],
    device: torch.device,
    policy: Policy,
    cache_bytes: int = 0,
) -> list[float]:
    """Seconds per call of ``fn(*args)``, cycling through ``arg_sets``; warm-up calls excluded."""
    flush = _L2Flusher(device, cache_bytes)
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(policy.warmup):
        fn(*arg_sets[i % len(arg_sets)])
    synchronize(device)
    per_call = (time.perf_counter() - t0) / max(policy.warmup, 1)
    # The warm-up's pace sets the repeat count, so that slow cases stay within the budget.
    reps = int(min(policy.max_reps, max(policy.min_reps, policy.budget_s // max(per_call, 1e-9))))

    if device.type == "cuda":
        pairs = []
        for i in range(reps):
            flush()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn(*arg_sets[i % len(arg_sets)])
            end.record()
            pairs.append((begin, end))
        torch.cuda.synchronize(device)
        return [begin.elapsed_time(end) / 1e3 for begin, end in pairs]

    times = []
    for i in range(reps):
        args = arg_sets[i % len(arg_sets)]
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return times


def measure_once(fn: Callable, args: tuple, device: torch.device) -> list[float]:
    """Seconds taken by one ``fn(*args)``, synchronised: for long calls timed in interleaved order."""
    if device.type == "cuda":
        synchronize(device)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn(*args)
        end.record()
        end.synchronize()
        return [begin.elapsed_time(end) / 1e3]
    t0 = time.perf_counter()
    fn(*args)
    return [time.perf_counter() - t0]


def summarize(times: Sequence[float]) -> dict:
    ordered = sorted(times)
    return {
        "median_s": statistics.median(ordered),
        "min_s": ordered[0],
        "p90_s": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "reps": len(ordered),
    }


# ---- peak memory -------------------------------------------------------------------------------


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    # Writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0).
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop lines from C++ straight to fd 2: hide them for one profile."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_tensor_peak_bytes(fn: Callable[[], object]) -> int | None:
    """Peak of live CPU tensor bytes during ``fn``, from the profiler's allocation events: the CPU
    counterpart of CUDA's max_memory_allocated, blind to the heap reuse that hides RSS growth."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = [
            e
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
        ]
    except Exception:  # profiler internals differ across torch versions: fall back to RSS
        return None
    if not events:
        return None
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_memory(fn: Callable[[], object], device: torch.device) -> dict:
    """Run ``fn`` and report the extra memory it needed at its peak, above what was live before.

    CUDA: max_memory_allocated. CPU: the peak of live tensor bytes from the profiler's allocation
    events; where that is unavailable, peak RSS (VmHWM) after resetting it through
    /proc/self/clear_refs (an underestimate when the heap reuses freed pages)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return {"peak_mb": (torch.cuda.max_memory_allocated(device) - before) / 2**20, "method": "cuda_max_allocated"}
    peak = _cpu_tensor_peak_bytes(fn)
    if peak is not None:
        return {"peak_mb": peak / 2**20, "method": "cpu_tensor_allocations"}
    rss_before = _read_status_kb("VmRSS")
    if rss_before is not None and _reset_cpu_peak():
        fn()
        hwm = _read_status_kb("VmHWM")
        return {"peak_mb": max(hwm - rss_before, 0) / 1024, "method": "rss_hwm_reset"}
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_mb": max(after - before, 0) / 1024, "method": "ru_maxrss_growth_lower_bound"}
