"""Long audio on this machine: ``python -m xcodec_fast.benchmark.long [-o FILE] [--quick]``.

Measures, with the full-size default config (random weights run at the speed of real ones):

* **decode / encode at 1, 10, 60 minutes**: wall time and peak resident memory, each in a fresh
  process (``VmHWM``), with the default chunking, plus the unchunked call at 1 minute. Peak
  memory above the process's baseline (model loaded, input allocated) must stay flat past the chunk.
* **chunk size sweep** (1 minute): decode time per audio second and peak memory per chunk size,
  which is what ``DECODE_CHUNK_FRAMES`` is chosen from.
* **streaming**: per fixed chunk size, the lookahead (algorithmic latency), the compute time of
  the first and of later chunks, and the real-time factor.
* **decode agreement** (1 minute): chunked and streamed decode against the whole decode, largest
  difference relative to the peak and the fraction of samples bit-equal.
* **windowed-encode agreement**: codes of the windowed encode against a whole-file encode per
  quantizer stage, overall and within 1 s of a window seam, as a function of the attention context.

Writes ``bench/results/long-<machine id>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCHEMA = "xcodec-fast-long-bench/1"
ROOT = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 16000


def speechlike(seconds: float, seed: int = 0, block_seconds: float = 60.0) -> np.ndarray:
    """Chirps with vibrato plus noise at speech-like pitch and level, made a minute at a time so
    that an hour of it costs its float32 size and no more."""
    rng = np.random.default_rng(seed)
    total, block = int(seconds * SAMPLE_RATE), int(block_seconds * SAMPLE_RATE)
    out = np.empty(total, np.float32)
    phase = 0.0
    for start in range(0, total, block):
        t = np.arange(start, min(total, start + block)) / SAMPLE_RATE
        f0 = 140 + 60 * np.sin(2 * np.pi * 0.3 * t)
        angle = phase + 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        phase = float(angle[-1])
        x = 0.3 * np.sin(angle) * (0.6 + 0.4 * np.sin(2 * np.pi * 2.1 * t))
        out[start : start + len(t)] = x + 0.03 * rng.standard_normal(len(t))
    return out


def _reset_peak() -> float:
    """Start a new peak (Linux: 5 > /proc/self/clear_refs resets VmHWM); returns the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _max_rss_mb()


