"""Markdown tables from result JSON, and the README section regenerated from stored results."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .kernels import geometric_mean

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _fmt(value, spec: str, missing: str = "–") -> str:
    return missing if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(result: dict) -> str:
    m, v, g = result["machine"], result["versions"], result["git"]
    device = m.get("gpu") or m["cpu"]
    commit = (g.get("commit") or "unknown")[:10] + ("+dirty" if g.get("dirty") else "")
    ceil = result.get("roofline") or {}
    peaks = ", ".join(f"{k} {_fmt(t, '.2f')} TFLOP/s" for k, t in (ceil.get("matmul_tflops") or {}).items())
    roof = (
        f" Roofline ceilings measured in the same run: copy {_fmt(ceil.get('bandwidth_gbps'), '.1f')} GB/s; matmul {peaks}."
        if ceil
        else ""
    )
    malloc_mode = result.get("settings", {}).get("cpu_malloc_kernels")
    malloc = f" Kernels timed with CPU malloc in {malloc_mode} mode." if malloc_mode and result.get("kernels") else ""
    return (
        f"**{m['id']}** ({device}, {m['cpu_cores']} cores, {m['torch_threads']} threads; {result['mode']} mode, {result['created'][:10]}, commit {commit}; "
        f"torch {v['torch']}, triton {v.get('triton')}, transformers {v.get('transformers')}).{roof}{malloc}"
    )


MALLOC_NOTE = (
    "CPU malloc: `default` is glibc as a process starts (blocks above its mmap threshold get fresh pages, "
    "page-faulted on first write, and are unmapped on free); `reuse` keeps freed memory mapped "
    "(`xcodec_fast.cpu_malloc.reuse_freed_memory()`, which the command line applies). Both rows of a pair "
    "ran in the same process, reuse second."
)


def kernel_summary(result: dict) -> str:
    """Per op, dtype and batch: geometric-mean speedup over eager and median roofline fraction."""
    records = [r for r in result.get("kernels", []) if r["status"] == "ok"]
    if not records:
        return "_No kernel measurements._"
    backends = [b for b in result["backends"] if any(r["backend"] == b for r in records)]
    header = ["op", "dtype", "batch", "cases", "eager ms (sum)"]
    for b in backends:
        header += ([f"{b} × eager"] if b != "eager" else []) + [f"{b} % roofline"]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["op"], r["dtype"], r["batch"]), []).append(r)
    rows = []
    for (op, dtype, batch), items in groups.items():
        eager = [r for r in items if r["backend"] == "eager"]
        row = [
            op,
            dtype,
            str(batch),
            str(len({r["label"] for r in items})),
            _fmt(sum(r["median_s"] for r in eager) * 1e3 if eager else None, ".3f"),
        ]
        for b in backends:
            mine = [r for r in items if r["backend"] == b]
            if b != "eager":
                row.append(_fmt(geometric_mean([r.get("speedup_vs_eager") for r in mine]), ".2f"))
            fractions = [r["roofline_fraction"] for r in mine]
            row.append(_fmt(100 * statistics.median(fractions) if fractions else None, ".1f"))
        rows.append(row)
    return _table(header, rows)


def kernel_detail(result: dict) -> str:
    """Every case: time, GB/s, TFLOP/s, roofline fraction, speedup, agreement with eager."""
    rows = []
    for r in result.get("kernels", []):
        case = [r["op"], r["label"], str(r["batch"]), r["dtype"], r["backend"]]
        if r["status"] != "ok":
            # Nothing was measured: the status and its reason fill the first of the six measurement columns.
            rows.append(case + [r["status"] + ": " + r.get("reason", "")[:80]] + [""] * 5)
            continue
        agree = r.get("code_match", r.get("max_rel_err"))
        measured = [
            f"{r['median_s'] * 1e3:.3f}",
            f"{r['gbps']:.1f}",
            f"{r['tflops']:.3f}",
            f"{100 * r['roofline_fraction']:.1f} ({r['bound']})",
            _fmt(r.get("speedup_vs_eager"), ".2f"),
            _fmt(agree, ".2e" if "max_rel_err" in r else ".4f"),
        ]
        rows.append(case + measured)
    header = [
        "op",
        "site",
        "batch",
        "dtype",
        "backend",
        "median ms",
        "GB/s",
        "TFLOP/s",
        "% roofline",
        "× eager",
        "vs eager",
    ]
    return _table(header, rows)


def e2e_table(result: dict) -> str:
    e2e = result.get("end_to_end")
    if not e2e or not e2e.get("results"):
        return "_No end-to-end measurements._"
    rows = []
    with_malloc = any("cpu_malloc" in r for r in e2e["results"])
    ordered = sorted(e2e["results"], key=lambda r: (r["stage"] != "encode", r["batch"], r.get("cpu_malloc") or ""))
    for r in ordered:
        malloc = [r.get("cpu_malloc", "–")] if with_malloc else []
        if r.get("status") != "ok":
            rows.append(
                [r["impl"], r["stage"], str(r["batch"]), *malloc, r.get("status", "?"), "", "", "", "",
                 r.get("reason", "")[:80]]
            )
            continue
        agree = agreement_text(r)
        rows.append(
            [
                r["impl"],
                r["stage"],
                str(r["batch"]),
                *malloc,
                f"{r['median_s'] * 1e3:.1f}",
                f"{r['realtime_factor']:.1f}",
                _fmt(r.get("speedup_vs_transformers"), ".2f"),
                f"{r['peak_memory_mb']:.0f}",
                f"{r['first_call_s']:.1f}",
                agree,
            ]
        )
    title = f"End to end, {e2e['config']} config, {e2e['clip_seconds']:g} s clips, {e2e['dtype']}:"
    table = _table(
        [
            "implementation",
            "stage",
            "batch",
            *(["CPU malloc"] if with_malloc else []),
            "median ms",
            "× real time",
            "× transformers",
            "peak MB",
            "first call s",
            "agreement vs transformers",
        ],
        rows,
    )
    skipped = "".join(f"\n- skipped {s['impl']}: {s['reason']}" for s in e2e.get("skipped", []))
    note = f"\n- {MALLOC_NOTE}" if with_malloc else ""
    return f"{title}\n\n{table}\n{floor_lines(result)}{note}{skipped}".rstrip()


def agreement_text(r: dict) -> str:
    """One end-to-end row's agreement with transformers: codes equal (per stage where any differ),
    or decode error and SNR."""
    if r["stage"] == "encode":
        if "code_match" not in r:
            return ""
        text = f"codes {100 * r['code_match']:.2f}% equal"
        stages = r.get("code_match_per_stage") or []
        if stages and min(stages) < 1:
            text += " (per stage " + " / ".join(f"{100 * s:.0f}" for s in stages) + ")"
        return text
    if "max_rel_err" not in r:
        return ""
    text = f"max rel err {r['max_rel_err']:.1e}"
    snr = r.get("snr_db")
    if snr is not None and snr != float("inf") and r["max_rel_err"] > 1e-4:
        text += f", SNR {snr:.1f} dB"
    return text


def floor_lines(result: dict) -> str:
    """Each stage's FLOPs at the matmul rate measured in the same run: no implementation beats it."""
    flops = result.get("end_to_end", {}).get("flops")
    rate = result.get("roofline", {}).get("matmul_tflops", {}).get("float32")
    if not flops or not rate:
        return ""
    lines = []
    for batch, stages in flops.items():
        for stage, count in stages.items():
            lines.append(
                f"\n- floor, {stage} batch {batch}: {count['total'] / 1e9:.1f} GFLOP "
                f"({count['convolution'] / 1e9:.1f} in convolutions) at the measured {rate:.2f} TFLOP/s fp32 matmul rate "
                f"= {count['total'] / (rate * 1e12) * 1e3:.0f} ms"
            )
    return "".join(lines)


