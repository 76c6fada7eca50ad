#!/usr/bin/env bash
# The one-call GPU check: everything a first GPU run must learn, in one device call of at most
# 7 minutes (420 s) wall time on an H100/H200 (no network there), most important first. Each part
# stops itself at its own time budget, so a slow part cannot eat the next one's; a part that runs
# out still leaves its log. At most six files come back, in $OUT (default bench/out/gpu):
#   gpu.txt        card, driver, versions, commit                              (setup,     30 s)
#   session.log    every part's output, the tests' verdicts first               (all)
#   kernels.json   Triton vs eager kernels at the real sites, batch 16          (kernels,   60 s)
#   e2e-b1.json    end to end, 10 s clip, batch 1: vs transformers eager with   (e2e-b1,    60 s)
#                  torch's defaults (TF32 convs) and torch.compile
#   e2e-b16.json   the same at batch 16, without torch.compile (its compile    (e2e-b16,   50 s)
#                  time would not fit; `more` times it)
#   tokenize.json  tokenizer audio-hours per GPU-hour over 10 min of audio,     (tokenize,  60 s)
#                  padded batches, then length buckets replayed from CUDA graphs
# Before them, in session.log: the GPU tests (every Triton op at the real model's shapes against
# eager: fp32-IEEE codes equal, TF32/bf16/fp16 agreement, CUDA-graph capture and replay, the
# sync-free check, fixed-shape padded encode, the whole model end to end)    (tests,    160 s)
#
#   run(command="bash bench/gpu_session.sh", carry=[".gpu_wheels"], timeout_s=480)
#
# Here, with network, once before (wheels for soundfile/soxr, which the image lacks; only the
# tokenizer part needs them):   bash bench/gpu_session.sh --prepare
# Commit first: the call sends the working tree, and the copy there has no .git, so `merge` fills
# in the commit. Afterwards, here: copy the files out of files_at, then
#   bash bench/gpu_session.sh merge <files_at>/kernels.json <files_at>/e2e-b1.json <files_at>/e2e-b16.json
#       -> bench/results/gpu-<device>.json (render.py marks it partial: batch 16 kernels only)
#   cp <files_at>/tokenize.json bench/results/tokenize-gpu-<device>.json; python bench/render.py
# A second call, only for what the first could not fit (all dtypes and batches of the kernel
# suite, every dilation; batch 16 with torch.compile):   run(command="bash bench/gpu_session.sh more", carry=[".gpu_wheels"])
#
# DRY_RUN=1 prints each part's command and time budget, and the total (no GPU needed).
set -uo pipefail
export GPU_SESSION_CWD="$PWD"  # merge reads its paths from where it was called
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WHEELS=(soundfile==0.14.0 soxr==1.1.0 cffi==2.1.1 pycparser==3.12)  # soundfile needs cffi, cffi pycparser
# the Triton ops and the model on CUDA (the CPU-only native and tuning tests stay in CI)
GPU_TESTS=(tests/ops/test_snake.py tests/ops/test_residual_unit.py tests/ops/test_conv.py tests/ops/test_rvq.py
           tests/ops/test_triton_backend.py tests/ops/test_linear.py
           tests/ops/test_compile_dispatch.py tests/test_triton_end_to_end.py tests/test_cuda_graphs.py
           tests/test_sync_free.py tests/test_fixed_shape_encode.py tests/test_long_decode.py tests/test_model_oracle.py)
# part name, seconds; in the order they run
PARTS=(setup:30 tests:160 kernels:60 e2e-b1:60 e2e-b16:50 tokenize:60)

usage() {
    sed -n '2,/^set -uo/p' "$0" | sed '$d' >&2
    echo "usage: bash bench/gpu_session.sh [more] | --prepare | merge [-o OUT.json] [--commit SHA] PART.json..." >&2
    exit 2
}

phase="${1:-check}"
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
from xcodec_fast.benchmark import suite as bench  # noqa: E402
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
check|more) ;;
*) usage ;;
esac