def _max_rss_mb() -> float:
    """This process's peak resident set. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from
    the parent across fork and exec, so a child of a large process would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model(threads: int):
    import torch

    from ..config import XcodecConfig
    from ..modeling import XcodecModel

    torch.set_num_threads(threads)
    return XcodecModel.from_random(XcodecConfig(), seed=0)


def child(task: str, minutes: float, chunk: int | None, threads: int) -> dict:
    """One measurement in this (fresh) process; peak RSS above the baseline is what the call added."""
    import torch

    model = _model(threads)
    frames = int(minutes * 60 * 50)
    if task == "decode":
        codes = torch.randint(0, 1024, (1, 8, frames), generator=torch.Generator().manual_seed(0))
        model.decode(codes[..., :50])  # warm-up: kernels built, allocator primed
        baseline = _reset_peak()
        start = time.perf_counter()
        model.decode(codes, chunk_frames=chunk or frames)
    else:
        audio = torch.from_numpy(speechlike(minutes * 60))[None, None]
        model.encode(audio[..., :SAMPLE_RATE])
        baseline = _reset_peak()
        start = time.perf_counter()
        model.encode(audio, chunk_frames=chunk or frames)
    seconds = time.perf_counter() - start
    return {"task": task, "minutes": minutes, "chunk_frames": chunk, "seconds": seconds,
            "realtime_factor": minutes * 60 / seconds, "peak_rss_mb": _max_rss_mb(), "baseline_rss_mb": baseline,
            "added_peak_mb": _max_rss_mb() - baseline}


def run_child(task: str, minutes: float, chunk: int | None, threads: int) -> dict:
    cmd = [sys.executable, "-m", "xcodec_fast.benchmark.long", "--child", task, "--minutes", str(minutes),
           "--threads", str(threads)] + ([] if chunk is None else ["--chunk", str(chunk)])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"task": task, "minutes": minutes, "chunk_frames": chunk, "error": proc.stderr.strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def streaming(threads: int, chunks: list[int]) -> list[dict]:
    import torch

    model = _model(threads)
    rows = []
    for chunk in chunks:
        stream = model.decode_stream(chunk_frames=chunk)
        needed = chunk + stream.lookahead_frames
        codes = torch.randint(0, 1024, (1, 8, needed + 4 * chunk), generator=torch.Generator().manual_seed(1))
        start = time.perf_counter()
        first = stream.push(codes[..., :needed])
        first_s = time.perf_counter() - start
        later = []
        for step in range(4):
            begin = needed + step * chunk
            t = time.perf_counter()
            stream.push(codes[..., begin : begin + chunk])
            later.append(time.perf_counter() - t)
        stream.flush()
        per_chunk = float(np.median(later))
        rows.append({"chunk_frames": chunk, "window_frames": stream.window_frames,
                     "lookahead_frames": stream.lookahead_frames, "first_audio_samples": first.shape[-1],
                     "algorithmic_latency_s": needed / 50, "first_chunk_compute_s": first_s,
                     "chunk_compute_s": per_chunk, "realtime_factor": chunk / 50 / per_chunk})
        print(f"stream chunk {chunk:4d}: first {first_s:.3f} s, per chunk {per_chunk:.3f} s, "
              f"{chunk / 50 / per_chunk:.2f}x real time", file=sys.stderr, flush=True)
    return rows


def decode_agreement(threads: int, minutes: float, chunks: list[int], stream_chunks: list[int]) -> dict:
    """Chunked and streamed decode against the whole decode (one window), per chunk size: the
    largest difference relative to the audio's peak and the fraction of samples bit-equal."""
    import torch

    model = _model(threads)
    frames = round(minutes * 60 * 50)
    codes = torch.randint(0, 1024, (1, 8, frames), generator=torch.Generator().manual_seed(3))
    whole = model.decode(codes, chunk_frames=frames).audio_values
    peak = whole.abs().max().item()

    def row(kind: str, chunk, audio) -> dict:
        diff = (audio - whole).abs()
        result = {"kind": kind, "chunk_frames": chunk, "max_rel_error": diff.max().item() / peak,
                  "bit_equal_fraction": (diff == 0).double().mean().item()}
        print(f"decode agreement {kind} {chunk}: max rel {result['max_rel_error']:.3g}, "
              f"bit-equal {result['bit_equal_fraction']:.4f}", file=sys.stderr, flush=True)
        return result

    rows = [row("chunked", chunk, model.decode(codes, chunk_frames=chunk).audio_values) for chunk in chunks]
    for chunk in stream_chunks:
        stream = model.decode_stream(chunk_frames=chunk)
        pieces = [stream.push(codes[..., i : i + 13]) for i in range(0, frames, 13)] + [stream.flush()]
        rows.append(row("stream", chunk, torch.cat(pieces, dim=-1)))
    return {"minutes": minutes, "grid_frames": model.decoder_grid(), "rows": rows}


def agreement(threads: int, seconds: float, chunk: int, contexts: list[int]) -> dict:
    import torch

    model = _model(threads)
    audio = torch.from_numpy(speechlike(seconds, seed=2))[None, None]
    whole = model.encode(audio).audio_codes[0]
    frames = whole.shape[-1]
    seams = np.arange(chunk, frames, chunk)
    near = np.zeros(frames, bool)
    for seam in seams:
        near[max(0, seam - 50) : seam + 50] = True
    rows = []
    for context in contexts:
        start = time.perf_counter()
        got = model.encode(audio, chunk_frames=chunk, context_frames=context).audio_codes[0]
        equal = (got == whole).numpy()
        rows.append({"context_frames": context, "seconds": time.perf_counter() - start,
                     "per_stage": equal.mean(1).round(4).tolist(),
                     "per_stage_near_seams": equal[:, near].mean(1).round(4).tolist(),
                     "per_stage_away_from_seams": equal[:, ~near].mean(1).round(4).tolist(),
                     "all_stages_equal": float(equal.all(0).mean())})
        print(f"context {context:4d}: stage 0 {rows[-1]['per_stage'][0]:.3f} (near seams "
              f"{rows[-1]['per_stage_near_seams'][0]:.3f}), stage 7 {rows[-1]['per_stage'][7]:.3f}",
              file=sys.stderr, flush=True)
    return {"audio_seconds": seconds, "chunk_frames": chunk, "seam_band_frames": 50, "rows": rows,
            "weights": "random (XcodecModel.from_random): attention close to uniform, the worst case for windows"}


