"""What the op tests share: the backends an op's tests run on, and the inputs of each backend's cases.

An op's parity tests (tests/ops/test_<op>.py) are parametrized over the backends that implement
it, eager being the reference. A backend that cannot run here is skipped with the package's own
reason (tests/ops/conftest.py), so an environment with only one of them (.ci/triton36 has no
native build) still runs the other's cases.

The native and the Triton cases were written apart and each keeps the inputs its bounds were set
on: native's run on CPU at the model's sizes with alpha down to 0.05; Triton's stay tiny under the
interpreter (with CUDA they add the real sizes) with alpha in the trained range.
"""

import math

import pytest
import torch

from xcodec_fast import ops
from xcodec_fast.ops import tuning

CUDA = torch.cuda.is_available()
# Triton runs CUDA tensors, or CPU tensors under its interpreter (tests/conftest.py); native, CPU ones.
DEVICES = {"native": torch.device("cpu"), "triton": torch.device("cuda" if CUDA else "cpu")}
TRITON_DEVICE = DEVICES["triton"]
# numpy, which runs Triton's interpreter, has no bf16: only a GPU runs Triton's bf16 cases.
TRITON_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run on its test device here, or None when it can."""
    ok, reason = ops.availability(backend, DEVICES[backend])
    return None if ok else f"{backend} backend unavailable: {reason}"


def backend_params(backend: str, cases=((),)) -> list:
    """One pytest param (backend, *case) per case. A backend that cannot run here is skipped when
    its test starts (tests/ops/conftest.py), not at collection: deselecting its cases (-k "not
    native") then never builds or probes it."""
    return [pytest.param(backend, *case, id="-".join([backend, *map(_id, case)])) for case in cases]


def _id(value) -> str:
    return str(value).removeprefix("torch.")


def run(backend: str, op: str, *args):
    """``op`` through the package's dispatch point, on ``backend``."""
    with ops.use_backend(backend):
        return getattr(ops, op)(*args)


def fp32_args(args):
    """The same (already rounded) inputs upcast to fp32: what eager is evaluated on as the reference."""
    return [a.float() if isinstance(a, torch.Tensor) else a for a in args]


def assert_item_alone_equals_item_in_a_zero_padded_batch(run, x, length):
    """The model zeroes frames past an item's length in a padded batch: ``run``'s frames of item 0
    there must be bit-equal to its result on the item alone (codes equal in padded batches),
    whatever its batch-mates hold."""
    alone = run(x[:1, :, :length])
    batch = x.clone()
    batch[0, :, length:] = 0
    assert torch.equal(run(batch)[:1, :, : alone.shape[-1]], alone)


# --- native's cases (CPU) ---


def measure_dispatch(tmp_path, monkeypatch, mode="auto"):
    """Measured dispatch on (``mode`` "retune": measure even sites a stored table has), with its
    table in ``tmp_path`` and no tuner left from other tests."""
    monkeypatch.setenv(tuning.MODE_ENV, mode)
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(tuning, "_tuners", {})


def assert_forced_residual_unit_runs(choice, implementation, args):
    """ops.residual_unit on native with ``choice`` forced returns ``implementation``'s result, and
    that differs from the default GEMM's (so the forcing is seen)."""
    from xcodec_fast.ops import native  # not at import: Triton-only runs never load the native backend

    with ops.use_backend("native"), tuning.forced("residual_unit", choice):
        forced = ops.residual_unit(*args)
    assert torch.equal(forced, implementation(*args))
    assert not torch.equal(forced, native.extension().residual_unit_gemm(*args))


def make_input(batch, channels, frames, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, generator=g) * 3
    alpha = torch.rand(channels, generator=g) * 2 + 0.05
    return x.to(dtype), alpha.to(dtype)


def dac_weights(in_channels, out_channels, kernel, seed=0, transpose=False):
    g = torch.Generator().manual_seed(seed)
    shape = (in_channels, out_channels, kernel) if transpose else (out_channels, in_channels, kernel)
    weight = torch.randn(shape, generator=g) / (in_channels * kernel) ** 0.5
    bias = torch.randn(out_channels, generator=g) * 0.1
    return weight, bias


def residual_args(batch, channels, frames, dilation, dtype=torch.float32):
    x, alpha1 = make_input(batch, channels, frames)
    _, alpha2 = make_input(1, channels, 1, seed=2)
    w1, b1 = dac_weights(channels, channels, 7, seed=3)
    w2, b2 = dac_weights(channels, channels, 1, seed=4)
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) else a for a in (x, alpha1, w1, b1, dilation, alpha2, w2, b2))


