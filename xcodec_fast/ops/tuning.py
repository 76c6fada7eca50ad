"""Measured dispatch: on each machine the native backend picks, per call shape, the fastest of its
implementations of an op, by timing them once on the real inputs.

The CPUs users run on differ (the same suite showed the native residual unit 2.2x oneDNN on one
Intel VM and a tie on an AMD one), so no constant can decide. The first call of an op at a new
site (op, channels, kernel, stride or dilation, dtype) times every candidate on a random input of
that geometry, about ``MEASURE_ELEMENTS`` values long (the size of the real model's busiest sites,
bounded so that measuring costs well under a second per site), and records the times; that call
and every later one at the site run the fastest. One choice per
site, not per length: an item then takes the same implementation alone as in a padded batch, so
their results stay equal. The table lives in one JSON file per CPU model, thread
count, torch version and kernel source digest, so a new machine, a new torch or changed kernels
measure afresh (and the glibc malloc mode, see :func:`identity`); a file that does not parse, or
whose fields do not match, is ignored.

Timing is noisy on shared machines (VMs): the same kernel at the same site has measured 53 and 85 ms
in one table. So every candidate is timed a few times round robin, and then the contenders (within
``CONTEND_WITHIN`` of the best) are timed again for longer: a pick then rests on several calls of
each close candidate, while clear losers cost no more.

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
SCHEMA = "xcodec-fast-dispatch/1"
MIN_REPS, MAX_REPS, MIN_SECONDS = 2, 10, 0.05  # timed calls per candidate after one warm-up
CONTEND_WITHIN = 1.5  # candidates whose best time is within this factor of the best are timed again
CONTEND_ROUNDS, CONTEND_SECONDS = 4, 0.5  # ... for this many rounds, or until they have taken this long
MEASURE_ELEMENTS = 1 << 21  # channels x frames of the timed input


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
            warnings.warn(f"ignoring the dispatch table {self.path}: written for another machine, torch or "
                          "kernel sources, or damaged; shapes will be measured again", stacklevel=3)
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
        """``make_probe()``: the input to time on; None: one (C, T) item of ~MEASURE_ELEMENTS, time last."""
        if make_probe is not None:
            probe = make_probe()
        else:
            channels = max(1, math.prod(x.shape[1:-1]))
            frames = min(max(MEASURE_ELEMENTS // channels, 256), 1 << 16)
            probe = torch.randn(1, *x.shape[1:-1], frames, generator=torch.Generator().manual_seed(0)).to(x.dtype)
        times = _time_candidates(candidates, probe)
        seconds = {name: min(t) for name, t in times.items()}
        entry = {"choice": min(seconds, key=seconds.get), "ms": {k: round(v * 1e3, 4) for k, v in seconds.items()},
                 "reps": {k: len(t) for k, t in times.items()}, "measured_shape": list(probe.shape)}
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


def _time_candidates(candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                     probe: torch.Tensor) -> dict[str, list[float]]:
    """Seconds per call of every candidate on ``probe``: all of them round robin (so that a change
    in the machine's load falls on every candidate alike), then the contenders again. Noise on a
    machine only ever adds time, so each candidate's best call is its estimate; more calls give the
    close ones more chances of an undisturbed one."""
    times: dict[str, list[float]] = {name: [] for name in candidates}

    def round_robin(names: list[str], rotation: int) -> None:
        for name in names[rotation % len(names):] + names[:rotation % len(names)]:
            start = time.perf_counter()
            candidates[name](probe)
            times[name].append(time.perf_counter() - start)

    names = list(candidates)
    with torch.no_grad():
        for run in candidates.values():
            run(probe)  # warm-up: first-touch allocations, oneDNN primitive creation
        rotation = 0
        while True:
            round_robin(names, rotation)
            rotation += 1
            if rotation >= MAX_REPS or (rotation >= MIN_REPS and min(sum(t) for t in times.values()) >= MIN_SECONDS):
                break
        best = min(min(t) for t in times.values())
        contenders = [name for name in names if min(times[name]) <= best * CONTEND_WITHIN]
        if len(contenders) > 1:
            started = time.perf_counter()
            for _ in range(CONTEND_ROUNDS):
                round_robin(contenders, rotation)
                rotation += 1
                if time.perf_counter() - started >= CONTEND_SECONDS:
                    break
    return times


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
        lines.append(f"  {key}: {entry['choice']}  ({times})")
    return lines
