"""Triton fused conv blocks (residual unit, snake+conv, snake+transposed conv) against the eager oracle.

Without CUDA the kernels run in Triton's interpreter on CPU tensors (conftest sets TRITON_INTERPRET),
so shapes stay tiny; with CUDA the same tests run at the model's real channel counts.
"""

import math

import pytest
import torch

pytest.importorskip("triton")

import tolerances  # noqa: E402
from xcodec_fast import ops  # noqa: E402
from xcodec_fast.config import XcodecConfig  # noqa: E402
from xcodec_fast.ops import eager  # noqa: E402
from xcodec_fast.ops.triton import conv, residual_unit  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
# Max |error| allowed, as a fraction of the reference's largest magnitude.
TOL = tolerances.TRITON_CONV

# (channels, frames): odd sizes, channels not a power of two.
RU_SHAPES = [(3, 1), (3, 7), (3, 321), (16, 7), (24, 7)] if not CUDA else [
    (3, 321), (24, 7), (64, 1), (64, 16001), (100, 321), (128, 4001), (256, 4001), (512, 1001)]
CONV_CHANNELS = [(3, 5), (16, 24)] if not CUDA else [(3, 5), (64, 128), (256, 512), (512, 1024)]
CONV_FRAMES = [9, 40] if not CUDA else [9, 321, 16000]
TCONV_CHANNELS = [(5, 3), (24, 16)] if not CUDA else [(5, 3), (128, 64), (1024, 512)]
TCONV_FRAMES = [1, 7] if not CUDA else [1, 7, 2001]


