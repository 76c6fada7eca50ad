"""Triton snake / add_snake against the eager oracle.

On CPU these run under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so the
shapes stay tiny; with a GPU the same tests run natively at larger sizes.
"""

import pytest
import torch

import xcodec_fast.ops as ops
from xcodec_fast.ops import eager

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")

if not ops.availability("triton", DEVICE)[0]:
    pytest.skip(f"triton backend unavailable: {ops.availability('triton', DEVICE)[1]}", allow_module_level=True)

from xcodec_fast.ops.triton import snake as tsnake  # noqa: E402  (after the availability check)

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
SHAPES = [(2, 3, 1), (1, 64, 7), (2, 3, 321), (1, 96, 300)]
if CUDA:
    SHAPES += [(2, 1024, 50), (3, 64, 16001), (1, 32, 100003)]
ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, c, t = shape
    x = (torch.randn(shape, generator=g) * 3).to(DEVICE, dtype)
    h = torch.randn(shape, generator=g).to(DEVICE, dtype)
    alpha = (torch.rand(c, generator=g) * 1.9 + 0.1).to(DEVICE, dtype)  # trained α live around 0.1..2
    return x, h, alpha


def _check(out, x_used, alpha, dtype):
    """fp32: eager in fp32 to within fp32 rounding of the result. Half: computed in fp32 and
    rounded once, so within one ulp of eager evaluated in fp32 on the (exact) upcast inputs."""
    ref = eager.snake(x_used.float(), alpha.float())
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
    # the 1/(α+1e-9)·sin² term can exceed |out|: its rounding sets the fp32 error floor
    scale = ref.abs() + (1.0 / alpha.float()).reshape(1, -1, 1)
    err = (out.float() - ref).abs()
    bound = (4 * ULP[torch.float32] if dtype == torch.float32 else ULP[dtype]) * scale + 1e-30
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g}, worst ratio {(err / bound).max().item():.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_snake_matches_eager(shape, dtype):
    x, _, alpha = _inputs(shape, dtype)
    with ops.use_backend("triton"):
        out = ops.snake(x, alpha)
    _check(out, x, alpha, dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(out, eager.snake(x, alpha), rtol=4e-6, atol=4e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_add_snake_matches_eager(shape, dtype):
    x, h, alpha = _inputs(shape, dtype, seed=1)
    with ops.use_backend("triton"):
        y, s = ops.add_snake(x, h, alpha)
    y_ref, s_ref = eager.add_snake(x, h, alpha)
    assert torch.equal(y, y_ref)  # one rounding of x + h in both
    _check(s, y_ref, alpha, dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(s, s_ref, rtol=4e-6, atol=4e-6)


def test_dispatch_picks_triton():
    if CUDA:  # "auto" prefers Triton for CUDA tensors (CPU tensors go to native or eager)
        with ops.use_backend("auto"):
            assert ops.backend.implementation("snake", DEVICE)[0] == "triton"
    with ops.use_backend("triton"):
        assert ops.backend.implementation("snake", DEVICE) == ("triton", tsnake.snake)
        assert ops.backend.implementation("add_snake", DEVICE) == ("triton", tsnake.add_snake)
    with ops.use_backend("eager"):
        assert ops.backend.implementation("snake", DEVICE)[0] == "eager"


def test_non_contiguous_input_and_alpha_shape():
    b, c, t = 2, 5, 33
    x_btc = torch.randn(b, t, c).to(DEVICE)
    x = x_btc.transpose(1, 2)  # (B, C, T) view, T not contiguous
    assert not x.is_contiguous()
    alpha = (torch.rand(1, c, 1) + 0.5).to(DEVICE)  # the model's parameter shape
    h = torch.randn(b, c, t).to(DEVICE)
    with ops.use_backend("triton"):
        out = ops.snake(x, alpha)
        y, s = ops.add_snake(x, h, alpha)
        out_c = ops.snake(x.contiguous(), alpha.reshape(-1))
    assert torch.equal(out, out_c)
    assert torch.equal(y, x + h)
    assert torch.equal(s, tsnake.snake((x + h).contiguous(), alpha))


def test_long_rows_loop_over_grid_limit(monkeypatch):
    # rows longer than 65535 blocks walk T with a grid-strided loop; shrink the limit to test it
    monkeypatch.setattr(tsnake, "MAX_GRID_Y", 2)
    x, h, alpha = _inputs((1, 2, 5 * 1024 + 3), torch.float32)
    with ops.use_backend("triton"):
        out = ops.snake(x, alpha)
        y, s = ops.add_snake(x, h, alpha)
    _check(out, x, alpha, torch.float32)
    _check(s, y, alpha, torch.float32)


def test_empty_frames():
    x = torch.empty(2, 3, 0, device=DEVICE)
    alpha = torch.ones(3, device=DEVICE)
    with ops.use_backend("triton"):
        assert ops.snake(x, alpha).shape == (2, 3, 0)
        y, s = ops.add_snake(x, x, alpha)
    assert y.shape == s.shape == (2, 3, 0)


def test_bad_inputs_are_clear_errors():
    x = torch.randn(1, 3, 8, device=DEVICE)
    alpha = torch.ones(3, device=DEVICE)
    with ops.use_backend("triton"):
        with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
            ops.snake(x.to(torch.int32), alpha)
        with pytest.raises(TypeError, match="dtype"):
            ops.snake(x, alpha.half())
        with pytest.raises(ValueError, match="4 values for 3 channels"):
            ops.snake(x, torch.ones(4, device=DEVICE))
        with pytest.raises(ValueError, match="3 dimensions"):
            ops.snake(x[0], alpha)
        with pytest.raises(ValueError, match="shape"):
            ops.add_snake(x, x[..., :4], alpha)


@pytest.mark.gpu
def test_device_mix_is_an_error():
    x = torch.randn(1, 3, 8, device="cuda")
    with ops.use_backend("triton"), pytest.raises(ValueError, match="is on cpu"):
        ops.snake(x, torch.ones(3))


def test_custom_ops_pass_opcheck():
    x, h, alpha = _inputs((1, 3, 20), torch.float32)
    torch.library.opcheck(tsnake.snake_op, (x, alpha))
    torch.library.opcheck(tsnake.add_snake_op, (x, h, alpha))


def test_torch_compile_traces_the_custom_ops():
    x, h, alpha = _inputs((1, 3, 40), torch.float32)

    def block(x, h, alpha):
        y, s = tsnake.add_snake_op(x, h, alpha)
        return tsnake.snake_op(s, alpha) + y

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, h, alpha), block(x, h, alpha), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_graph_capture():
    x, h, alpha = _inputs((2, 64, 1000), torch.float16)
    tsnake.add_snake_op(x, h, alpha)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, s = tsnake.add_snake_op(x, h, alpha)
    x.copy_(torch.randn_like(x))
    graph.replay()
    y_ref, s_ref = tsnake.add_snake_op(x, h, alpha)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


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