def backend_notes(result: dict) -> str:
    return "\n".join(
        f"- {name}: {'timed' if s['available'] else 'skipped'} ({s['reason']})"
        for name, s in result["backends"].items()
    )


KERNEL_SOURCES = ("kernels", "xcodec_fast/ops")
ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> tuple[int, str]:
    import subprocess

    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return -1, ""
    return proc.returncode, proc.stdout.strip()


def staleness(result: dict) -> str | None:
    """Why a stored result no longer describes the kernels in this checkout, or None: the last
    commit that changed ``kernels/`` or ``xcodec_fast/ops/`` must be the result's commit or an
    ancestor of it."""
    commit = (result.get("git") or {}).get("commit")
    code, last = _git("log", "-1", "--format=%H", "--", *KERNEL_SOURCES)
    if not commit or code != 0 or not last:
        return None  # no git here, or a result without a commit: nothing to compare
    code, _ = _git("merge-base", "--is-ancestor", last, commit)
    if code == 0:
        return None
    if code == 1:
        return f"the kernels changed in {last[:10]}, after this result's commit {commit[:10]}"
    return f"this result's commit {commit[:10]} is not in this checkout's history"


def stale_warning(result: dict, rerun: str) -> list[str]:
    """The STALE paragraph that heads a stored result older than the kernels (see staleness), as a
    list of at most one paragraph; ``rerun`` is the command that refreshes it."""
    why = staleness(result)
    return [f"**STALE**: {why}; rerun `{rerun}` on this machine."] if why else []


