import os

import torch

# Triton reads TRITON_INTERPRET when kernels are decorated: set it before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# In-process CLI tests must not switch this process's malloc (tests/test_cpu_malloc.py checks that
# the command line does, in subprocesses).
os.environ.setdefault("XCODEC_FAST_CPU_MALLOC", "default")

# Measured dispatch picks by timing, which would make results depend on this machine's load: the
# suite runs each native op's untuned default, and tests/ops/test_tuning.py turns measuring on
# with a dispatch table of its own.
os.environ.setdefault("XCODEC_FAST_TUNE", "off")

# One torch thread per test process, for every test file: CI runs one pytest-xdist worker per core,
# and more threads than cores make OpenMP's waiting threads spin against each other (tiny models
# ran 10-50x slower oversubscribed).
torch.set_num_threads(1)

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
