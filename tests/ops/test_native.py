"""Native CPU backend vs the eager oracle: parity, layouts, dispatch, fallbacks, packaging."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xcodec_fast import ops
from xcodec_fast.ops import eager

REPO = Path(__file__).resolve().parents[2]

native_ok, native_reason = ops.availability("native")
if not native_ok:
    pytest.skip(f"native backend unavailable: {native_reason}", allow_module_level=True)

from xcodec_fast.ops import native  # noqa: E402  (only once we know it can run)

BATCHES = (1, 2)
CHANNELS = (1, 3, 64, 96)
FRAMES = (1, 7, 321, 16001)


def make_input(batch, channels, frames, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, frames, generator=g) * 3
    alpha = torch.rand(channels, generator=g) * 2 + 0.05
    return x.to(dtype), alpha.to(dtype)


def assert_fp32_close(actual, expected):
    # 1e-6 relative, with an absolute floor at 1e-6 of the tensor's scale for values near 0.
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * max(scale, 1.0))


@pytest.mark.parametrize("frames", FRAMES)
@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("batch", BATCHES)
def test_snake_and_add_snake_fp32_match_eager(batch, channels, frames):
    x, alpha = make_input(batch, channels, frames)
    h, _ = make_input(batch, channels, frames, seed=1)
    assert_fp32_close(native.snake(x, alpha), eager.snake(x, alpha))
    y, s = native.add_snake(x, h, alpha)
    y_ref, s_ref = eager.add_snake(x, h, alpha)
    assert_fp32_close(y, y_ref)
    assert_fp32_close(s, s_ref)


def test_snake_fp32_is_bit_identical_to_eager():
    # Same op order, no FMA contraction and torch.sin's own sin: the docstring promises bit equality.
    x, alpha = make_input(2, 96, 16001)
    assert torch.equal(native.snake(x, alpha), eager.snake(x, alpha))
    h, _ = make_input(2, 96, 16001, seed=1)
    for got, want in zip(native.add_snake(x, h, alpha), eager.add_snake(x, h, alpha)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("frames", (7, 321, 16001))
@pytest.mark.parametrize("channels", (3, 64))
def test_snake_reduced_precision(dtype, channels, frames):
    x, alpha = make_input(2, channels, frames, dtype)
    got = native.snake(x, alpha)
    assert got.dtype == dtype
    # Computed in fp32 and rounded once: within half an ulp of the fp32 result on the same inputs...
    exact = eager.snake(x.float(), alpha.float())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got.float(), exact, rtol=eps, atol=eps)
    # ...and near eager's step-by-step reduced-precision result.
    torch.testing.assert_close(got.float(), eager.snake(x, alpha).float(), rtol=4 * eps, atol=4 * eps)
    h, _ = make_input(2, channels, frames, dtype, seed=1)
    y, s = native.add_snake(x, h, alpha)
    assert torch.equal(y, x + h)  # one rounding of an exact fp32 sum, as eager does
    torch.testing.assert_close(s.float(), eager.snake(y.float(), alpha.float()), rtol=eps, atol=eps)


def test_non_contiguous_inputs():
    x, alpha = make_input(2, 64, 400)
    sliced = torch.randn(2, 64, 500)[..., 37:437]  # unit stride in time, row strides of 500
    strided = torch.randn(2, 400, 64).transpose(1, 2)  # time stride 64: copied to contiguous
    every_other = torch.randn(2, 64, 800)[..., ::2]
    for t in (sliced, strided, every_other, x.permute(1, 0, 2).contiguous().permute(1, 0, 2)):
        assert_fp32_close(native.snake(t, alpha), eager.snake(t, alpha))
        y, s = native.add_snake(t, sliced, alpha)
        assert_fp32_close(y, t + sliced)
        assert_fp32_close(s, eager.snake(t + sliced, alpha))
    assert_fp32_close(native.snake(x, alpha.reshape(1, -1, 1)), eager.snake(x, alpha))


def test_snake_in_place():
    x, alpha = make_input(2, 64, 321)
    expected = eager.snake(x, alpha)
    target = x.clone()
    assert native.snake_(target, alpha) is target
    assert_fp32_close(target, expected)
    # Non-unit time stride: still correct, written back into the same tensor.
    base = x.transpose(1, 2).contiguous()
    view = base.transpose(1, 2)
    native.snake_(view, alpha)
    assert_fp32_close(base.transpose(1, 2), expected)


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


# Up to 256 channels the residual unit is a chunked implicit GEMM (see kernels/defaults.h):
# same math as eager in another summation order, so within 1e-6 of the output scale, not bit-equal.
# 16001 frames span many chunks (halos at chunk edges); 300 channels take the oneDNN path.
@pytest.mark.parametrize("dilation", (1, 3, 9))
@pytest.mark.parametrize(
    "batch,channels,frames",
    [(1, 1, 1), (2, 3, 7), (1, 64, 321), (2, 96, 1601), (2, 64, 16001), (1, 3, 16001), (2, 1, 321), (1, 300, 40)],
)
def test_residual_unit_matches_eager(batch, channels, frames, dilation):
    x, alpha1, w1, b1, _, alpha2, w2, b2 = args = residual_args(batch, channels, frames, dilation)
    assert_fp32_close(native.residual_unit(*args), eager.residual_unit(*args))
    assert_fp32_close(native.residual_unit(x, alpha1, w1, None, dilation, alpha2, w2, None),
                      eager.residual_unit(x, alpha1, w1, None, dilation, alpha2, w2, None))


def test_residual_unit_non_contiguous_and_reduced_precision():
    x, alpha1, w1, b1, d, alpha2, w2, b2 = residual_args(2, 64, 1000, 3)
    rest = (alpha1, w1, b1, d, alpha2, w2, b2)
    sliced = torch.randn(2, 64, 1200)[..., 100:1100]
    strided = torch.randn(2, 1000, 64).transpose(1, 2)
    for t in (sliced, strided, torch.randn(2, 64, 2000)[..., ::2]):
        assert_fp32_close(native.residual_unit(t, *rest), eager.residual_unit(t, *rest))
    for dtype in (torch.bfloat16, torch.float16):
        xr, *rest_r = residual_args(2, 64, 1000, 3, dtype)
        got = native.residual_unit(xr, *rest_r)
        assert got.dtype == dtype
        # fp32 compute on the reduced inputs, one rounding at the end: within an ulp of that result.
        exact = eager.residual_unit(xr.float(), *(a.float() if isinstance(a, torch.Tensor) else a for a in rest_r))
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(got.float(), exact, rtol=eps, atol=eps * exact.abs().max().item())


@pytest.mark.parametrize("stride", (2, 4, 5, 8))
@pytest.mark.parametrize("batch,channels,frames", [(1, 3, 64), (2, 64, 321)])
def test_snake_conv1d_and_transpose_match_eager(batch, channels, frames, stride):
    x, alpha = make_input(batch, channels, frames)
    padding = (stride + 1) // 2
    w, b = dac_weights(channels, 2 * channels, 2 * stride)
    args = (x, alpha, w, b, stride, padding)
    assert_fp32_close(native.snake_conv1d(*args), eager.snake_conv1d(*args))
    wt, bt = dac_weights(channels, max(channels // 2, 1), 2 * stride, transpose=True)
    output_padding = stride % 2
    args = (x, alpha, wt, bt, stride, padding, output_padding)
    assert_fp32_close(native.snake_conv_transpose1d(*args), eager.snake_conv_transpose1d(*args))


# Snake + strided conv (C_in <= 256) and snake + transposed conv are chunked implicit GEMMs: phases of
# the stride, im2col, MKL sgemm. Shapes cover kernels that are not multiples of the stride, every
# output_padding below the stride, padding beyond the kernel's reach, one frame, and chunk sizes of
# 1 and 3 frames so that every chunk edge is crossed.
TRANSPOSE_CASES = [  # in, out, frames, kernel, stride, padding, output_padding
    (3, 2, 7, 4, 2, 1, 0), (5, 3, 11, 10, 5, 3, 1), (4, 4, 9, 16, 8, 4, 0), (3, 5, 6, 3, 2, 0, 1),
    (2, 3, 5, 7, 3, 2, 2), (6, 2, 13, 5, 4, 1, 3), (1, 1, 1, 4, 2, 1, 0), (3, 2, 4, 1, 3, 0, 0),
    (2, 2, 8, 6, 2, 2, 1), (2, 3, 9, 5, 1, 2, 0), (64, 32, 321, 16, 8, 4, 0),
]
CONV_CASES = [  # in, out, frames, kernel, stride, padding
    (3, 6, 64, 16, 8, 4), (5, 3, 11, 10, 5, 3), (4, 4, 9, 4, 2, 1), (3, 1, 100, 7, 1, 3), (2, 3, 5, 3, 2, 0),
    (6, 2, 13, 5, 4, 2), (1, 1, 1, 1, 1, 0), (3, 2, 20, 7, 3, 5), (64, 128, 321, 16, 8, 4),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_snake_conv_transpose1d_gemm_matches_eager(case):
    in_channels, out_channels, frames, kernel, stride, padding, output_padding = case
    x, alpha = make_input(2, in_channels, frames, seed=frames)
    w, b = dac_weights(in_channels, out_channels, kernel, seed=kernel, transpose=True)
    for bias in (b, None):
        expected = eager.snake_conv_transpose1d(x, alpha, w, bias, stride, padding, output_padding)
        for chunk in (0, 1, 3):
            got = native.extension().snake_conv_transpose1d_gemm(x, alpha, w, bias, stride, padding, output_padding, chunk)
            assert got.shape == expected.shape
            assert_fp32_close(got, expected)
        assert_fp32_close(native.snake_conv_transpose1d(x, alpha, w, bias, stride, padding, output_padding), expected)


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_snake_conv1d_gemm_matches_eager(case):
    in_channels, out_channels, frames, kernel, stride, padding = case
    x, alpha = make_input(2, in_channels, frames, seed=frames)
    w, b = dac_weights(in_channels, out_channels, kernel, seed=kernel)
    for bias in (b, None):
        expected = eager.snake_conv1d(x, alpha, w, bias, stride, padding)
        for chunk in (0, 1, 3):
            got = native.extension().snake_conv1d_gemm(x, alpha, w, bias, stride, padding, chunk)
            assert got.shape == expected.shape
            assert_fp32_close(got, expected)
        assert_fp32_close(native.snake_conv1d(x, alpha, w, bias, stride, padding), expected)


@pytest.mark.parametrize("frames", (7, 321, 700, 1500))
def test_gemm_paths_give_an_item_its_alone_result_in_a_longer_padded_row(frames):
    # The tokenizer's promise (codes equal alone) needs the GEMM kernels to compute an item's frames
    # alike however long the row they sit in: MKL's results depend on the GEMM's width, so every call
    # runs full chunk width. Zeros past the item make the longer row's halo equal to zero padding.
    def padded(x, extra):
        return torch.cat([x, torch.zeros(*x.shape[:2], extra)], dim=-1)

    x, alpha1, w1, b1, d, alpha2, w2, b2 = residual_args(1, 64, frames, 3)
    alone = native.residual_unit(x, alpha1, w1, b1, d, alpha2, w2, b2)
    for extra in (1, 333, 1000):
        longer = native.residual_unit(padded(x, extra), alpha1, w1, b1, d, alpha2, w2, b2)
        assert torch.equal(longer[..., :frames], alone)
    x, alpha = make_input(1, 64, frames * 8)
    for w, b, stride, padding in (dac_weights(64, 128, 16) + (8, 4), dac_weights(64, 1, 7) + (1, 3)):
        alone = native.snake_conv1d(x, alpha, w, b, stride, padding)
        for extra in (8, 2664, 8000):
            longer = native.snake_conv1d(padded(x, extra), alpha, w, b, stride, padding)
            assert torch.equal(longer[..., : alone.shape[-1]], alone)


def test_conv_dispatch_takes_the_measured_path():
    # C_in <= 256 strided convs and all transposed convs take the GEMM path, wider strided convs oneDNN
    # (crossover tables in kernels/defaults.h): the dispatched result is that path's, bit for bit.
    ext = native.extension()
    x, alpha = make_input(1, 256, 40)
    w, b = dac_weights(256, 8, 4)
    assert torch.equal(native.snake_conv1d(x, alpha, w, b, 2, 1), ext.snake_conv1d_gemm(x, alpha, w, b, 2, 1, 0))
    x, alpha = make_input(1, 300, 40)
    w, b = dac_weights(300, 8, 4)
    assert torch.equal(native.snake_conv1d(x, alpha, w, b, 2, 1), ext.snake_conv1d_onednn(x, alpha, w, b, 2, 1))
    wt, bt = dac_weights(300, 8, 4, transpose=True)
    assert torch.equal(native.snake_conv_transpose1d(x, alpha, wt, bt, 2, 1, 0),
                       ext.snake_conv_transpose1d_gemm(x, alpha, wt, bt, 2, 1, 0, 0))


def test_conv_gemm_layouts_and_reduced_precision():
    w, b = dac_weights(16, 8, 10)
    wt, bt = dac_weights(16, 8, 10, transpose=True)
    base = torch.randn(2, 16, 140)
    alpha = torch.rand(16) + 0.1
    for x in (base[..., 20:120], torch.randn(2, 100, 16).transpose(1, 2), base[..., ::2]):
        assert_fp32_close(native.snake_conv1d(x, alpha, w, b, 5, 3), eager.snake_conv1d(x, alpha, w, b, 5, 3))
        assert_fp32_close(native.snake_conv_transpose1d(x, alpha, wt, bt, 5, 3, 1),
                          eager.snake_conv_transpose1d(x, alpha, wt, bt, 5, 3, 1))
    x = base[..., :100]
    for dtype in (torch.bfloat16, torch.float16):
        xr, ar = x.to(dtype), alpha.to(dtype)
        eps = torch.finfo(dtype).eps
        for got, exact in (
            (native.snake_conv1d(xr, ar, w.to(dtype), b.to(dtype), 5, 3),
             eager.snake_conv1d(xr.float(), ar.float(), w.to(dtype).float(), b.to(dtype).float(), 5, 3)),
            (native.snake_conv_transpose1d(xr, ar, wt.to(dtype), bt.to(dtype), 5, 3, 1),
             eager.snake_conv_transpose1d(xr.float(), ar.float(), wt.to(dtype).float(), bt.to(dtype).float(), 5, 3, 1)),
        ):
            assert got.dtype == dtype
            # fp32 compute on the reduced inputs, one rounding at the end: within an ulp of that result.
            torch.testing.assert_close(got.float(), exact, rtol=eps, atol=eps * exact.abs().max().item())


def test_conv_gemm_rejects_impossible_shapes():
    ext = native.extension()
    x, alpha = make_input(1, 3, 4)
    w, b = dac_weights(3, 2, 9)
    with pytest.raises(RuntimeError, match="fewer than the kernel"):
        ext.snake_conv1d_gemm(x, alpha, w, b, 1, 0, 0)
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        ext.snake_conv1d_gemm(x, alpha, w, b, 0, 0, 0)
    with pytest.raises(RuntimeError, match="weight does not match"):
        ext.snake_conv_transpose1d_gemm(x, alpha, torch.randn(4, 2, 3), None, 2, 0, 0, 0)


def test_dispatch_uses_native():
    x, alpha = make_input(2, 3, 321)
    with ops.use_backend("native"):
        assert ops.backend.implementation("snake", x.device)[0] == "native"
        assert torch.equal(ops.snake(x, alpha), native.snake(x, alpha))
        y, s = ops.add_snake(x, x, alpha)
        assert torch.equal(s, native.snake(x + x, alpha))
    with ops.use_backend("auto"):
        assert ops.backend.resolve_auto(torch.device("cpu")) == "native"
    fused = {"snake", "add_snake", "residual_unit", "snake_conv1d", "snake_conv_transpose1d"}
    assert fused <= set(ops.backend.implemented_ops("native"))


def test_bad_input_is_rejected_before_the_kernel():
    x, alpha = make_input(1, 3, 10)
    with ops.use_backend("native"):
        with pytest.raises(ValueError, match="meta"):
            ops.snake(x, alpha.to("meta"))
        with pytest.raises(TypeError, match="dtype"):
            ops.snake(x, alpha.bfloat16())
        with pytest.raises(ValueError, match="4 values for 3 channels"):
            ops.snake(x, torch.rand(4))
        with pytest.raises(ValueError, match="shape"):
            ops.add_snake(x, x[..., :5], alpha)
        with pytest.raises(TypeError, match="float32"):
            ops.snake(x.long(), alpha)


def test_autograd_falls_back_to_eager():
    x, alpha = make_input(1, 3, 10)
    x.requires_grad_(True)
    with ops.use_backend("native"):
        out = ops.snake(x, alpha)
    assert out.grad_fn is not None
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_torch_library_ops():
    x, alpha = make_input(2, 3, 33)
    assert torch.equal(torch.ops.xcodec_fast_native.snake(x, alpha), native.snake(x, alpha))
    torch.library.opcheck(torch.ops.xcodec_fast_native.snake.default, (x, alpha))
    torch.library.opcheck(torch.ops.xcodec_fast_native.add_snake.default, (x, x, alpha))
    w1, b1 = dac_weights(3, 3, 7)
    w2, b2 = dac_weights(3, 3, 1, seed=1)
    torch.library.opcheck(torch.ops.xcodec_fast_native.residual_unit.default, (x, alpha, w1, b1, 3, alpha, w2, b2))
    w, b = dac_weights(3, 6, 4)
    torch.library.opcheck(torch.ops.xcodec_fast_native.snake_conv1d.default, (x, alpha, w, b, 2, 1))
    wt, bt = dac_weights(3, 2, 10, transpose=True)
    torch.library.opcheck(torch.ops.xcodec_fast_native.snake_conv_transpose1d.default, (x, alpha, wt, bt, 5, 3, 1))


def test_missing_compiler_means_unavailable_and_auto_falls_back(tmp_path):
    # Fresh cache and no compiler: a clear reason, eager under auto, and `import xcodec_fast` works.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["xcodec_fast._C"] = None  # a prebuilt extension (--no-build-isolation install) is not loaded
        import torch, xcodec_fast
        from xcodec_fast import ops
        ok, reason = ops.availability("native")
        assert not ok and "compiler" in reason, reason
        assert ops.backend.resolve_auto(torch.device("cpu")) == "eager"
        x = torch.randn(1, 2, 5)
        ops.snake(x, torch.ones(2))
        print("OK")
        """
    )
    env = dict(os.environ, XCODEC_FAST_NATIVE_CACHE=str(tmp_path), CXX="/nonexistent/c++", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_end_to_end_model_matches_eager():
    codec = pytest.importorskip("xcodec_fast.modeling.codec")
    from xcodec_fast.config import tiny_config

    model = codec.XcodecModel.from_random(tiny_config())
    audio = torch.randn(2, 1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    model.backend = "eager"
    model.encode(audio, return_dict=False)  # first oneDNN calls may pick other kernels: warm up
    codes_eager = model.encode(audio, return_dict=False)
    audio_eager = model.decode(codes_eager, return_dict=False)
    model.backend = "native"
    codes_native = model.encode(audio, return_dict=False)
    audio_native = model.decode(codes_eager, return_dict=False)
    assert torch.equal(codes_native, codes_eager)
    torch.testing.assert_close(audio_native, audio_eager, rtol=1e-5, atol=1e-5 * audio_eager.abs().max().item())


def test_only_a_completed_build_is_loaded(tmp_path, monkeypatch):
    # Under torchrun another rank may still be linking the .so: without the marker written after a
    # finished build, go through cpp_extension.load (its file lock waits for that rank) instead.
    from torch.utils import cpp_extension

    monkeypatch.setenv("XCODEC_FAST_NATIVE_CACHE", str(tmp_path))
    config = native._build_config()
    capability = config.target_capability()
    key = config.cache_key(capability, native._kernel_dir())
    built = tmp_path / key / f"xcodec_fast_native_{key.rsplit('-', 1)[-1]}.so"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF half-linked")

    locked_builds, opened = [], []

    def locked_build(name, build_directory, **kwargs):  # stands in for the minute-long real build
        Path(build_directory, f"{name}.so").write_bytes(b"\x7fELF linked in full")
        locked_builds.append(name)
        return "freshly built"

    monkeypatch.setattr(cpp_extension, "load", locked_build)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(native.shutil, "which", lambda _: "/usr/bin/c++")
    monkeypatch.setattr(native, "_load_module_from", lambda name, path: opened.append(path) or "from cache")

    assert native._compile(config, capability) == "freshly built" and opened == []
    assert built.with_suffix(".done").read_text() == str(built.stat().st_size)
    assert native._compile(config, capability) == "from cache" and opened == [built] and len(locked_builds) == 1
    built.write_bytes(b"\x7fELF relinked, still being written")  # size no longer the marker's
    assert native._compile(config, capability) == "freshly built" and len(locked_builds) == 2 and len(opened) == 1


def test_a_prebuilt_extension_from_other_sources_is_not_loaded(monkeypatch):
    # An editable install's _C goes stale when kernels/ changes: only a digest match loads it.
    config = native._build_config()
    capability = config.target_capability()
    digest = config.source_digest(native._kernel_dir())
    torch_version = torch.__version__.split("+")[0]

    class Prebuilt:
        def __init__(self, source):
            self.info = f"capability={capability};source={source};sin=x;torch={torch_version}"

        def build_info(self):
            return self.info

    import xcodec_fast

    def install(module):
        monkeypatch.setitem(sys.modules, "xcodec_fast._C", module)
        monkeypatch.setattr(xcodec_fast, "_C", module, raising=False)

    current = Prebuilt(digest)
    install(current)
    assert native._prebuilt(config, capability) is current
    install(Prebuilt("0" * 16))
    assert native._prebuilt(config, capability) is None
    assert native.extension().build_info().split(";")[1] == f"source={digest}"