def summary_markdown(result: dict) -> str:
    warning = stale_warning(result, "xcodec-fast bench")
    return "\n\n".join(warning + [machine_line(result), backend_notes(result), kernel_summary(result), e2e_table(result)])


# ---- stored results -> README ------------------------------------------------------------------


def load_results(results_dir: Path) -> list[dict]:
    """One result per machine: the full-mode file when there is one, else the quick one. Runs with
    a custom workload (fewer ops, other shapes...) are not comparable and stay out."""
    chosen: dict[str, dict] = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        machine = result.get("machine", {}).get("id")
        if machine is None or not result.get("standard", False):
            continue
        if machine not in chosen or (chosen[machine]["mode"] == "quick" and result["mode"] != "quick"):
            chosen[machine] = result
    return [chosen[k] for k in sorted(chosen, key=lambda k: (not k.startswith("gpu"), k))]


def readme_section(results: list[dict]) -> str:
    if not results:
        return "_No stored benchmark results yet: run `xcodec-fast bench` and commit bench/results/._"
    parts = [
        "Generated by `python bench/render.py` from `bench/results/*.json`; do not edit by hand. "
        "Speedups are geometric means over the model's real (channels, frames) sites, computed from "
        "measured medians; % roofline = max(bytes / copy bandwidth, FLOPs / matmul peak) / measured time. "
        "GPUs flush L2 before every timed call; on CPUs, cases whose working set fits in the last-level "
        "cache can exceed 100% of the DRAM-bandwidth ceiling, and the native backend, which computes "
        "bf16/fp16 in fp32, can exceed the (slower) bf16 matmul ceiling."
    ]
    parts += [summary_markdown(r) for r in results]
    return "\n\n".join(parts)


def render_readme(readme: Path, results_dir: Path) -> tuple[bool, str]:
    """Replace the text between the markers; returns (written, section)."""
    section = readme_section(load_results(results_dir))
    text = readme.read_text() if readme.exists() else ""
    if START not in text or END not in text or text.index(START) > text.index(END):
        return False, section
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{section}\n{END}{tail}")
    return True, section


# ---- long audio (python -m xcodec_fast.benchmark.long) -----------------------------------------

LONG_START, LONG_END = "<!-- long:start -->", "<!-- long:end -->"


def _mb(value) -> str:
    return _fmt(value, ".0f")


