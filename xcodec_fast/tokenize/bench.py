"""Tokenizer throughput on this machine: ``python -m xcodec_fast.tokenize.bench [-o FILE]``.

Generates speech-like test audio (chirps plus noise, 2-18 s files at 16 kHz), then runs the
``tokenize`` command line once per (model, thread count) in a fresh process, and stores every run's
``--json-summary`` (audio hours per wall hour, model-busy vs wall seconds, runtime) in one JSON
file with the machine, versions and git commit. Default: the tiny random model on 10 min of audio
and the full default-config random model on 1 min, each with 1 and 2 torch threads, written to
``bench/results/tokenize-<machine id>.json``. Random weights encode at the speed of real ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SCHEMA = "xcodec-fast-tokenize-bench/1"
ROOT = Path(__file__).resolve().parents[2]


def make_audio(root: Path, seconds: float, seed: int = 0, sample_rate: int = 16000) -> float:
    """Write wav files totalling ``seconds``; returns the total written."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    total, i = 0.0, 0
    while seconds - total >= 0.5:  # a last file shorter than that is left out
        length = min(float(rng.uniform(2, 18)), seconds - total)
        t = np.arange(int(length * sample_rate)) / sample_rate
        f0 = rng.uniform(90, 250)
        x = 0.3 * np.sin(2 * np.pi * (f0 + 150 * np.sin(0.7 * t)) * t) + 0.03 * rng.standard_normal(len(t))
        sf.write(root / f"{i:04d}.wav", x.astype(np.float32), sample_rate, subtype="PCM_16")
        total += len(t) / sample_rate
        i += 1
    return total


def run_one(data: Path, work: Path, model: str, threads: int, extra: list[str], device: str = "cpu",
            dtype: str = "float32") -> dict:
    tag = f"{model}-{threads}-{dtype}" + ("-graphs" if "--cuda-graphs" in extra else "")
    out, summary = work / f"out-{tag}", work / f"summary-{tag}.json"
    cmd = [sys.executable, "-m", "xcodec_fast.tokenize", str(data), "-o", str(out), "--model", model, "--device", device,
           "--threads", str(threads), "--dtype", dtype, "--no-progress", "--overwrite", "--json-summary", str(summary),
           *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(summary.read_text())


def _load() -> list[float] | None:
    """1/5/15-minute load averages: on a shared machine, how busy it was around a measurement."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None) -> int:
    from ..benchmark.machine import git_state, machine_info, versions

    import torch

    p = argparse.ArgumentParser(prog="python -m xcodec_fast.tokenize.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, default=None, help="result file (default bench/results/tokenize-<machine>.json)")
    p.add_argument("--tiny-seconds", type=float, default=600.0, help="audio for the tiny model (default 600)")
    p.add_argument("--full-seconds", type=float, default=60.0, help="audio for the full model (default 60)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--num-workers", type=int, default=None, help="decode workers (default: tokenize's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs (default cpu)")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=("float32", "bfloat16", "float16"),
                   help="model dtypes to run (default float32; bfloat16 is the opt-in path)")
    p.add_argument("--batching", nargs="+", default=["padded"], choices=("padded", "cuda-graphs"),
                   help="padded batches, and/or length buckets replayed from CUDA graphs (--cuda-graphs; CUDA only)")
    args = p.parse_args(argv)
    if "cuda-graphs" in args.batching and args.device != "cuda":
        p.error("--batching cuda-graphs needs --device cuda")

    machine = machine_info(torch.device(args.device))
    output = args.output or ROOT / "bench" / "results" / f"tokenize-{machine['id']}.json"
    extra = [] if args.num_workers is None else ["--num-workers", str(args.num_workers)]
    runs, failed = [], 0
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    output.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        # After every run: a time-boxed caller (the GPU session) that stops this keeps the runs so far.
        result = {
            "schema": SCHEMA,
            "created": created,
            "machine": {k: machine.get(k) for k in ("id", "cpu", "cpu_cores", "gpu", "os", "python")},
            "load_average_after": _load(),
            "versions": versions(),
            "git": git_state(),
            "workload": "16 kHz wav, 2-18 s per file, default --batch-seconds/--max-seconds; random weights",
            "runs": runs,
        }
        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, output)

    with tempfile.TemporaryDirectory(prefix="xcodec-tokenize-bench-") as tmp:
        work = Path(tmp)
        for model, seconds in (("random-tiny", args.tiny_seconds), ("random", args.full_seconds)):
            if seconds <= 0:
                continue
            data = work / f"audio-{model}"
            audio_seconds = make_audio(data, seconds)
            for dtype, threads, batching in ((d, t, b) for d in args.dtypes for t in args.threads for b in args.batching):
                load = _load()
                flags = extra + (["--cuda-graphs"] if batching == "cuda-graphs" else [])
                try:
                    s = run_one(data, work, model, threads, flags, args.device, dtype)
                except (RuntimeError, OSError, ValueError) as exc:  # kept with its reason; the next run still goes
                    failed += 1
                    runs.append({"model": model, "device": args.device, "threads": threads, "dtype": dtype,
                                 "batching": batching, "error": str(exc)[-3000:]})
                    write()
                    print(f"{model} {dtype} {batching} threads {threads}: FAILED\n{exc}", file=sys.stderr, flush=True)
                    continue
                runs.append({"model": model, "device": args.device, "threads": threads, "dtype": dtype,
                             "batching": s["batching"], "cuda_graphs": s["cuda_graphs"],
                             "audio_seconds": audio_seconds, "load_average_before": load, "summary": s})
                write()
                print(f"{model:12s} {dtype:8s} {s['batching']:18s} threads {threads}: "
                      f"{s['audio_hours_per_hour']:8.1f} audio-h/h, model busy "
                      f"{s['model_busy_seconds']:.1f} s of {s['wall_seconds']:.1f} s wall "
                      f"({100 * s['model_busy_fraction']:.0f}%), {s['wall_seconds_total']:.1f} s with model load",
                      file=sys.stderr, flush=True)
    print(f"wrote {output}" + (f"; {failed} run(s) failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
