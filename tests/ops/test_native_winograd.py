"""The native residual unit with its k=7 conv as Winograd F(m, 7): the transforms, the kernel's
error against float64 at the model's site shapes and odd sizes, batch independence, storage
dtypes, dispatch, and bad arguments."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

import tolerances
from op_cases import (
    assert_forced_residual_unit_runs, assert_item_alone_equals_item_in_a_zero_padded_batch, fp32_args, measure_dispatch,
    residual_args,
)
from xcodec_fast import ops
from xcodec_fast.ops import eager, native, winograd

if not native.availability(torch.device("cpu"))[0]:
    pytest.skip("native backend unavailable", allow_module_level=True)

DILATIONS = (1, 3, 9)
# (batch, channels, frames): one frame, fewer frames than a tile, odd sizes, several chunks.
SHAPES = [(1, 1, 1), (2, 3, 7), (1, 5, 2), (2, 17, 101), (1, 64, 1601), (2, 32, 3001)]


def exact_residual_unit(args):
    return eager.residual_unit(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])


def relative_error(out, exact):
    return ((out.double() - exact).abs().max() / exact.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_transforms_compute_the_correlation_exactly(m):
    """y = Aᵀ[(G g) ⊙ (Bᵀ x)] is the 7-tap correlation, checked in exact rationals on random integer data."""
    at, g, bt = winograd.transforms(m)
    gen = torch.Generator().manual_seed(m)
    for _ in range(3):
        x = [Fraction(int(v)) for v in torch.randint(-9, 10, (m + 6,), generator=gen)]
        taps = [Fraction(int(v)) for v in torch.randint(-9, 10, (7,), generator=gen)]
        u = [sum(g[a][k] * taps[k] for k in range(7)) for a in range(m + 6)]
        v = [sum(bt[a][p] * x[p] for p in range(m + 6)) for a in range(m + 6)]
        y = [sum(at[i][a] * u[a] * v[a] for a in range(m + 6)) for i in range(m)]
        assert y == [sum(taps[k] * x[i + k] for k in range(7)) for i in range(m)]


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("dilation", DILATIONS)
def test_torch_winograd_conv_equals_direct_conv_in_float64(m, dilation):
    gen = torch.Generator().manual_seed(dilation)
    for frames in (1, 2, 7, 101):
        x = torch.randn(2, 3, frames, generator=gen, dtype=torch.float64)
        w = torch.randn(4, 3, 7, generator=gen, dtype=torch.float64)
        expected = F.conv1d(x, w, padding=3 * dilation, dilation=dilation)
        torch.testing.assert_close(winograd.conv1d(x, w, dilation, m), expected, rtol=0, atol=1e-11)


def test_transforms_reject_points_that_cannot_interpolate(monkeypatch):
    monkeypatch.setitem(winograd.POINTS, 2, tuple(map(Fraction, ("0", "1", "1", "2", "-2", "3", "-3"))))
    winograd.transforms.cache_clear()
    try:
        with pytest.raises(ValueError, match="distinct"):
            winograd.transforms(2)
    finally:
        winograd.transforms.cache_clear()
    with pytest.raises(ValueError, match="no Winograd points for F\\(9, 7\\)"):
        winograd.transforms(9)


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_error_vs_float64_within_its_bound(m, dilation, shape):
    """Every tile size's kernel against the float64 truth, next to the direct GEMM's own error."""
    args = residual_args(*shape, dilation)
    exact = exact_residual_unit(args)
    out = native.residual_unit_winograd(*args, m=m)
    assert out.shape == exact.shape and out.dtype == torch.float32
    bound = tolerances.WINOGRAD[m]
    assert relative_error(out, exact) <= bound


@pytest.mark.parametrize("chunk", [1, 5, 17, 100, 4096])
def test_chunk_size_changes_nothing_but_rounding(chunk):
    """Chunks of any size (rounded up to whole tiles), a partial last chunk, a chunk past the end."""
    args = residual_args(2, 24, 1001, 3)
    exact = exact_residual_unit(args)
    out = native.residual_unit_winograd(*args, m=2, chunk=chunk)
    assert relative_error(out, exact) <= tolerances.WINOGRAD[2]


@pytest.mark.parametrize("dilation", DILATIONS)
def test_item_alone_equals_item_in_a_zero_padded_batch(dilation):
    x, *rest = residual_args(3, 16, 777, dilation)
    assert_item_alone_equals_item_in_a_zero_padded_batch(lambda v: native.residual_unit_winograd(v, *rest), x, 401)


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("m", winograd.FAST_TILE_SIZES)
def test_a_window_on_the_tile_grid_rounds_its_inner_frames_as_the_whole_call(m, dilation, onednn):
    """A window starting on the tile period: outputs farther than the conv's reach plus the tile's
    rounding leak from its edges are bit-equal to the whole call's (what window_context relies on)."""
    args = residual_args(1, 24, 1500, dilation)
    x, rest = args[0], args[1:]
    whole = native.residual_unit_winograd(x, *rest, m=m, onednn=onednn)
    margin = (3 + winograd.rounding_leak(m)) * dilation
    for low, width in [(winograd.tile_period(dilation), 301), (5 * winograd.tile_period(dilation), 777)]:
        part = native.residual_unit_winograd(x[..., low : low + width].contiguous(), *rest, m=m, onednn=onednn)
        assert torch.equal(part[..., margin : width - margin], whole[..., low + margin : low + width - margin]), low


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_storage_is_computed_in_fp32_and_rounded_once(dtype):
    args = residual_args(2, 24, 301, 9, dtype)
    out = native.residual_unit_winograd(*args)
    assert out.dtype == dtype
    expected = eager.residual_unit(*fp32_args(args))
    eps = torch.finfo(dtype).eps
    tolerances.assert_close(out.float(), expected, tolerances.Close(eps, eps, of_peak=True))


