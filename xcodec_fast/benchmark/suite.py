"""The benchmark suite behind ``xcodec-fast bench`` and ``python bench/run.py``.

It lives in the package (not only in bench/) so that an installed xcodec-fast can benchmark the
machine it runs on; bench/run.py, bench/render.py and bench/plot.py are thin scripts over it.

One run = kernel micro-benchmarks (every op at the model's real shapes, every backend, against
roofline ceilings measured in the same run) + end-to-end encode/decode against transformers.
Results go to one JSON per machine; a markdown summary is printed last.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

import torch

from .. import cpu_malloc, hardware, ops
from ..config import XcodecConfig, tiny_config
from . import cases, e2e, kernels, machine, report, timing

SCHEMA = "xcodec-fast-bench/1"
_ROOT = Path(__file__).resolve().parents[2]
_IN_CHECKOUT = (_ROOT / "bench").is_dir() and (_ROOT / "pyproject.toml").is_file()
DEFAULT_RESULTS = _ROOT / "bench" / "results" if _IN_CHECKOUT else Path("xcodec-fast-bench") / "results"
DEFAULT_PLOTS = _ROOT / "bench" / "out" if _IN_CHECKOUT else Path("xcodec-fast-bench") / "out"

# Quick mode: < 2 minutes on a small CPU. Full mode: the real 10 s workload, for GPUs.
_FULL = dict(
    seconds=10.0,
    batches="1,16",
    dtypes="float32,bfloat16,float16",
    dilations="1,3,9",
    e2e_config="full",
    e2e_seconds=10.0,
    compile=True,
)
MODES = {
    "quick": dict(
        seconds=0.5, batches="1", dtypes="float32", dilations="1", e2e_config="tiny", e2e_seconds=2.0, compile=False
    ),
    "full": _FULL,
    # The same 10 s workload sized for a CPU: batch 16 x 10 s and fp16 convolutions are impractical there.
    "full-cpu": {**_FULL, "batches": "1", "dtypes": "float32,bfloat16"},
}
CONFIGS = {"full": XcodecConfig, "tiny": tiny_config}


def _csv(kind):
    def parse(text: str) -> list:
        return [kind(item) for item in text.split(",") if item.strip()]

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small shapes, batch 1, fp32, tiny end-to-end model (< 2 min on CPU)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
    parser.add_argument(
        "--backends", type=_csv(str), default=list(ops.BACKENDS), help="comma list; eager always runs (the baseline)"
    )
    parser.add_argument("--ops", type=_csv(str), default=None, help="comma list of ops (default: all)")
    parser.add_argument("--dtypes", type=_csv(str), default=None, help="float32,bfloat16,float16 (quick: float32)")
    parser.add_argument(
        "--batches", type=_csv(int), default=None, help="kernel and end-to-end batch sizes (quick: 1; full: 1,16)"
    )
    parser.add_argument(
        "--config", choices=tuple(CONFIGS), default="full", help="model whose shapes the kernel cases take"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="clip length that sets kernel shapes (quick: 0.5; full: 10)"
    )
    parser.add_argument(
        "--dilations", type=_csv(int), default=None, help="residual-unit dilations to time (quick: 1; full: 1,3,9)"
    )
    parser.add_argument(
        "--e2e-config", choices=tuple(CONFIGS), default=None, help="end-to-end model (quick: tiny; full: full)"
    )
    parser.add_argument("--e2e-seconds", type=float, default=None, help="end-to-end clip length (quick: 2; full: 10)")
    parser.add_argument("--e2e-batches", type=_csv(int), default=None, help="default: --batches")
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="also time torch.compile of transformers (default in full mode)",
    )
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-onnx", dest="onnx", action="store_false",
                        help="leave ONNX Runtime (the exported graphs, same weights) out of the end-to-end table")
    parser.add_argument("--no-kernels", action="store_true", help="skip the kernel micro-benchmarks")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end comparison")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--plots-dir", type=Path, default=DEFAULT_PLOTS)
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON path (default: <results-dir>/<machine>[-quick].json)"
    )
    parser.add_argument(
        "--copy-mb",
        type=int,
        default=None,
        help="bandwidth-ceiling copy size (default: several times the last-level cache)",
    )
    parser.add_argument(
        "--matmul-n", type=int, default=None, help="compute-ceiling matmul size (default: 8192 GPU, 1024/2048 CPU)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch and native kernels (default: torch's); 1 resists preemption on shared machines",
    )
    parser.add_argument(
        "--cpu-malloc",
        choices=("both", "reuse", "default"),
        default="both",
        help="glibc malloc mode on CPU (xcodec_fast.cpu_malloc): 'both' times end to end first in the "
        "process's default mode, then switches to reuse for the kernels and a second end-to-end pass",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines")


def default_dtypes(mode: str) -> list[str]:
    """The mode's dtypes; on a CPU without bf16 instructions fp32 only: there bf16 is fp32 in disguise
    (no bf16 path is offered) and eager's bf16 convs crawl (8.9 s for one residual unit at
    64 x 160000 on an AVX2 EPYC Zen 3, against 0.2 s in fp32)."""
    dtypes = _csv(str)(MODES[mode]["dtypes"])
    if mode == "full-cpu" and hardware.bf16_instructions("cpu") is None:
        dtypes = [d for d in dtypes if d != "bfloat16"]
    return dtypes


def _settings(args: argparse.Namespace) -> dict:
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    mode = "quick" if args.quick else "full" if on_cuda else "full-cpu"
    defaults = MODES[mode]
    batches = args.batches or _csv(int)(defaults["batches"])
    return {
        "mode": mode,
        "kernel_config": args.config,
        "kernel_seconds": args.seconds if args.seconds is not None else defaults["seconds"],
        "batches": batches,
        "dtypes": args.dtypes or default_dtypes(mode),
        "dilations": args.dilations or _csv(int)(defaults["dilations"]),
        "ops": args.ops,
        "e2e_config": args.e2e_config or defaults["e2e_config"],
        "e2e_seconds": args.e2e_seconds if args.e2e_seconds is not None else defaults["e2e_seconds"],
        "e2e_batches": args.e2e_batches or batches,
        "compile": defaults["compile"] if args.compile is None else args.compile,
        "cpu_malloc": args.cpu_malloc,
        "seed": args.seed,
    }


def _is_standard(args: argparse.Namespace, settings: dict) -> bool:
    """A run with the mode's own workload, comparable across machines: only those reach the README."""
    defaults = MODES[settings["mode"]]
    return (
        not (args.no_kernels or args.no_e2e or settings["ops"])
        and settings["kernel_config"] == "full"
        and settings["kernel_seconds"] == defaults["seconds"]
        and settings["batches"] == _csv(int)(defaults["batches"])
        and settings["e2e_batches"] == settings["batches"]
        and settings["dtypes"] == default_dtypes(settings["mode"])
        and settings["dilations"] == _csv(int)(defaults["dilations"])
        and settings["e2e_config"] == defaults["e2e_config"]
        and settings["e2e_seconds"] == defaults["e2e_seconds"]
        and settings["compile"] == defaults["compile"]
        and settings["cpu_malloc"] == "both"
        and set(args.backends) == set(ops.BACKENDS)
    )


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch")
    return torch.device(choice)


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for name in settings["dtypes"]:
        if name not in kernels.DTYPES:
            raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(kernels.DTYPES)}")
    unknown = [b for b in args.backends if b not in ops.BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(ops.BACKENDS)}")
    if settings["ops"] and set(settings["ops"]) - set(cases.OPS):
        raise ValueError(
            f"unknown op(s) {sorted(set(settings['ops']) - set(cases.OPS))}; choose from {', '.join(cases.OPS)}"
        )
    device = _device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # before machine_info, which records it
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    quick = settings["mode"] == "quick"
    policy = timing.QUICK if quick else timing.FULL
    info = machine.machine_info(device)
    # Eager is the baseline every ratio divides by: it always runs, and first.
    backends = kernels.backend_status(["eager"] + [b for b in args.backends if b != "eager"], device)
    result = {
        "schema": SCHEMA,
        "mode": settings["mode"],
        "standard": _is_standard(args, settings),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "versions": machine.versions(),
        "git": machine.git_state(),
        "device": str(device),
        "settings": {
            **settings,
            "timing": vars(policy),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "counting": "bytes: compulsory traffic (inputs read once, outputs written once); FLOPs: reference algorithm, sin = 1",
        },
        "backends": backends,
    }
    for name, status in backends.items():
        log(f"backend {name}: {'yes' if status['available'] else 'no'} ({status['reason']})")

    def end_to_end(cpu_malloc: str | None) -> dict:
        config = CONFIGS[settings["e2e_config"]]()
        log(
            f"end to end: {settings['e2e_config']} config, {settings['e2e_seconds']} s clips, batches {settings['e2e_batches']}"
            + (f", CPU malloc {cpu_malloc}" if cpu_malloc else "")
            + " ..."
        )
        e2e_policy = (
            timing.Policy(warmup=1, min_reps=3, max_reps=5, budget_s=3.0)
            if quick
            else timing.Policy(warmup=2, min_reps=5, max_reps=20, budget_s=20.0)
        )
        return e2e.run_end_to_end(
            config,
            settings["e2e_config"],
            settings["e2e_seconds"],
            settings["e2e_batches"],
            backends,
            device,
            e2e_policy,
            settings["compile"],
            seed=settings["seed"],
            log=log,
            compile_skip_reason=(
                "--no-compile given" if args.compile is False else "off by default in quick mode; --compile adds it"
            ),
            cpu_malloc=cpu_malloc,
            onnx_runtime=args.onnx,
        )

    # The default mode can only be measured before the switch to reuse (which cannot be undone
    # exactly): on CPU its end-to-end pass runs first, in the process as it started.
    sections = []
    on_cpu = device.type == "cpu"
    if on_cpu and args.cpu_malloc in ("both", "default") and cpu_malloc.mode() != "default":
        raise ValueError("--cpu-malloc default/both needs a process whose malloc is still in its default mode")
    if not args.no_e2e and on_cpu and args.cpu_malloc in ("both", "default"):
        sections.append(end_to_end("default"))
    if on_cpu and args.cpu_malloc in ("both", "reuse") and not cpu_malloc.reuse_freed_memory():
        log(f"CPU malloc stays in its default mode: {cpu_malloc.mode()}")
    result["settings"]["cpu_malloc_kernels"] = cpu_malloc.mode() if on_cpu else None

    if not args.no_kernels:
        log("roofline ceilings ...")
        copy_bytes, matmul_n = kernels.ceiling_sizes(device, quick)
        copy_bytes = args.copy_mb << 20 if args.copy_mb else copy_bytes
        result["roofline"] = kernels.measure_ceilings(
            device, settings["dtypes"], copy_bytes, args.matmul_n or matmul_n, policy
        )
        log(
            f"  copy {result['roofline']['bandwidth_gbps']:.1f} GB/s, matmul {result['roofline']['matmul_tflops']} TFLOP/s"
        )
        config = CONFIGS[settings["kernel_config"]]()
        num_samples = int(round(settings["kernel_seconds"] * config.sample_rate))
        sites = cases.model_sites(config, num_samples, dilations=settings["dilations"])
        if settings["ops"]:
            sites = [s for s in sites if s.op in settings["ops"]]
        memory_budget = torch.cuda.get_device_properties(device).total_memory // 8 if device.type == "cuda" else 1 << 30
        log(f"kernels: {len(sites)} sites x batches {settings['batches']} x {settings['dtypes']} ...")
        result["kernels"] = kernels.run_kernels(
            sites,
            settings["batches"],
            settings["dtypes"],
            backends,
            device,
            result["roofline"],
            policy,
            info["cache_bytes"],
            memory_budget,
            seed=settings["seed"],
            log=log,
        )
    if not args.no_e2e and (not on_cpu or args.cpu_malloc != "default"):
        sections.append(end_to_end(cpu_malloc.mode() if on_cpu else None))
    if sections:
        merged = sections[0]
        for extra in sections[1:]:
            merged["results"] += extra["results"]
            merged["skipped"] += [s for s in extra["skipped"] if s not in merged["skipped"]]
        result["end_to_end"] = merged

    suffix = ("-quick" if quick else "") + ("" if result["standard"] else "-custom")
    output = args.output or Path(args.results_dir) / f"{info['id']}{suffix}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    log(f"wrote {output}")
    if not args.no_plots:
        detail = Path(args.plots_dir) / f"{output.stem}.md"
        detail.parent.mkdir(parents=True, exist_ok=True)
        detail.write_text(report.machine_line(result) + "\n\n" + report.kernel_detail(result) + "\n")
        try:
            from .plots import plot_result

            for path in plot_result(result, args.plots_dir):
                log(f"wrote {path}")
        except ImportError as exc:  # matplotlib is an optional extra
            log(f"plots skipped: {exc}")
    print(report.summary_markdown(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xcodec-fast bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:  # the CLI checks this in cmd_bench
        parser.error(f"--threads must be a positive integer, got {args.threads}")
    return run(args)
