#!/usr/bin/env bash
# GPU tests and the full benchmark on a lent GPU machine (H100/H200, no network there), one phase
# per device call: a call may run at most 600 s and bring back at most 8 files from $OUT, so each
# phase stops itself after PHASE_LIMIT seconds in all (default 480, setup included) and writes
# 2-3 files. Limits: /work/.library/device/README.md and KINDS.md.
#
# 0. Here, with network, once (wheels for soundfile/soxr, which the image lacks; no phase below
#    imports them, so a call without them only warns):   bash bench/gpu_session.sh --prepare
#    Commit first: the call sends the working tree as it is (anyone's uncommitted edits too), and
#    the copy there has no .git, so the result's git commit is filled in by `merge` below.
# 1. Device calls, back to back (a machine stays warm 30 s after a call; a fresh start costs 1-2
#    minutes of the session's 30 minutes of device time; check `status` budget_left_s first):
#      run(command="bash bench/gpu_session.sh tests",   carry=[".gpu_wheels"], timeout_s=600)
#      run(command="bash bench/gpu_session.sh kernels", carry=[".gpu_wheels"], timeout_s=600)
#      run(command="bash bench/gpu_session.sh e2e",     carry=[".gpu_wheels"], timeout_s=600)
#    Each ends within PHASE_LIMIT + 10 s = 490 s by construction (wall times not measured yet; a
#    phase killed at its limit still returns its log). Files back per call:
#      tests   -> gpu.txt tests.log
#      kernels -> gpu.txt kernels.log kernels.json   (kernel micro-benchmarks + roofline, --no-e2e)
#      e2e     -> gpu.txt e2e.log e2e.json           (end to end vs transformers + torch.compile, --no-kernels)
#    If a phase runs out of time, split it into these instead (each its own call):
#      tests-ops, tests-model        (tests/ops; the end-to-end, CUDA-graph and oracle tests)
#      kernels-fp32, kernels-half    (--dtypes float32; --dtypes bfloat16,float16)
#      e2e-b1, e2e-b16               (--e2e-batches 1; --e2e-batches 16)
#    Extra arguments go to pytest (tests*) or bench/run.py (kernels*, e2e*); any of those
#    changes the workload, so `merge` then marks the result -custom and render.py leaves it out.
# 2. Here, afterwards: copy each call's files out of its files_at folder before the next call
#    (e.g. into bench/out/gpu/, renamed per phase), then
#      bash bench/gpu_session.sh merge bench/out/gpu/kernels.json bench/out/gpu/e2e.json
#        -> bench/results/gpu-<device>.json: the full-mode result, "standard" when the parts add
#           up to the full workload (render.py skips partial runs; this puts them back together)
#      python bench/render.py          # README performance section
#      python bench/plot.py bench/results/gpu-*.json   # PNGs into bench/out/ (none are made there)
#
# DRY_RUN=1 prints each phase's commands instead of running them (no GPU needed).
set -uo pipefail
export GPU_SESSION_CWD="$PWD"  # merge reads its paths from where it was called
cd "$(dirname "$0")/.."
PHASE_LIMIT="${PHASE_LIMIT:-480}"
PYTHON="${PYTHON:-python3}"
WHEELS=(soundfile==0.14.0 soxr==1.1.0 cffi==2.1.1 pycparser==3.12)  # soundfile needs cffi, cffi pycparser
TESTS_OPS=(tests/ops)
TESTS_MODEL=(tests/test_triton_end_to_end.py tests/test_cuda_graphs.py tests/test_model_oracle.py)

usage() {
    sed -n '2,/^set -uo/p' "$0" | sed '$d' >&2
    echo "usage: bash bench/gpu_session.sh --prepare | merge [-o OUT.json] [--commit SHA] PART.json... |" \
        "tests|tests-ops|tests-model|kernels|kernels-fp32|kernels-half|e2e|e2e-b1|e2e-b16 [ARGS...]" >&2
    exit 2
}

phase="${1:-}"
[ $# -gt 0 ] && shift
case "$phase" in
--prepare)
    # The device README's recipe: exact versions, no dependency resolution, CPython 3.12 wheels
    # for the manylinux levels pip matches exactly; one version of each (two stop the install).
    rm -rf .gpu_wheels
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu_wheels "${WHEELS[@]}" || exit
    ls -l .gpu_wheels
    exit 0
    ;;
merge)
    # Local, no GPU: kernel and end-to-end parts of one machine's run -> one result JSON.
    exec "$PYTHON" - "$@" <<'PY'
import argparse, json, os, subprocess, sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))
from xcodec_fast import benchmark as bench  # noqa: E402
from xcodec_fast.benchmark.kernels import DTYPES  # noqa: E402

