"""residual_unit (xcodec_fast.ops) on every backend that implements it, against eager.

Triton runs under its interpreter on CPU (tests/conftest.py), so its shapes stay tiny there; with
CUDA they include the model's real channel counts.
"""

import pytest
import torch

import tolerances
from op_cases import (
    CUDA,
    TRITON_DTYPES,
    backend_params,
    fp32_args,
    residual_args,
    residual_inputs,
    run,
)
from xcodec_fast import ops
from xcodec_fast.ops import eager

DILATIONS = (1, 3, 9)
# Up to 256 channels native's residual unit is a chunked implicit GEMM (see kernels/defaults.h):
# same math as eager in another summation order. 16001 frames span many chunks (halos at chunk
# edges); 300 channels take the oneDNN path.
NATIVE_SHAPES = [(1, 1, 1), (2, 3, 7), (1, 64, 321), (2, 96, 1601), (2, 64, 16001), (1, 3, 16001), (2, 1, 321),
                 (1, 300, 40)]
# (batch, channels, frames): odd sizes, channels not a power of two.
TRITON_SHAPES = [(2, 3, 1), (2, 3, 7), (2, 3, 321), (2, 16, 7), (2, 24, 7)] if not CUDA else [
    (2, 3, 321), (2, 24, 7), (2, 64, 1), (2, 64, 16001), (2, 100, 321), (2, 128, 4001), (2, 256, 4001), (2, 512, 1001)]
# Each backend's ways to run the op: native through dispatch (measured or default path); Triton
# through dispatch (which picks by channel count) and each of its two launch paths forced.
TRITON_PATHS = ("fused", "two_kernel", "dispatch")

CASES = backend_params("native", [("dispatch", s, d, torch.float32) for s in NATIVE_SHAPES for d in DILATIONS])
CASES += backend_params("triton", [(p, s, d, dtype) for p in TRITON_PATHS for s in TRITON_SHAPES for d in DILATIONS
                                   for dtype in TRITON_DTYPES])


@pytest.fixture(autouse=True)
def ieee_fp32(monkeypatch):
    """fp32 is held to IEEE here; TF32 (torch's default for convs) has its own test (test_triton_backend.py)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def inputs(backend, shape, dilation, dtype=torch.float32, seed=None, bias=True):
    """The residual unit's arguments as each backend's cases have always been drawn (native's from
    fixed seeds, Triton's from ``seed`` or one of the shape's own)."""
    if backend == "native":
        x, alpha1, w1, b1, d, alpha2, w2, b2 = residual_args(*shape, dilation, dtype)
        return (x, alpha1, w1, b1 if bias else None, d, alpha2, w2, b2 if bias else None)
    batch, c, t = shape
    seed = c * 1000 + t + dilation if seed is None else seed
    return residual_inputs(c, t, dilation, dtype, seed=seed, batch=batch, bias=bias)


def run_path(backend, path, args):
    if path == "dispatch":
        return run(backend, "residual_unit", *args)
    from xcodec_fast.ops.triton import residual_unit

    return residual_unit.residual_unit_launch(*args, fused=path == "fused")


def assert_matches_fp32_eager(out, args, backend):
    """Within the backend's bound (tests/tolerances.py) of eager evaluated in fp32 on the same inputs."""
    expected = eager.residual_unit(*fp32_args(args))
    assert out.dtype == args[0].dtype and out.shape == expected.shape
    tolerances.assert_close(out.float(), expected, tolerances.CONV[backend, args[0].dtype])


@pytest.mark.parametrize("backend,path,shape,dilation,dtype", CASES)
def test_residual_unit_matches_eager(backend, path, shape, dilation, dtype):
    if path == "fused" and shape[1] > 128:
        pytest.skip("the fused kernel holds all C output rows of a T block: it is only launched for small C")
    args = inputs(backend, shape, dilation, dtype)
    assert_matches_fp32_eager(run_path(backend, path, args), args, backend)


@pytest.mark.parametrize(
    "backend,path,shape,dilation,seed",
    backend_params("native", [("dispatch", s, d, None) for s in NATIVE_SHAPES for d in DILATIONS])
    + backend_params("triton", [(p, (2, 16, 7), 3, 5) for p in ("fused", "two_kernel")]),
)
def test_residual_unit_without_bias_matches_eager(backend, path, shape, dilation, seed):
    args = inputs(backend, shape, dilation, seed=seed, bias=False)
    assert_matches_fp32_eager(run_path(backend, path, args), args, backend)


def non_contiguous_layouts(backend):
    """(the unit's other arguments, inputs laid out in memory other than contiguously)."""
    if backend == "native":
        _, *rest = residual_args(2, 64, 1000, 3)
        sliced = torch.randn(2, 64, 1200)[..., 100:1100]
        strided = torch.randn(2, 1000, 64).transpose(1, 2)
        return rest, [sliced, strided, torch.randn(2, 64, 2000)[..., ::2]]
    x, *rest = residual_inputs(16, 7, 3, torch.float32, seed=11)
    return rest, [x.transpose(1, 2).contiguous().transpose(1, 2)]  # same values, (1, C)-strided frames


@pytest.mark.parametrize("backend", backend_params("native") + backend_params("triton"))
def test_residual_unit_non_contiguous_input_matches_eager(backend):
    rest, layouts = non_contiguous_layouts(backend)
    for x in layouts:
        assert not x.is_contiguous()
        assert_matches_fp32_eager(run(backend, "residual_unit", x, *rest), (x, *rest), backend)


@pytest.mark.parametrize("backend", backend_params("native"))
def test_half_residual_unit_is_one_rounding_of_fp32(backend):
    for dtype in (torch.bfloat16, torch.float16):
        args = residual_args(2, 64, 1000, 3, dtype)
        got = run(backend, "residual_unit", *args)
        assert got.dtype == dtype
        # fp32 compute on the reduced inputs, one rounding at the end: within an ulp of that result.
        exact = eager.residual_unit(*fp32_args(args))
        tolerances.assert_close(got.float(), exact, tolerances.ONE_ROUNDING[backend, dtype])


@pytest.mark.parametrize("backend", backend_params("native") + backend_params("triton"))
def test_empty_frames_give_an_empty_result(backend):
    args = inputs(backend, (2, 16, 0), 3, seed=1)
    assert run(backend, "residual_unit", *args).shape == (2, 16, 0)


@pytest.mark.parametrize("backend", backend_params("native") + backend_params("triton"))
def test_mixed_devices_and_dtypes_are_rejected(backend):
    x, a1, w1, b1, d, a2, w2, b2 = inputs(backend, (2, 3, 7), 1, seed=2)
    with ops.use_backend(backend):
        with pytest.raises(ValueError, match="weight1 is on meta"):
            ops.residual_unit(x, a1, w1.to("meta"), b1, d, a2, w2, b2)
        with pytest.raises(TypeError, match="weight2 has dtype torch.float16"):
            ops.residual_unit(x, a1, w1, b1, d, a2, w2.half(), b2)
        with pytest.raises(ValueError, match="alpha"):
            ops.snake_conv1d(x, a1.to("meta"), torch.zeros(5, 3, 4, device=x.device), None, 2, 1)
