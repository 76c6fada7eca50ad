"""Measured dispatch: on each machine the native backend picks, per call shape, the fastest of its
implementations of an op, by timing them once on the real inputs.

The CPUs users run on differ (the same suite showed the native residual unit 2.2x oneDNN on one
Intel VM and a tie on an AMD one), so no constant can decide. The first call of an op at a new
site (op, channels, kernel, stride or dilation, dtype) times every candidate on a random input of
that geometry (see :func:`probe_frames`), and records the times; that call
and every later one at the site run the fastest. One choice per
site, not per length: an item then takes the same implementation alone as in a padded batch, so
their results stay equal. The table lives in one JSON file per CPU model, thread
count, torch version and kernel source digest, so a new machine, a new torch or changed kernels
measure afresh (and the glibc malloc mode, see :func:`identity`); a file that does not parse, or
whose fields do not match, is ignored.

Timing is noisy on shared machines (VMs): the same kernel at the same site has measured 53 and 85 ms
in one table. So every candidate is timed a few times round robin on a short input, and then the
contenders (within ``CONTEND_WITHIN`` of the best) are timed again for longer, on an input as long
as the call's (:func:`probe_frames`): a pick then rests on several calls of each close candidate
at the size that runs, while clear losers cost no more.

``XCODEC_FAST_TUNE``: ``auto`` (default) measures unknown shapes and stores them; ``off`` measures
nothing and uses the stored choice, else the op's default; ``retune`` ignores the stored table and
measures again (then stores). ``XCODEC_FAST_TUNE_CACHE`` overrides the file's directory.
:func:`retune` does the same from code. ``xcodec-fast info`` prints the table.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..hardware import cpu_name, slug

MODE_ENV = "XCODEC_FAST_TUNE"
CACHE_ENV = "XCODEC_FAST_TUNE_CACHE"
MODES = ("auto", "off", "retune")
SCHEMA = "xcodec-fast-dispatch/2"  # /2: timed at the call's size, contenders again
MIN_REPS, MAX_REPS, MIN_SECONDS = 2, 10, 0.05  # timed calls per candidate after one warm-up
CONTEND_WITHIN = 1.5  # candidates whose best time is within this factor of the best are timed again
CONTEND_ROUNDS, CONTEND_SECONDS = 4, 1.0  # ... for this many rounds, or until they have taken this long
# channels x frames of the timed input: the first call's own size, within these bounds
MEASURE_ELEMENTS, MAX_MEASURE_ELEMENTS = 1 << 21, 1 << 24


def mode() -> str:
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"environment variable {MODE_ENV}={value!r}: choose one of {', '.join(MODES)}")
    return value


def identity(source_digest: str) -> dict:
    """What a measurement is valid for. The malloc mode is part of it: with glibc's default every
    large block is page-faulted afresh, which favours the implementations that allocate least, so
    the command line (reuse) and a library caller (default) can need different choices."""
    from .. import cpu_malloc

    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "source": source_digest,
        "malloc": "reuse" if cpu_malloc.mode() == "reuse" else "default",
    }


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "xcodec_fast" / "dispatch"


def cache_path(ident: dict) -> Path:
    name = f"{slug(ident['cpu'])}-{ident['threads']}t-{ident['malloc']}-torch{ident['torch']}-{ident['source']}.json"
    return cache_dir() / name


class Tuner:
    """One machine's dispatch table, loaded from and saved to its file."""

    def __init__(self, ident: dict):
        self.ident = ident
        self.path = cache_path(ident)
        self.lock = threading.Lock()
        self.table: dict[str, dict] = {} if mode() == "retune" else self._load()
        self.measured = 0  # how many shapes this process has timed

    def _load(self) -> dict[str, dict]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            warnings.warn(f"ignoring the dispatch table {self.path}: {exc}; shapes will be measured again",
                          stacklevel=3)
            return {}
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("identity") != self.ident or \
                not isinstance(doc.get("entries"), dict):
            warnings.warn(f"ignoring the dispatch table {self.path}: written for another machine, torch, kernel sources "
                          "or xcodec_fast version, or damaged; shapes will be measured again", stacklevel=3)
            return {}
        return {k: v for k, v in doc["entries"].items() if isinstance(v, dict) and isinstance(v.get("choice"), str)}

    def save(self) -> None:
        """Write the table atomically, merged with what other processes stored meanwhile."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._load_quietly(), **self.table}
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            tmp.write_text(json.dumps({"schema": SCHEMA, "identity": self.ident, "entries": merged},
                                      indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only cache only costs the next process a measurement
            warnings.warn(f"could not store the dispatch table at {self.path}: {exc}", stacklevel=3)

    def _load_quietly(self) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._load()

    def pick(self, key: str, candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
             default: Callable[[torch.Tensor], torch.Tensor],
             probe: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """``candidates[choice](x)`` for ``key``'s stored choice; with none stored, time every
        candidate first (``auto`` / ``retune``), or run ``default`` (while torch.compile traces).
        ``off`` runs ``default`` always: a stored table from earlier runs must not change it."""
        if _forced:  # empty outside studies and tests: no key parsing on the op's path
            choice = _forced.get(key.split("|", 1)[0])
            if choice in candidates:
                return candidates[choice](x)
        if mode() == "off":
            return default(x)
        entry = self.table.get(key)
        if entry is None or entry["choice"] not in candidates:
            if torch.compiler.is_compiling():
                return default(x)
            entry = self._measure(key, candidates, x, probe)
        return candidates[entry["choice"]](x)

    def _measure(self, key: str, candidates, x: torch.Tensor, make_probe=None) -> dict:
        """``make_probe()``: the input to time on; None: one (C, T) item, time last, short for the
        first round robin, then as long as ``x``'s items for the contenders (see :func:`probe_frames`)."""
        if make_probe is not None:
            probe = real = make_probe()
        else:
            short, long = probe_frames(x)
            probe = _random_item(x, short)
            real = probe if long == short else _random_item(x, long)
        times = _time_candidates(candidates, probe)
        seconds = {name: min(t) for name, t in times.items()}
        entry = {"choice": min(seconds, key=seconds.get), "ms": {k: round(v * 1e3, 4) for k, v in seconds.items()},
                 "reps": {k: len(t) for k, t in times.items()}, "measured_shape": list(probe.shape)}
        contenders = _close_to_best(seconds)
        if len(contenders) > 1:
            again = _time_contenders({name: candidates[name] for name in contenders}, real,
                                     times if real is probe else None)
            best = {name: min(t) for name, t in again.items()}
            entry["choice"] = min(best, key=best.get)
            if real is probe:
                entry["ms"].update({k: round(v * 1e3, 4) for k, v in best.items()})
                entry["reps"].update({k: len(t) for k, t in again.items()})
            else:
                entry["contenders"] = {"ms": {k: round(v * 1e3, 4) for k, v in best.items()},
                                       "reps": {k: len(t) for k, t in again.items()}, "measured_shape": list(real.shape)}
        with self.lock:
            self.table[key] = entry
            self.measured += 1
            self.save()
        return entry

    def retune(self) -> None:
        with self.lock:
            self.table = {}
            try:
                self.path.unlink()
            except OSError:
                pass


