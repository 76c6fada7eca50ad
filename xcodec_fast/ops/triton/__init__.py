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
    """Whether the backend runs on ``device``: the device exists, and a probe launch of its kernel
    families (Snake, the fused residual unit's dots, RVQ encode) builds and gives eager's values.
    The registry caches the answer per device, so the probe runs once per process."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        where = f"Triton {triton.__version__} on {torch.cuda.get_device_name(device)}"
    elif device.type == "cpu" and INTERPRETING:
        where = f"Triton {triton.__version__} interpreter (TRITON_INTERPRET=1, slow: for tests)"
    else:
        return False, f"Triton runs on CUDA tensors (or on CPU only under TRITON_INTERPRET=1), not on {device.type}"
    failure = probe(device)
    if failure:
        return False, f"{where}: probe launch failed ({failure})"
    return True, where


def probe(device: torch.device) -> str | None:
    """Launch each kernel family once on tiny fp32 inputs at a real model's channel count and
    compare with eager; None when all agree, else what went wrong (a toolchain, driver or
    architecture problem shows here instead of inside a user's encode)."""
    from .. import eager
    from .residual_unit import residual_unit_op
    from .rvq_encode import rvq_encode_op
    from .snake import snake_op

    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    x, alpha = rand(1, 64, 70), rand(64).abs() + 0.5
    w1, b1, w2, b2 = rand(64, 64, 7, scale=0.05), rand(64, scale=0.1), rand(64, 64, 1, scale=0.1), rand(64, scale=0.1)
    # frames near chosen codewords: the nearest one is never a float near tie
    codebooks = rand(1, 64, 64)
    chosen = torch.randint(0, 64, (70,), generator=g).to(device)
    frames = (codebooks[0, chosen].t() + 0.01 * rand(64, 70)).unsqueeze(0)
    norms = codebooks.pow(2).sum(-1)
    checks = (
        ("snake", lambda: snake_op(x, alpha), lambda: eager.snake(x, alpha)),
        ("residual_unit", lambda: residual_unit_op(x, alpha, w1, b1, 3, alpha, w2, b2),
         lambda: eager.residual_unit(x, alpha, w1, b1, 3, alpha, w2, b2)),
        ("rvq_encode", lambda: rvq_encode_op(frames, codebooks, norms, 1).float(), lambda: chosen.float().view(1, 1, -1)),
    )
    try:
        with torch.no_grad(), _ieee_convs():
            for name, fast, reference in checks:
                got, want = fast(), reference()
                err = (got - want).abs().max().item() / max(want.abs().max().item(), 1.0)
                if not err <= 1e-4:  # also catches NaN
                    return f"{name} differs from eager by {err:.2g} of scale"
    except Exception as exc:  # compiler, driver, out of resources...
        from ...errors import short_error

        return short_error(exc)
    return None


class _ieee_convs:
    """The probe compares fp32 values with eager: no TF32 on either side while it runs."""

    def __enter__(self):
        self.saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cudnn.allow_tf32 = self.saved