@pytest.fixture(autouse=True)
def ieee_fp32(monkeypatch):
    """The parity tests hold fp32 to IEEE; TF32 (torch's default for convs) has its own test below."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rand(*shape, gen, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)


def _alpha(c, gen, dtype=torch.float32):
    return (0.3 + 2 * torch.rand(c, generator=gen)).to(DEVICE, dtype)


def _residual_inputs(c, t, dilation, dtype, seed=0, batch=2, bias=True):
    g = _gen(seed)
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


def _oracle(fn, args):
    """The eager op in fp32 on the same (already rounded) inputs."""
    up = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
    return fn(*up)


def _check(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    scale = max(ref.abs().max().item(), 1.0) if ref.numel() else 1.0
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype] * scale, rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dilation", [1, 3, 9])
@pytest.mark.parametrize("c,t", RU_SHAPES)
@pytest.mark.parametrize("fused", [True, False, None], ids=["fused", "two_kernel", "auto"])
def test_residual_unit_matches_eager(fused, c, t, dilation, dtype):
    if fused and c > 128:
        pytest.skip("the fused kernel holds all C output rows of a T block: it is only launched for small C")
    args = _residual_inputs(c, t, dilation, dtype, seed=c * 1000 + t + dilation)
    out = residual_unit.residual_unit_launch(*args, fused=fused)
    _check(out, _oracle(eager.residual_unit, args), dtype)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernel"])
def test_residual_unit_without_bias(fused):
    args = _residual_inputs(16, 7, 3, torch.float32, seed=5, bias=False)
    _check(residual_unit.residual_unit_launch(*args, fused=fused), eager.residual_unit(*args), torch.float32)


def test_residual_unit_through_dispatch_and_custom_op():
    args = _residual_inputs(24, 7, 9, torch.float32, seed=7)
    with ops.use_backend("triton"):
        assert ops.implementation("residual_unit", args[0].device)[0] == "triton"
        out = ops.residual_unit(*args)
    _check(out, eager.residual_unit(*args), torch.float32)
    torch.testing.assert_close(torch.ops.xcodec_fast_triton.residual_unit(*args), out, atol=0, rtol=0)


def test_residual_unit_non_contiguous_input():
    x, *rest = _residual_inputs(16, 7, 3, torch.float32, seed=11)
    x_nc = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (1, C)-strided frames
    assert not x_nc.is_contiguous()
    with ops.use_backend("triton"):
        out = ops.residual_unit(x_nc, *rest)
    _check(out, eager.residual_unit(x, *rest), torch.float32)


def test_residual_unit_empty_frames_gives_empty_result():
    args = _residual_inputs(16, 0, 3, torch.float32, seed=1)
    with ops.use_backend("triton"):
        out = ops.residual_unit(*args)
    assert out.shape == (2, 16, 0)


def test_mixed_devices_and_dtypes_are_rejected():
    x, a1, w1, b1, d, a2, w2, b2 = _residual_inputs(3, 7, 1, torch.float32, seed=2)
    with ops.use_backend("triton"):
        with pytest.raises(ValueError, match="weight1 is on meta"):
            ops.residual_unit(x, a1, w1.to("meta"), b1, d, a2, w2, b2)
        with pytest.raises(TypeError, match="weight2 has dtype torch.float16"):
            ops.residual_unit(x, a1, w1, b1, d, a2, w2.half(), b2)
        with pytest.raises(ValueError, match="alpha"):
            ops.snake_conv1d(x, a1.to("meta"), torch.zeros(5, 3, 4, device=x.device), None, 2, 1)


def _down_inputs(c_in, c_out, t, stride, dtype, seed):
    g = _gen(seed)
    k = 2 * stride
    return (
        _rand(2, c_in, t, gen=g, scale=2.0, dtype=dtype),
        _alpha(c_in, g, dtype),
        _rand(c_out, c_in, k, gen=g, scale=1 / math.sqrt(k * c_in), dtype=dtype),
        _rand(c_out, gen=g, scale=0.1, dtype=dtype),
        stride,
        math.ceil(stride / 2),
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("t", CONV_FRAMES)
@pytest.mark.parametrize("channels", CONV_CHANNELS, ids=str)
@pytest.mark.parametrize("stride", [2, 4, 5, 8])
def test_snake_conv1d_matches_eager(stride, channels, t, dtype):
    args = _down_inputs(*channels, t, stride, dtype, seed=stride * 100 + t)
    with ops.use_backend("triton"):
        out = ops.snake_conv1d(*args)
    _check(out, _oracle(eager.snake_conv1d, args), dtype)


def test_snake_conv1d_without_bias_and_too_short_input():
    x, alpha, w, _, stride, padding = _down_inputs(3, 5, 9, 4, torch.float32, seed=3)
    with ops.use_backend("triton"):
        out = ops.snake_conv1d(x, alpha, w, None, stride, padding)
        _check(out, eager.snake_conv1d(x, alpha, w, None, stride, padding), torch.float32)
        with pytest.raises(ValueError, match="shorter than the kernel"):
            ops.snake_conv1d(x[..., :2], alpha, w, None, stride, padding)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("t", TCONV_FRAMES)
@pytest.mark.parametrize("channels", TCONV_CHANNELS, ids=str)
@pytest.mark.parametrize("stride", [2, 4, 5, 8])
def test_snake_conv_transpose1d_matches_eager(stride, channels, t, dtype):
    c_in, c_out = channels
    g = _gen(stride * 10 + t)
    args = (
        _rand(2, c_in, t, gen=g, scale=2.0, dtype=dtype),
        _alpha(c_in, g, dtype),
        _rand(c_in, c_out, 2 * stride, gen=g, scale=1 / math.sqrt(2 * c_in), dtype=dtype),
        _rand(c_out, gen=g, scale=0.1, dtype=dtype),
        stride,
        math.ceil(stride / 2),
        stride % 2,
    )
    with ops.use_backend("triton"):
        out = ops.snake_conv_transpose1d(*args)
        if t == 1:
            with pytest.raises(ValueError, match="no frames"):
                ops.snake_conv_transpose1d(args[0][..., :0], *args[1:])
    _check(out, _oracle(eager.snake_conv_transpose1d, args), dtype)


def test_custom_ops_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(2, 16, 50)
        out = torch.ops.xcodec_fast_triton.residual_unit(x, torch.empty(16), torch.empty(16, 16, 7), None, 3,
                                                  torch.empty(16), torch.empty(16, 16, 1), None)
        assert out.shape == (2, 16, 50)
        down = torch.ops.xcodec_fast_triton.snake_conv1d(x, torch.empty(16), torch.empty(32, 16, 10), None, 5, 3)
        assert down.shape == (2, 32, 10)
        up = torch.ops.xcodec_fast_triton.snake_conv_transpose1d(x, torch.empty(16), torch.empty(16, 8, 10), None, 5, 3, 1)
        assert up.shape == (2, 8, 250)


def test_compile_configs_cover_every_site_of_the_default_model():
    """What the launchers pick at every conv site of the published model's config, in every math
    mode and offset width, is among the compile configs (launch-level check: test_triton_compile.py)."""
    from xcodec_fast.ops.triton._launch import MATH_MODES, config_key
    from xcodec_fast.sites import model_sites

    compiled = {config_key(c) for c in conv.COMPILE_CONFIGS + residual_unit.COMPILE_CONFIGS}
    sites = 0
    for site in model_sites(XcodecConfig(), 16_000, dilations=(1,)):
        p = site.params
        for dtype, precision in MATH_MODES:
            for int64 in (False, True):
                if site.op == "snake_conv1d":
                    wanted = [conv.conv_compile_config("site", dtype, p["out_channels"], p["in_channels"], p["kernel"],
                                                       True, False, False, precision, int64)]
                elif site.op == "residual_unit":
                    wanted = residual_unit._site_configs(p["channels"], dtype, precision, int64)
                else:
                    continue
                sites += 1
                for cfg in wanted:
                    assert config_key(cfg) in compiled, (site, cfg.name)
    assert sites == 13 * len(MATH_MODES) * 2  # 6 conv sites + 7 residual-unit sites (encoder and decoder)


def test_conv_dots_follow_torchs_tf32_switch(monkeypatch):
    """fp32 CUDA convs use TF32 exactly while torch lets cuDNN do so; CPU tensors and half dtypes
    never do (the interpreter computes every dot in full fp32, so only the switch is testable here)."""
    from types import SimpleNamespace

    from xcodec_fast.benchmark.machine import op_math_mode
    from xcodec_fast.ops.triton import _math

    def recorded(x):  # what the benchmark records for the Triton conv on x: must follow the kernel's switch
        return op_math_mode("residual_unit", "triton", x.device, x.dtype)

    cuda32 = SimpleNamespace(dtype=torch.float32, device=torch.device("cuda"))
    cuda16 = SimpleNamespace(dtype=torch.float16, device=torch.device("cuda"))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert _math.conv_dot_precision(cuda32) == "tf32" and recorded(cuda32) == "tf32"
    assert _math.conv_dot_precision(cuda16) == "ieee" and recorded(cuda16) == "fp16"
    assert _math.conv_dot_precision(torch.zeros(1)) == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert _math.conv_dot_precision(cuda32) == "ieee" and recorded(cuda32) == "ieee"


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernel"])
@pytest.mark.parametrize("c,t", [(64, 16001), (512, 1001)])
def test_tf32_residual_unit_agreement(c, t, fused, monkeypatch):
    """With torch's default (cudnn.allow_tf32 on) fp32 dots run in TF32: within TF32's own error."""
    if fused and c > 64:
        pytest.skip("fused path is for C <= 64")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    args = _residual_inputs(c, t, 3, torch.float32, seed=c + t)
    out = residual_unit.residual_unit_launch(*args, fused=fused)
    ref = eager.residual_unit(*[tolerances.to_reference(a) if isinstance(a, torch.Tensor) else a for a in args])
    err = (tolerances.to_reference(out) - ref).abs().max().item() / ref.abs().max().item()
    assert err <= tolerances.TRITON_CONV_TF32, err


def test_weights_are_packed_once_and_repacked_when_they_change():
    from xcodec_fast.ops.triton import _pack

    args = list(_residual_inputs(16, 9, 3, torch.float32, seed=21))
    conv7 = torch.nn.Parameter(args[2].clone())
    args[2] = conv7
    with torch.no_grad():
        _pack.STATS.reset()
        first = residual_unit.residual_unit_launch(*args)
        assert _pack.STATS.packs == 2  # conv7 taps-first, 1x1 as a matrix
        assert torch.equal(residual_unit.residual_unit_launch(*args), first)
        assert _pack.STATS.packs == 2  # nothing repacked
        conv7.copy_(conv7 * 0.5)  # in place (load_state_dict): new version, same storage
        halved = residual_unit.residual_unit_launch(*args)
        assert _pack.STATS.packs == 3
        _check(halved, eager.residual_unit(*args), torch.float32)
        conv7.data = conv7.data.to(torch.float64).to(torch.float32)  # module.to(): new storage, same Parameter
        residual_unit.residual_unit_launch(*args)
        assert _pack.STATS.packs == 4
        assert torch.equal(residual_unit.residual_unit_launch(*args), halved)
        assert _pack.STATS.packs == 4


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernel"])
def test_int64_offset_variant_computes_the_same(monkeypatch, fused):
    """The 64-bit offset variant (taken from 2^31 elements on) gives the int32 variant's results
    bit for bit; forced here at small sizes (launch planning at 2^31: test_triton_compile.py)."""
    ru = _residual_inputs(16, 37, 3, torch.float32, seed=31)
    down = _down_inputs(16, 24, 41, 4, torch.float32, seed=32)
    narrow = residual_unit.residual_unit_launch(*ru, fused=fused), conv.snake_conv1d_launch(*down)
    monkeypatch.setattr(conv, "needs_int64_offsets", lambda *t: True)
    monkeypatch.setattr(residual_unit, "needs_int64_offsets", lambda *t: True)
    wide = residual_unit.residual_unit_launch(*ru, fused=fused), conv.snake_conv1d_launch(*down)
    assert all(torch.equal(a, b) for a, b in zip(narrow, wide))