p = argparse.ArgumentParser(prog="gpu_session.sh merge", description="merge partial bench/run.py results")
p.add_argument("parts", nargs="+", type=Path)
p.add_argument("-o", "--output", type=Path, help="default: bench/results/<machine>[-custom].json")
p.add_argument("--commit", help="commit the device ran (default: this checkout's HEAD when the parts have none)")
a = p.parse_args()
here = Path(os.environ.get("GPU_SESSION_CWD", "."))
parts = [json.loads((here / path).read_text()) for path in a.parts]


def same(key_fn, what, among):
    values = {json.dumps(key_fn(r), sort_keys=True) for r in among}
    if len(values) > 1:
        sys.exit(f"merge: the parts differ in {what}: {sorted(values)}")


same(lambda r: (r["schema"], r["mode"], r["device"], r["machine"]["id"]), "schema/mode/device/machine", parts)
kparts = [r for r in parts if "kernels" in r]
eparts = [r for r in parts if "end_to_end" in r]
if len(kparts) + len(eparts) < len(parts) or set(map(id, kparts)) & set(map(id, eparts)):
    sys.exit("merge: each part must hold either kernels (--no-e2e) or end_to_end (--no-kernels)")
for r in parts[1:]:
    for key in ("versions", "git", "backends"):
        if r[key] != parts[0][key]:
            print(f"merge: warning: the parts differ in {key}", file=sys.stderr)
result = {k: v for k, v in (kparts or parts)[0].items() if k not in ("kernels", "roofline", "end_to_end")}
result["created"] = min(r["created"] for r in parts)
settings = result["settings"] = dict(result["settings"])
if kparts:
    same(lambda r: [r["settings"][k] for k in ("kernel_config", "kernel_seconds", "batches", "dilations", "ops")],
         "kernel settings", kparts)
    records = [rec for r in kparts for rec in r["kernels"]]
    keys = [(x["op"], x["label"], x["batch"], x["dtype"], x["backend"]) for x in records]
    if len(set(keys)) < len(keys):
        sys.exit("merge: two parts time the same kernel case")
    result["roofline"] = roof = json.loads(json.dumps(kparts[0]["roofline"]))  # copy and bandwidth: the first part's
    for r in kparts[1:]:
        for field in ("matmul_tflops", "matmul_tf32", "errors"):
            for k, v in r["roofline"].get(field, {}).items():
                roof.setdefault(field, {}).setdefault(k, v)
    settings["dtypes"] = [d for d in DTYPES if any(d in r["settings"]["dtypes"] for r in kparts)]
    sites = {}  # run.py's order: site, batch, dtype (backends in order within a case)
    for x in records:
        sites.setdefault((x["op"], x["label"]), len(sites))
    batches = settings["batches"]
    records.sort(key=lambda x: (sites[x["op"], x["label"]], batches.index(x["batch"]), list(DTYPES).index(x["dtype"])))
    result["kernels"] = records
if eparts:
    same(lambda r: [r["settings"][k] for k in ("e2e_config", "e2e_seconds", "compile")], "end-to-end settings", eparts)
    same(lambda r: [r["end_to_end"].get(k) for k in ("config", "clip_seconds", "sample_rate", "dtype")],
         "end-to-end section", eparts)
    e2e = {k: v for k, v in eparts[0]["end_to_end"].items()}
    e2e["results"], e2e["skipped"], e2e["flops"] = [], [], {}
    for r in eparts:
        section = r["end_to_end"]
        e2e["results"] += section.get("results", [])
        e2e["skipped"] += [s for s in section.get("skipped", []) if s not in e2e["skipped"]]
        e2e["flops"].update(section.get("flops", {}))
    keys = [(x["impl"], x["stage"], x["batch"], x.get("cpu_malloc")) for x in e2e["results"]]
    if len(set(keys)) < len(keys):
        sys.exit("merge: two parts time the same end-to-end case")
    for k in ("e2e_config", "e2e_seconds", "compile"):
        settings[k] = eparts[0]["settings"][k]
    settings["e2e_batches"] = sorted({b for r in eparts for b in r["settings"]["e2e_batches"]})
    result["end_to_end"] = e2e
if a.commit or result["git"].get("commit") is None:
    if a.commit:
        result["git"] = {"commit": a.commit, "dirty": None}
    else:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        result["git"] = {"commit": head, "dirty": bool(dirty.stdout.strip())}
        print(f"merge: the parts record no commit; assuming this checkout's HEAD {head} (--commit to override)",
              file=sys.stderr)
