"""The Triton backend itself: dispatch, the probe launch, launch planning (grid limits, int64
offsets, frame chunks), weight packing, the TF32 switch, and its custom ops under opcheck,
torch.compile and CUDA graphs. Op parity: tests/ops/test_<op>.py.

On CPU these run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so the
shapes stay tiny; with a GPU the same tests run natively.
"""

import pytest
import torch

import tolerances
from op_cases import (
    CUDA,
    assert_snake_within_ulps,
    codebooks,
    down_inputs,
    random_codes,
    residual_inputs,
    rvq_signal,
    snake_inputs,
)
from xcodec_fast import ops
from xcodec_fast.config import XcodecConfig
from xcodec_fast.ops import eager

DEVICE = torch.device("cuda" if CUDA else "cpu")

if not ops.availability("triton", DEVICE)[0]:
    pytest.skip(f"triton backend unavailable: {ops.availability('triton', DEVICE)[1]}", allow_module_level=True)

# after the availability check: importing a kernel module needs Triton
from xcodec_fast.ops.triton import _launch, conv, gather_sum, residual_unit, rvq_encode  # noqa: E402
from xcodec_fast.ops.triton import snake as tsnake  # noqa: E402


@pytest.fixture
def ieee_fp32(monkeypatch):
    """Tests held to fp32's bound run IEEE dots; TF32 (torch's default for convs) has its own test."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def assert_snake_matches(out, x_used, alpha):
    """Triton's fp32 snake bound (tests/tolerances.py) against eager in fp32 on the same inputs."""
    ref = eager.snake(x_used.float(), alpha.float())
    assert out.dtype == torch.float32 and out.shape == ref.shape and out.is_contiguous()
    assert_snake_within_ulps(out, ref, alpha, tolerances.SNAKE_ULPS["triton", torch.float32])


def assert_conv_matches(out, ref):
    assert out.dtype == torch.float32 and out.shape == ref.shape
    tolerances.assert_close(out.float(), ref, tolerances.CONV["triton", torch.float32])


def test_dispatch_picks_triton():
    if CUDA:  # "auto" prefers Triton for CUDA tensors (CPU tensors go to native or eager)
        with ops.use_backend("auto"):
            assert ops.backend.implementation("snake", DEVICE)[0] == "triton"
    with ops.use_backend("triton"):
        assert ops.backend.implementation("snake", DEVICE) == ("triton", tsnake.snake)
        assert ops.backend.implementation("add_snake", DEVICE) == ("triton", tsnake.add_snake)
    with ops.use_backend("eager"):
        assert ops.backend.implementation("snake", DEVICE)[0] == "eager"


def test_a_failing_probe_launch_makes_the_backend_unavailable(monkeypatch):
    """Before auto (or a request by name) can run Triton on a device, a probe launch of each kernel
    family must build and agree with eager; otherwise the backend is unavailable, with the reason
    that `xcodec-fast info` prints."""
    import xcodec_fast.ops.triton as triton_backend
    from xcodec_fast.ops import backend

    assert triton_backend.probe(DEVICE) is None

    def broken(*args, **kwargs):
        raise RuntimeError("ptxas fatal: unsupported gpu architecture")

    monkeypatch.setattr(tsnake, "_launch", broken)
    assert "ptxas fatal" in triton_backend.probe(DEVICE)
    monkeypatch.setattr(backend, "_availability", {})  # forget the cached answer for this test only
    ok, reason = ops.availability("triton", DEVICE)
    assert not ok and "probe launch failed" in reason and "ptxas fatal" in reason
    assert backend.resolve_auto(torch.device(DEVICE)) != "triton"
    assert "probe launch failed" in backend.describe(DEVICE)["triton"]
    with ops.use_backend("triton"), pytest.raises(ops.BackendUnavailableError, match="probe launch failed"):
        ops.snake(torch.zeros(1, 2, 3, device=DEVICE), torch.ones(2, device=DEVICE))
    monkeypatch.setattr(tsnake, "_launch", lambda x, h, alpha: (None, x * 0 + 1))  # builds, wrong values
    assert "snake differs from eager" in triton_backend.probe(DEVICE)