def main(argv=None) -> int:
    import torch

    from ..modeling.codec import DECODE_CHUNK_FRAMES, ENCODE_CHUNK_FRAMES, ENCODE_CONTEXT_FRAMES
    from .machine import git_state, machine_info, versions

    p = argparse.ArgumentParser(prog="python -m xcodec_fast.benchmark.long", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, default=None)
    p.add_argument("--minutes", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=["decode", "encode"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--durations", type=float, nargs="+", default=[1, 10, 60], help="minutes (default 1 10 60)")
    p.add_argument("--sweep", type=int, nargs="+", default=[150, 500, 1500, 3000],
                   help="decode chunk sizes (frames) timed on 1 minute")
    p.add_argument("--stream-chunks", type=int, nargs="+", default=[1, 5, 25, 50, 150])
    p.add_argument("--agreement-seconds", type=float, default=120.0)
    p.add_argument("--contexts", type=int, nargs="+", default=[0, 25, 50, 100, 250, 500])
    p.add_argument("--decode-agreement-chunks", type=int, nargs="+", default=[7, 25, 150, 500])
    p.add_argument("--parts", nargs="+", default=["lengths", "sweep", "stream", "decode_agreement", "agreement"])
    p.add_argument("--tasks", nargs="+", default=["decode", "encode"], help="which calls the lengths part times")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.minutes, args.chunk, args.threads)))
        return 0

    machine = machine_info(torch.device("cpu"))
    output = args.output or ROOT / "bench" / "results" / f"long-{machine['id']}.json"
    result = json.loads(output.read_text()) if output.exists() else {}
    result.update({
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {k: machine[k] for k in ("id", "cpu", "cpu_cores", "os", "python")},
        "threads": args.threads,
        "versions": versions(),
        "git": git_state(),
        "defaults": {"decode_chunk_frames": DECODE_CHUNK_FRAMES, "encode_chunk_frames": ENCODE_CHUNK_FRAMES,
                     "encode_context_frames": ENCODE_CONTEXT_FRAMES},
        "config": "XcodecConfig() (full size), random weights, batch 1, default backend",
    })

    def save() -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    if "sweep" in args.parts:
        result["decode_chunk_sweep"] = []
        for chunk in args.sweep:
            row = run_child("decode", 1, chunk, args.threads)
            result["decode_chunk_sweep"].append(row)
            print(f"sweep decode chunk {chunk}: {row}", file=sys.stderr, flush=True)
            save()
    if "stream" in args.parts:
        result["streaming"] = streaming(args.threads, args.stream_chunks)
        save()
    if "decode_agreement" in args.parts:
        result["decode_agreement"] = decode_agreement(args.threads, 1, args.decode_agreement_chunks, [25, None])
        save()
    if "agreement" in args.parts:
        result["encode_agreement"] = agreement(args.threads, args.agreement_seconds, 1000, args.contexts)
        save()
    if "lengths" in args.parts:
        # Rows of calls not timed now are kept from the stored result.
        result["lengths"] = [r for r in result.get("lengths", []) if r["task"] not in args.tasks]
        for minutes in args.durations:
            for task, default in (("decode", DECODE_CHUNK_FRAMES), ("encode", ENCODE_CHUNK_FRAMES)):
                if task not in args.tasks:
                    continue
                chunks = [default] + ([None] if minutes == min(args.durations) else [])
                for chunk in chunks:
                    row = run_child(task, minutes, chunk, args.threads)
                    result["lengths"].append(row)
                    print(f"{task} {minutes} min chunk {chunk}: {row}", file=sys.stderr, flush=True)
                    save()
    save()
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
