"""Triton backend: one module per fused op; importing this package registers them.

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before this import
(Triton's interpreter, used by the tests on machines without a GPU).
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import torch
import triton  # noqa: F401  (ImportError here marks the backend unavailable)

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")


def availability(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        return True, f"Triton {triton.__version__} on {torch.cuda.get_device_name(device)}"
    if device.type == "cpu" and INTERPRETING:
        return True, f"Triton {triton.__version__} interpreter (TRITON_INTERPRET=1, slow: for tests)"
    return False, f"Triton runs on CUDA tensors (or on CPU only under TRITON_INTERPRET=1), not on {device.type}"
