"""The native GEMM paths on oneDNN's GEMM (brgemm ukernel) instead of MKL's: the same kernels with
their fp32 products on another library, which the measured dispatch picks where it is faster.
Each entry point against eager (and float64 for Winograd) at odd sizes and forced chunk sizes,
bias or none, reduced storage, batch independence, the transposed conv's own weight layout, and
the dispatch running the engine it recorded."""

import pytest
import torch

import tolerances
from op_cases import (
    assert_item_alone_equals_item_in_a_zero_padded_batch, dac_weights, fp32_args, make_input, residual_args,
)
from xcodec_fast import ops
from xcodec_fast.ops import eager, native, tuning, winograd

if not native.availability(torch.device("cpu"))[0]:
    pytest.skip("native backend unavailable", allow_module_level=True)

DILATIONS = (1, 3, 9)
# (batch, channels, frames): one frame, odd channel counts, several chunks, the model's widths.
RESIDUAL_SHAPES = [(1, 1, 1), (2, 3, 7), (2, 17, 101), (1, 64, 1601), (2, 96, 1601), (1, 256, 301), (1, 512, 41)]


def _relative_error(out, exact):
    return ((out.double() - exact).abs().max() / exact.abs().max().clamp_min(1e-30)).item()


def _float64(args):
    return [a.double() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("shape", RESIDUAL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_residual_unit_gemm_on_onednn_is_within_its_bound_of_float64(shape, dilation):
    ext = native.extension()
    args = residual_args(*shape, dilation)
    for bias in (True, False):
        call = args if bias else (*args[:3], None, *args[4:7], None)
        exact = eager.residual_unit(*_float64(call))
        for chunk in (0, 1, 5):
            got = ext.residual_unit_gemm(*call, chunk, onednn=True)
            assert got.shape == exact.shape and got.dtype == torch.float32
            assert _relative_error(got, exact) <= tolerances.GEMM_ONEDNN_VS_FLOAT64


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("shape", RESIDUAL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_winograd_on_onednn_is_within_its_bound_of_float64(m, dilation, shape):
    args = residual_args(*shape, dilation)
    exact = eager.residual_unit(*_float64(args))
    for chunk in (0, 17):
        out = native.residual_unit_winograd(*args, m=m, chunk=chunk, onednn=True)
        assert out.shape == exact.shape and out.dtype == torch.float32
        assert _relative_error(out, exact) <= tolerances.WINOGRAD[m]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_storage_on_onednn_is_fp32_compute_rounded_once(dtype):
    ext = native.extension()
    args = residual_args(2, 24, 301, 9, dtype)
    expected = eager.residual_unit(*fp32_args(args))
    for out in (ext.residual_unit_gemm(*args, 0, onednn=True), native.residual_unit_winograd(*args, onednn=True)):
        assert out.dtype == dtype
        tolerances.assert_close(out.float(), expected, tolerances.ONE_ROUNDING["native", dtype])


@pytest.mark.parametrize("dilation", DILATIONS)
def test_item_alone_equals_item_in_a_zero_padded_batch_on_onednn(dilation):
    """Codes equal alone in padded batches need each item's frames bit-equal whatever its batch-mates."""
    ext = native.extension()
    x, alpha1, w1, b1, d, alpha2, w2, b2 = residual_args(3, 16, 777, dilation)
    rest = (alpha1, w1, b1, d, alpha2, w2, b2)
    w, b = dac_weights(16, 24, 8, seed=5)
    for run in (lambda v: ext.residual_unit_gemm(v, *rest, 0, onednn=True),
                lambda v: native.residual_unit_winograd(v, *rest, onednn=True),
                lambda v: ext.snake_conv1d_gemm(v, alpha1, w, b, 4, 2, 0, onednn=True)):
        assert_item_alone_equals_item_in_a_zero_padded_batch(run, x, 401)


def test_transposed_conv_on_onednn_reads_its_own_weight_layout():
    ext = native.extension()
    x, alpha = make_input(2, 12, 37, seed=3)
    w, b = dac_weights(12, 5, 8, seed=4, transpose=True)
    expected = eager.snake_conv_transpose1d(x, alpha, w, b, 4, 2, 1)
    rows = ext.pack_conv_transpose1d_weight_rows(w)
    assert rows.shape == (5, 8, 12)
    packed = ext.snake_conv_transpose1d_gemm(x, alpha, w, b, 4, 2, 1, 0, rows, onednn=True)
    assert torch.equal(packed, ext.snake_conv_transpose1d_gemm(x, alpha, w, b, 4, 2, 1, 0, onednn=True))
    tolerances.assert_close(packed, expected, tolerances.CONV["native", torch.float32])
    with pytest.raises(RuntimeError, match="packed weight"):  # MKL's layout handed to the oneDNN engine
        ext.snake_conv_transpose1d_gemm(x, alpha, w, b, 4, 2, 1, 0, ext.pack_conv_transpose1d_weight(w),
                                        onednn=True)


@pytest.mark.parametrize("op,choice", [("residual_unit", "gemm-onednn"), ("residual_unit", "winograd2-onednn"),
                                       ("snake_conv1d", "gemm-onednn"), ("snake_conv_transpose1d", "gemm-onednn")])
def test_forced_dispatch_runs_the_onednn_engine(op, choice):
    ext = native.extension()
    if op == "residual_unit":
        args = residual_args(1, 32, 2001, 3)
        engine = (ext.residual_unit_gemm(*args, 0, onednn=True) if choice == "gemm-onednn"
                  else native.residual_unit_winograd(*args, m=2, onednn=True))
        other = ext.residual_unit_gemm(*args, 0)
    else:
        # 256 input channels: enough summands that the two GEMMs round differently
        x, alpha = make_input(1, 256, 333, seed=7)
        transposed = op == "snake_conv_transpose1d"
        w, b = dac_weights(256, 64, 8, seed=8, transpose=transposed)
        geometry = (4, 2, 0) if transposed else (4, 2)
        args = (x, alpha, w, b, *geometry)
        engine = getattr(ext, f"{op}_gemm")(*args, 0, onednn=True)
        other = getattr(ext, f"{op}_gemm")(*args, 0)
    with ops.use_backend("native"), tuning.forced(op, choice):
        forced = getattr(ops, op)(*args)
    assert torch.equal(forced, engine)
    assert not torch.equal(forced, other)  # the engines really differ: the test can tell them apart