# --- Triton's cases (TRITON_DEVICE) ---


def snake_inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, t = shape
    x = (torch.randn(shape, generator=g) * 3).to(TRITON_DEVICE, dtype)
    h = torch.randn(shape, generator=g).to(TRITON_DEVICE, dtype)
    alpha = (torch.rand(c, generator=g) * 1.9 + 0.1).to(TRITON_DEVICE, dtype)  # trained α live around 0.1..2
    return x, h, alpha


def _rand(*shape, gen, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen) * scale).to(TRITON_DEVICE, dtype)


def _alpha(c, gen, dtype=torch.float32):
    return (0.3 + 2 * torch.rand(c, generator=gen)).to(TRITON_DEVICE, dtype)


def residual_inputs(c, t, dilation, dtype, seed=0, batch=2, bias=True):
    g = torch.Generator().manual_seed(seed)
    return (
        _rand(batch, c, t, gen=g, scale=2.0, dtype=dtype),
        _alpha(c, g, dtype),
        _rand(c, c, 7, gen=g, scale=1 / math.sqrt(7 * c), dtype=dtype),
        _rand(c, gen=g, scale=0.1, dtype=dtype) if bias else None,
        dilation,
        _alpha(c, g, dtype),
        _rand(c, c, 1, gen=g, scale=1 / math.sqrt(c), dtype=dtype),
        _rand(c, gen=g, scale=0.1, dtype=dtype) if bias else None,
    )


def down_inputs(c_in, c_out, t, stride, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    k = 2 * stride
    return (
        _rand(2, c_in, t, gen=g, scale=2.0, dtype=dtype),
        _alpha(c_in, g, dtype),
        _rand(c_out, c_in, k, gen=g, scale=1 / math.sqrt(k * c_in), dtype=dtype),
        _rand(c_out, gen=g, scale=0.1, dtype=dtype),
        stride,
        math.ceil(stride / 2),
    )


def up_inputs(c_in, c_out, t, stride, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (
        _rand(2, c_in, t, gen=g, scale=2.0, dtype=dtype),
        _alpha(c_in, g, dtype),
        _rand(c_in, c_out, 2 * stride, gen=g, scale=1 / math.sqrt(2 * c_in), dtype=dtype),
        _rand(c_out, gen=g, scale=0.1, dtype=dtype),
        stride,
        math.ceil(stride / 2),
        stride % 2,
    )


def codebooks(q, k, d, dtype, seed=0, device=TRITON_DEVICE):
    g = torch.Generator().manual_seed(seed)
    cb = torch.randn(q, k, d, generator=g).to(device, dtype)
    return cb, cb.float().pow(2).sum(-1)


def rvq_signal(b, d, t, cb, seed=1):
    """Frames near sums of codewords plus noise: what the encoder feeds the quantizer."""
    g = torch.Generator().manual_seed(seed)
    q, k, _ = cb.shape
    picks = torch.randint(0, k, (b, t, q), generator=g)
    x = sum(cb[i].float().cpu()[picks[..., i]] * 0.5**i for i in range(q))
    x = x + 0.3 * torch.randn(b, t, d, generator=g)
    return x.permute(0, 2, 1).to(cb.device, cb.dtype)


def random_codes(b, q, t, k, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (b, q, t), generator=g).to(TRITON_DEVICE)


def assert_snake_within_ulps(out, expected, alpha, ulps):
    """|out - expected| within ``ulps`` of out's dtype, of |expected| + 1/alpha (tests/tolerances.py)."""
    scale = expected.abs() + (1.0 / alpha.float()).reshape(1, -1, 1)
    err = (out.float() - expected).abs()
    bound = ulps * torch.finfo(out.dtype).eps * scale + 1e-30
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g}, worst ratio {(err / bound).max().item():.3g}"