def test_long_rows_loop_over_grid_limit(monkeypatch):
    # rows longer than 65535 blocks walk T with a grid-strided loop; shrink the limit to test it
    monkeypatch.setattr(tsnake, "MAX_GRID_Y", 2)
    x, h, alpha = snake_inputs((1, 2, 5 * 1024 + 3), torch.float32)
    with ops.use_backend("triton"):
        out = ops.snake(x, alpha)
        y, s = ops.add_snake(x, h, alpha)
    assert_snake_matches(out, x, alpha)
    assert_snake_matches(s, y, alpha)


def test_snake_custom_ops_pass_opcheck():
    x, h, alpha = snake_inputs((1, 3, 20), torch.float32)
    torch.library.opcheck(tsnake.snake_op, (x, alpha))
    torch.library.opcheck(tsnake.add_snake_op, (x, h, alpha))


def test_torch_compile_traces_the_snake_custom_ops():
    x, h, alpha = snake_inputs((1, 3, 40), torch.float32)

    def block(x, h, alpha):
        y, s = tsnake.add_snake_op(x, h, alpha)
        return tsnake.snake_op(s, alpha) + y

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, h, alpha), block(x, h, alpha), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_graph_capture_of_add_snake():
    x, h, alpha = snake_inputs((2, 64, 1000), torch.float16)
    tsnake.add_snake_op(x, h, alpha)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, s = tsnake.add_snake_op(x, h, alpha)
    x.copy_(torch.randn_like(x))
    graph.replay()
    y_ref, s_ref = tsnake.add_snake_op(x, h, alpha)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


@pytest.mark.usefixtures("ieee_fp32")
def test_residual_unit_through_dispatch_and_custom_op():
    args = residual_inputs(24, 7, 9, torch.float32, seed=7)
    with ops.use_backend("triton"):
        assert ops.implementation("residual_unit", args[0].device)[0] == "triton"
        out = ops.residual_unit(*args)
    assert_conv_matches(out, eager.residual_unit(*args))
    torch.testing.assert_close(torch.ops.xcodec_fast_triton.residual_unit(*args), out, atol=0, rtol=0)


def test_conv_custom_ops_fake_shapes():
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
    args = residual_inputs(c, t, 3, torch.float32, seed=c + t)
    out = residual_unit.residual_unit_launch(*args, fused=fused)
    ref = eager.residual_unit(*[tolerances.to_reference(a) if isinstance(a, torch.Tensor) else a for a in args])
    err = (tolerances.to_reference(out) - ref).abs().max().item() / ref.abs().max().item()
    assert err <= tolerances.TRITON_CONV_TF32, err


@pytest.mark.usefixtures("ieee_fp32")
def test_weights_are_packed_once_and_repacked_when_they_change():
    from xcodec_fast.ops.triton import _pack

    args = list(residual_inputs(16, 9, 3, torch.float32, seed=21))
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
        assert_conv_matches(halved, eager.residual_unit(*args))
        conv7.data = conv7.data.to(torch.float64).to(torch.float32)  # module.to(): new storage, same Parameter
        residual_unit.residual_unit_launch(*args)
        assert _pack.STATS.packs == 4
        assert torch.equal(residual_unit.residual_unit_launch(*args), halved)
        assert _pack.STATS.packs == 4


@pytest.mark.usefixtures("ieee_fp32")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernel"])
def test_int64_offset_variant_computes_the_same(monkeypatch, fused):
    """The 64-bit offset variant (taken from 2^31 elements on) gives the int32 variant's results
    bit for bit; forced here at small sizes (launch planning at 2^31: test_triton_compile.py)."""
    ru = residual_inputs(16, 37, 3, torch.float32, seed=31)
    down = down_inputs(16, 24, 41, 4, torch.float32, seed=32)
    narrow = residual_unit.residual_unit_launch(*ru, fused=fused), conv.snake_conv1d_launch(*down)
    monkeypatch.setattr(conv, "needs_int64_offsets", lambda *t: True)
    monkeypatch.setattr(residual_unit, "needs_int64_offsets", lambda *t: True)
    wide = residual_unit.residual_unit_launch(*ru, fused=fused), conv.snake_conv1d_launch(*down)
    assert all(torch.equal(a, b) for a, b in zip(narrow, wide))