def long_markdown(result: dict) -> str:
    m, g = result["machine"], result["git"]
    commit = (g.get("commit") or "unknown")[:10] + ("+dirty" if g.get("dirty") else "")
    parts = stale_warning(result, "python -m xcodec_fast.benchmark.long")
    parts += [f"**{m['id']}** ({m['cpu']}, {m['cpu_cores']} cores, {result['threads']} threads; "
             f"{result['created'][:10]}, commit {commit}; {result['config']}). Peak memory is the process's "
             "peak resident set (`VmHWM`), each row in a fresh process; 'added' is the call's own peak above the "
             "resident set after loading the model, the input and a warm-up call."]
    rows = [[r["task"], _fmt(r["minutes"], "g"), "whole" if r["chunk_frames"] is None else str(r["chunk_frames"]),
             _fmt(r.get("seconds"), ".1f"), _fmt(r.get("realtime_factor"), ".2f"), _mb(r.get("peak_rss_mb")),
             _mb(r.get("added_peak_mb")), (r.get("error") or r.get("note") or "")[:160]]
            for r in result.get("lengths", [])]
    if rows:
        parts.append(_table(["call", "minutes", "chunk (frames)", "s", "× real time", "peak MB", "added MB", "note"], rows))
    rows = [[str(r["chunk_frames"]), _fmt(r.get("seconds"), ".1f"), _fmt(r.get("realtime_factor"), ".2f"),
             _mb(r.get("added_peak_mb"))] for r in result.get("decode_chunk_sweep", [])]
    if rows:
        parts.append("Decode chunk sweep, 1 minute of codes:\n\n"
                     + _table(["chunk (frames)", "s", "× real time", "added MB"], rows))
    rows = [[str(r["chunk_frames"]), str(r["lookahead_frames"]), _fmt(r["algorithmic_latency_s"], ".2f"),
             _fmt(r["first_chunk_compute_s"], ".3f"), _fmt(r["chunk_compute_s"], ".3f"), _fmt(r["realtime_factor"], ".2f")]
            for r in result.get("streaming", [])]
    if rows:
        parts.append("Streaming decode (fixed chunks; latency = chunk + lookahead frames of codes must exist "
                     "before the chunk's audio, plus its compute):\n\n"
                     + _table(["chunk (frames)", "lookahead", "latency s (codes)", "first chunk s", "per chunk s",
                               "× real time"], rows))
    decoded = result.get("decode_agreement")
    if decoded:
        rows = [[r["kind"], "per push" if r["chunk_frames"] is None else str(r["chunk_frames"]),
                 _fmt(r["max_rel_error"], ".2g"), _fmt(r["bit_equal_fraction"], ".4f")] for r in decoded["rows"]]
        parts.append(f"Chunked and streamed decode against the whole decode, {decoded['minutes']:g} minute of random "
                     f"codes, windows on the decoder grid ({decoded['grid_frames']} frames; streams pushed 13 frames "
                     "at a time):\n\n" + _table(["decode", "chunk (frames)", "max error / peak", "samples bit-equal"],
                                                 rows))
    agreement = result.get("encode_agreement")
    if agreement:
        rows = [[str(r["context_frames"]), _fmt(r["per_stage"][0], ".3f"), _fmt(r["per_stage_near_seams"][0], ".3f"),
                 _fmt(r["per_stage_away_from_seams"][0], ".3f"), _fmt(r["per_stage"][-1], ".3f"),
                 _fmt(r["all_stages_equal"], ".3f")] for r in agreement["rows"]]
        parts.append(f"Windowed encode against a whole-file encode, {agreement['audio_seconds']:g} s of speech-like "
                     f"audio, windows of {agreement['chunk_frames']} frames, {agreement['weights']}; fraction of "
                     f"codes equal ('near seams': within {agreement['seam_band_frames']} frames of a window edge):\n\n"
                     + _table(["context (frames)", "stage 0", "stage 0 near seams", "stage 0 elsewhere",
                               "stage 7", "all 8 stages"], rows))
    return "\n\n".join(parts)


def long_section(results_dir: Path) -> str:
    results = []
    for path in sorted(Path(results_dir).glob("long-*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if result.get("schema", "").startswith("xcodec-fast-long-bench/"):
            results.append(result)
    if not results:
        return "_No stored long-audio results yet: run `python -m xcodec_fast.benchmark.long`._"
    return "\n\n".join(long_markdown(r) for r in results)


def render_long(readme: Path, results_dir: Path) -> bool:
    """Replace the text between the long-audio markers; False when the README has none."""
    text = readme.read_text() if readme.exists() else ""
    if LONG_START not in text or LONG_END not in text or text.index(LONG_START) > text.index(LONG_END):
        return False
    head, rest = text.split(LONG_START, 1)
    _, tail = rest.split(LONG_END, 1)
    readme.write_text(f"{head}{LONG_START}\n{long_section(results_dir)}\n{LONG_END}{tail}")
    return True