def probe_frames(x: torch.Tensor) -> tuple[int, int]:
    """Frames of the inputs a site is timed on: every candidate on a short one (MEASURE_ELEMENTS
    values: measuring stays cheap), the close ones then on one as long as the call's items (the
    sizes real audio brings), at least as long as the short one and at most MAX_MEASURE_ELEMENTS
    values. Real sizes decide: on a 2-core Zen 3 the oneDNN residual unit (Snake and conv in
    separate passes over memory) tied the chunked GEMM at 64 channels x 32768 frames (8 MB, inside
    the 32 MB L3) and took 2.2x its time at 160000 frames (a 10 s clip), where every pass goes to DRAM."""
    channels = max(1, math.prod(x.shape[1:-1]))
    short = min(max(MEASURE_ELEMENTS // channels, 256), 1 << 16)
    return short, max(short, min(x.shape[-1], MAX_MEASURE_ELEMENTS // channels))


def _close_to_best(seconds: dict[str, float]) -> list[str]:
    """The candidates whose time is within CONTEND_WITHIN of the best."""
    return [name for name, t in seconds.items() if t <= min(seconds.values()) * CONTEND_WITHIN]


def _random_item(x: torch.Tensor, frames: int) -> torch.Tensor:
    return torch.randn(1, *x.shape[1:-1], frames, generator=torch.Generator().manual_seed(0)).to(x.dtype)


def _round_robin(candidates: dict, probe: torch.Tensor, times: dict[str, list[float]], rotation: int) -> None:
    """One timed call of each candidate, in an order that rotates from round to round, so that a
    change in the machine's load falls on every candidate alike."""
    names = list(candidates)
    for name in names[rotation % len(names):] + names[:rotation % len(names)]:
        start = time.perf_counter()
        candidates[name](probe)
        times[name].append(time.perf_counter() - start)


def _time_candidates(candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                     probe: torch.Tensor) -> dict[str, list[float]]:
    """Seconds per call of every candidate on ``probe``, round robin, after one warm-up call each
    (first-touch allocations, oneDNN primitive creation)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.no_grad():
        for run in candidates.values():
            run(probe)
        rotation = 0
        while True:
            _round_robin(candidates, probe, times, rotation)
            rotation += 1
            if rotation >= MAX_REPS or (rotation >= MIN_REPS and min(sum(t) for t in times.values()) >= MIN_SECONDS):
                return times


def _time_contenders(contenders: dict[str, Callable[[torch.Tensor], torch.Tensor]], probe: torch.Tensor,
                     earlier: dict[str, list[float]] | None) -> dict[str, list[float]]:
    """More calls of the close candidates on ``probe``, added to their ``earlier`` times on it (None:
    a new probe: a warm-up call each first, and those no longer within CONTEND_WITHIN of the best
    warm-up are out). After each round, those no longer within CONTEND_WITHIN of the best are out.
    Noise on a machine only ever adds time, so each candidate's best call is its estimate; more
    calls give the close ones more chances of an undisturbed one."""
    times = {name: list(earlier[name]) if earlier else [] for name in contenders}
    live = list(contenders)
    with torch.no_grad():
        started = time.perf_counter()
        if earlier is None:
            warm = {}
            for name in live:
                start = time.perf_counter()
                contenders[name](probe)
                warm[name] = time.perf_counter() - start
            live = _close_to_best(warm)
        for rotation in range(CONTEND_ROUNDS):
            if len(live) < 2 and times[live[0]]:
                break
            _round_robin({name: contenders[name] for name in live}, probe, times, rotation)
            live = _close_to_best({name: min(times[name]) for name in live})
            if time.perf_counter() - started >= CONTEND_SECONDS:
                break
    return {name: t for name, t in times.items() if t}


_forced: dict[str, str] = {}


@contextlib.contextmanager
def forced(op: str, choice: str) -> Iterator[None]:
    """Run every site of ``op`` that has an implementation named ``choice`` with it, whatever the
    table says (error studies, tests); the table is left as it is."""
    previous = _forced.get(op)
    _forced[op] = choice
    try:
        yield
    finally:
        if previous is None:
            _forced.pop(op, None)
        else:
            _forced[op] = previous


def forced_choice(op: str) -> str | None:
    return _forced.get(op)


_tuners: dict[tuple, Tuner] = {}
_tuners_lock = threading.Lock()


def tuner(source_digest: str) -> Tuner:
    """The tuner for this machine as it is now (thread count included)."""
    ident = identity(source_digest)
    key = tuple(sorted(ident.items()))
    found = _tuners.get(key)  # the common case: no lock on the op's path
    if found is not None:
        return found
    with _tuners_lock:
        if key not in _tuners:
            _tuners[key] = Tuner(ident)
        return _tuners[key]


def retune() -> None:
    """Forget every stored choice for this machine: the next calls measure again."""
    with _tuners_lock:
        tuners = list(_tuners.values())
    for t in tuners:
        t.retune()


def describe(source_digest: str) -> list[str]:
    """The table as lines, for ``xcodec-fast info``."""
    t = tuner(source_digest)
    lines = [f"dispatch table {t.path} ({MODE_ENV}={mode()}): {len(t.table)} shapes measured"]
    for key in sorted(t.table):
        entry = t.table[key]
        times = ", ".join(f"{name} {ms:.3g} ms" for name, ms in sorted(entry.get("ms", {}).items()))
        longer = entry.get("contenders")
        if isinstance(longer, dict):
            times += f"; {longer.get('measured_shape', [0])[-1]} frames: " + ", ".join(
                f"{name} {ms:.3g} ms" for name, ms in sorted(longer.get("ms", {}).items()))
        lines.append(f"  {key}: {entry['choice']}  ({times})")
    return lines