# ---- on the GPU machine ----------------------------------------------------------------------
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout itself: no pip install of the package
log="$OUT/session.log"
: >"$log"
say() { echo "gpu_session: $*" | tee -a "$log"; }

# part NAME SECONDS CMD...: run CMD under its own budget, output into the log (kept if killed).
part() {
    local name="$1" budget="$2"
    shift 2
    say "part $name: budget ${budget} s: $*"
    [ -n "${DRY_RUN:-}" ] && return 0
    local start=$SECONDS
    timeout -k 5 "$budget" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && say "part $name stopped at its budget (${budget} s)"
    say "part $name: exit $rc after $((SECONDS - start)) s"
    return 0
}

budget() {  # budget NAME -> seconds from PARTS
    local item
    for item in "${PARTS[@]}"; do [ "${item%%:*}" = "$1" ] && echo "${item#*:}"; done
}

total=0
for item in "${PARTS[@]}"; do total=$((total + ${item#*:})); done
say "plan: ${PARTS[*]} (name:seconds); total ${total} s"

setup() {
    if ls .gpu_wheels/*.whl >/dev/null 2>&1; then
        # --no-index --no-deps: exactly the carried wheels, into their own folder (the image is left alone)
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu_session_site .gpu_wheels/*.whl || echo "wheel install failed (the tokenizer part needs soundfile)"
    else
        echo "no .gpu_wheels (carry it: the tokenizer part needs soundfile)"
    fi
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown: no .git here)"
        PYTHONPATH="/tmp/gpu_session_site:$PYTHONPATH" "$PYTHON" -c "import sys, torch, triton, transformers, xcodec_fast; \
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', \
triton.__version__, 'transformers', transformers.__version__, 'xcodec_fast', xcodec_fast.__version__); \
import xcodec_fast.ops as ops; print('triton backend:', ops.availability('triton', 'cuda')); \
sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
    } >"$OUT/gpu.txt" 2>&1
    local rc=$?
    cat "$OUT/gpu.txt"
    return $rc
}

if [ "$phase" = more ]; then
    part kernels-all 300 "$PYTHON" bench/run.py --no-e2e --device cuda --no-plots --output "$OUT/kernels-all.json"
    part e2e-b16-compile 120 "$PYTHON" bench/run.py --no-kernels --device cuda --no-plots --e2e-batches 16 \
        --output "$OUT/e2e-b16-compile.json"
    exit 0
fi
part setup "$(budget setup)" setup
export PYTHONPATH="/tmp/gpu_session_site:$PYTHONPATH"
# -x off, --maxfail: a broken op must not hide the others; -ra lists every failure at the end.
# The per-op files' native cases run on CPU tensors: CI has them, the GPU minutes are for CUDA.
part tests "$(budget tests)" "$PYTHON" -m pytest -q -ra --maxfail=40 --durations=15 -p no:cacheprovider \
    -k "not native" "${GPU_TESTS[@]}"
part kernels "$(budget kernels)" "$PYTHON" bench/run.py --no-e2e --device cuda --no-plots --batches 16 --dilations 1 \
    --output "$OUT/kernels.json"
part e2e-b1 "$(budget e2e-b1)" "$PYTHON" bench/run.py --no-kernels --device cuda --no-plots --e2e-batches 1 \
    --output "$OUT/e2e-b1.json"
part e2e-b16 "$(budget e2e-b16)" "$PYTHON" bench/run.py --no-kernels --device cuda --no-plots --e2e-batches 16 \
    --no-compile --output "$OUT/e2e-b16.json"
part tokenize "$(budget tokenize)" "$PYTHON" -m xcodec_fast.tokenize.bench --device cuda --tiny-seconds 0 \
    --full-seconds 600 --threads 1 --batching padded cuda-graphs --output "$OUT/tokenize.json"
files=$(find "$OUT" -type f | wc -l)
ls -la "$OUT" | tee -a "$log"
[ "$files" -le 6 ] || say "warning: $files files in \$OUT, more than the six this plan allows"
say "done after ${SECONDS} s of the ${total} s planned"