parser = argparse.ArgumentParser()
bench.add_arguments(parser)
args = parser.parse_args([])
args.no_kernels, args.no_e2e, args.backends = not kparts, not eparts, list(result["backends"])
result["standard"] = bench._is_standard(args, settings)
suffix = ("-quick" if result["mode"] == "quick" else "") + ("" if result["standard"] else "-custom")
output = here / a.output if a.output else bench.DEFAULT_RESULTS / f"{result['machine']['id']}{suffix}.json"
output.parent.mkdir(parents=True, exist_ok=True)
output.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
print(f"wrote {output} ({'standard' if result['standard'] else 'custom: render.py leaves it out'}; "
      f"{len(result.get('kernels', []))} kernel records, {len(result.get('end_to_end', {}).get('results', []))} end-to-end)")
PY
    ;;
tests) cmd=(-m pytest "${TESTS_OPS[@]}" "${TESTS_MODEL[@]}") ;;
tests-ops) cmd=(-m pytest "${TESTS_OPS[@]}") ;;
tests-model) cmd=(-m pytest "${TESTS_MODEL[@]}") ;;
kernels) cmd=(bench/run.py --no-e2e) ;;
kernels-fp32) cmd=(bench/run.py --no-e2e --dtypes float32) ;;
kernels-half) cmd=(bench/run.py --no-e2e --dtypes bfloat16,float16) ;;
e2e) cmd=(bench/run.py --no-kernels) ;;
e2e-b1) cmd=(bench/run.py --no-kernels --e2e-batches 1) ;;
e2e-b16) cmd=(bench/run.py --no-kernels --e2e-batches 16) ;;
*) usage ;;
esac

# ---- a phase on the GPU machine -----------------------------------------------------------------
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout itself: no pip install of the package
log="$OUT/$phase.log"
: >"$log"

# Runs "$@" under what is left of the phase's time, its output into the log (kept if it is killed).
timed() {
    local left=$((PHASE_LIMIT - SECONDS))
    if [ "$left" -lt 30 ]; then
        echo "gpu_session: ${left}s left of ${PHASE_LIMIT}s, not starting: $*" | tee -a "$log"
        return 124
    fi
    echo "+ timeout -k 10 $left $*" | tee -a "$log"
    [ -n "${DRY_RUN:-}" ] && return 0
    timeout -k 10 "$left" "$@" 2>&1 | tee -a "$log"
    local rc=$?
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "gpu_session: stopped at the phase limit (${PHASE_LIMIT}s)" | tee -a "$log"
    return "$rc"
}

if ls .gpu_wheels/*.whl >/dev/null 2>&1; then
    # --no-index --no-deps: exactly the carried wheels, into their own folder (the image is left alone)
    if timed "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_session_site .gpu_wheels/*.whl; then
        export PYTHONPATH="/tmp/gpu_session_site:$PYTHONPATH"
    else
        echo "gpu_session: warning: wheel install failed (no phase needs soundfile/soxr)" | tee -a "$log"
    fi
else
    echo "gpu_session: no .gpu_wheels (carry it for soundfile/soxr; no phase needs them)" | tee -a "$log"
fi
if [ -z "${DRY_RUN:-}" ]; then
    {
        timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown: no .git here)"
        timeout 120 "$PYTHON" -c "import sys, torch, triton, transformers, xcodec_fast; print('python', sys.version.split()[0], \
'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'transformers', \
transformers.__version__, 'xcodec_fast', xcodec_fast.__version__, 'from', xcodec_fast.__file__); \
sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
    } 2>&1 | tee "$OUT/gpu.txt" | tee -a "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "gpu_session: environment check failed" | tee -a "$log"; exit 1; }
fi

case "$phase" in
tests*)
    # -v: a phase killed at its limit still shows how far it got; --timeout needs pytest-timeout (in the image).
    extra=(-v -ra --durations=30 --maxfail=25)
    "$PYTHON" -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout=300)
    timed "$PYTHON" "${cmd[@]}" "${extra[@]}" "$@"
    ;;
*)
    # --device cuda: never a CPU run by mistake; --no-plots: only the JSON (plots are redrawn here from it).
    timed "$PYTHON" "${cmd[@]}" --device cuda --no-plots --output "$OUT/$phase.json" "$@"
    ;;
esac
rc=$?
files=$(find "$OUT" -type f | wc -l)
ls -la "$OUT" | tee -a "$log"
[ "$files" -le 8 ] || echo "gpu_session: warning: $files files in \$OUT; only 8 come back" | tee -a "$log"
echo "gpu_session: phase $phase exit $rc after ${SECONDS}s" | tee -a "$log"
exit "$rc"
