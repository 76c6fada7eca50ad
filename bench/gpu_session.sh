#!/usr/bin/env bash
# One call on a lent GPU machine (no network there): GPU tests + full benchmark, results into $OUT.
#   Prepare here (with network), once:  bash bench/gpu_session.sh --prepare
#   Then run there, carrying the wheels: device run, carry [".gpu_wheels"], command "bash bench/gpu_session.sh"
# The machine's image has torch, triton, transformers, pyarrow, matplotlib and pytest; the audio
# libraries come from .gpu_wheels (gitignored).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 -d .gpu_wheels soundfile soxr cffi pycparser datasets
    ls .gpu_wheels
    exit 0
fi
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
python3 -m pip install --quiet --no-index --find-links .gpu_wheels soundfile soxr 2>&1 | tail -2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
# 1. every test, natively on CUDA (kernel tests switch to full sizes when CUDA is present)
timeout 420 python3 -m pytest -q -x -ra tests/ops tests/test_triton_end_to_end.py tests/test_cuda_graphs.py \
    tests/test_model_oracle.py 2>&1 | tail -40 | tee "$OUT/pytest-gpu.txt"
# 2. the full benchmark (kernels + end to end vs transformers and torch.compile)
timeout 900 python3 bench/run.py --results-dir "$OUT" --plots-dir "$OUT" 2>&1 | tail -60 | tee "$OUT/bench.txt"
ls -la "$OUT"