def test_huge_planes_are_split_along_frames(monkeypatch):
    """Inputs whose channels x frames exceed int32 offsets run in frame chunks (shrunk here)."""
    cb, norms = codebooks(3, 64, 16, torch.float32)
    x = rvq_signal(2, 16, 50, cb)
    codes_ref = eager.rvq_encode(x, cb, norms, 3)
    w, bvec = torch.randn(6, 16, device=DEVICE), torch.randn(6, device=DEVICE)
    monkeypatch.setattr(_launch, "INT32_LIMIT", 16 * 20)  # 16-frame chunks for D = 16
    assert len(_launch.frame_chunks(50, 16)) == 4
    with ops.use_backend("triton"):
        codes = ops.rvq_encode(x, cb, norms, 3)
        dec = ops.rvq_decode(codes_ref, cb)
        proj = ops.dequantize_project(codes_ref, cb, w, bvec)
    assert torch.equal(codes, codes_ref)
    assert torch.equal(dec, eager.rvq_decode(codes_ref, cb))
    tolerances.assert_close(proj, eager.dequantize_project(codes_ref, cb, w, bvec), tolerances.DEQUANTIZE_PROJECT_VS_EAGER)


def test_rvq_dispatch_and_custom_ops():
    with ops.use_backend("triton"):
        for name, module in (("rvq_encode", rvq_encode), ("rvq_decode", gather_sum), ("dequantize_project", gather_sum)):
            assert ops.backend.implementation(name, DEVICE) == ("triton", getattr(module, name))
    cb, norms = codebooks(2, 32, 16, torch.float32)
    x = rvq_signal(1, 16, 5, cb)
    codes = random_codes(1, 2, 5, 32)
    w, bvec = torch.randn(6, 16, device=DEVICE), torch.randn(6, device=DEVICE)
    torch.library.opcheck(rvq_encode.rvq_encode_op, (x, cb, norms, 2))
    torch.library.opcheck(gather_sum.rvq_decode_op, (codes, cb))
    torch.library.opcheck(gather_sum.dequantize_project_op, (codes, cb, w, bvec, None))


def test_torch_compile_traces_the_rvq_custom_ops():
    cb, norms = codebooks(2, 32, 16, torch.float32)
    x = rvq_signal(1, 16, 5, cb)
    w, bvec = torch.randn(6, 16, device=DEVICE), torch.randn(6, device=DEVICE)

    def roundtrip(x):
        codes = rvq_encode.rvq_encode_op(x, cb, norms, 2)
        return codes, gather_sum.rvq_decode_op(codes, cb), gather_sum.dequantize_project_op(codes, cb, w, bvec, None)

    got = torch.compile(roundtrip, backend="aot_eager", fullgraph=True)(x)
    for a, b in zip(got, roundtrip(x)):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_cuda_graph_capture_of_rvq():
    cb, norms = codebooks(8, 1024, 1024, torch.float16)
    x = rvq_signal(2, 1024, 300, cb)
    codes = rvq_encode.rvq_encode_op(x, cb, norms, 8)  # compile outside the capture
    gather_sum.rvq_decode_op(codes, cb)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        codes = rvq_encode.rvq_encode_op(x, cb, norms, 8)
        dec = gather_sum.rvq_decode_op(codes, cb)
    x.copy_(rvq_signal(2, 1024, 300, cb, seed=9))
    graph.replay()
    assert torch.equal(codes, rvq_encode.rvq_encode_op(x, cb, norms, 8))
    assert torch.equal(dec, gather_sum.rvq_decode_op(codes, cb))