def test_strided_input_is_accepted():
    x, *rest = residual_args(1, 8, 200, 1)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(native.residual_unit_winograd(strided, *rest),
                               native.residual_unit_winograd(x, *rest), rtol=0, atol=0)


def test_forced_dispatch_runs_winograd_and_the_table_measures_it(tmp_path, monkeypatch):
    """ops.residual_unit on native runs Winograd when forced; with measuring on, every square unit
    times each allowed tile size beside the direct implementations."""
    args = residual_args(1, 32, 2001, 3)
    assert_forced_residual_unit_runs("winograd2", lambda *a: native.residual_unit_winograd(*a, m=2), args)
    measure_dispatch(tmp_path, monkeypatch, "retune")
    with ops.use_backend("native"):
        ops.residual_unit(*args)
    (entry,) = native.tuner().table.values()
    winograds = [f"winograd{m}{engine}" for m in winograd.dispatch_tile_sizes() for engine in ("", "-onednn")]
    assert set(entry["ms"]) == {"onednn", "eager", "gemm", "gemm-onednn", *winograds}


def test_bad_transform_arguments_name_the_problem():
    x, alpha1, w1, b1, d, alpha2, w2, b2 = residual_args(1, 8, 50, 1)
    ext = native.extension()
    bt, at = winograd.kernel_transforms(2)
    good = winograd.transform_filter(w1, 2)
    call = lambda filt, b, a: ext.residual_unit_winograd(x, alpha1, w1, b1, d, alpha2, w2, b2, 0, filt, None, b, a)  # noqa: E731
    with pytest.raises(RuntimeError, match="transformed filter must be contiguous float32 \\(8, 8, 8\\)"):
        call(good[:, :4], bt, at)
    with pytest.raises(RuntimeError, match="does not fit a 7-tap filter"):
        call(good, bt, at[:, :5].contiguous())
    with pytest.raises(RuntimeError, match="input transform must be float32 \\(8, 8\\)"):
        call(good, bt.double(), at)
    with pytest.raises(ValueError, match="\\(C_out, C_in, k\\) weight"):
        winograd.transform_filter(w1[0], 2)


def test_rounding_leak_follows_the_transforms():
    """F(2,7)'s points 0 and ∞ keep each edge input out of the other output's rounding; F(4,7)'s
    middle outputs round with 2 inputs past their taps; the windows' context grows with it."""
    assert [winograd.rounding_leak(m) for m in winograd.TILE_SIZES] == [0, 1, 2]
    with winograd.fast_tiles(False):
        assert winograd.dispatch_tile_sizes() == (2,) and winograd.tile_reach(9) == 0
    with winograd.fast_tiles():
        assert winograd.dispatch_tile_sizes() == (2, 4) and winograd.tile_reach(9) == 18


def test_winograd_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(winograd.MODE_ENV, "fast")
    assert winograd.dispatch_tile_sizes() == (2, 4)
    monkeypatch.setenv(winograd.MODE_ENV, "default")
    assert winograd.dispatch_tile_sizes() == (2,)
    monkeypatch.setenv(winograd.MODE_ENV, "fastest")
    with pytest.raises(ValueError, match="XCODEC_FAST_WINOGRAD='fastest'"):
        winograd.dispatch_tile_sizes()


def test_fast_tiles_are_measured_under_their_own_key(tmp_path, monkeypatch):
    args = residual_args(1, 16, 901, 3)
    measure_dispatch(tmp_path, monkeypatch, "retune")
    with ops.use_backend("native"):
        ops.residual_unit(*args)
        with winograd.fast_tiles():
            ops.residual_unit(*args)
    table = native.tuner().table
    assert set(table["residual_unit|C16|k7|d3|float32"]["ms"]) >= {"winograd2", "winograd2-onednn"}
    assert "winograd4" not in table["residual_unit|C16|k7|d3|float32"]["ms"]
    assert {"winograd2", "winograd4", "winograd4-onednn"} <= set(table["residual_unit|C16|k7|d3|fast-winograd|float32"]["ms"])
