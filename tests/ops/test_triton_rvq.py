"""Triton RVQ encode / decode / dequantize_project against the eager oracle.

Codes can legitimately differ from eager where two codewords score a float near-tie (the two
compute the same argmax with different roundings), so encode is checked as: every code we pick
is a near-argmax of its own residual (float64), every frame where eager picks differently is a
near tie at the first stage where they part, and such frames are few. Exact ties must go to the
first index, as torch's argmax does.

On CPU: Triton's interpreter (tests/conftest.py), tiny shapes. With a GPU: the real sizes too.
"""

import pytest
import torch

import xcodec_fast.ops as ops
from xcodec_fast.ops import eager

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")

if not ops.availability("triton", DEVICE)[0]:
    pytest.skip(f"triton backend unavailable: {ops.availability('triton', DEVICE)[1]}", allow_module_level=True)

from xcodec_fast.ops.triton import _launch, gather_sum, rvq_encode  # noqa: E402
import tolerances  # noqa: E402
from near_ties import check_near_ties

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
# (batch, dim, frames, quantizers, codebook size): the tiny config's quantizer, odd D / K / T
ENCODE_SHAPES = [(2, 32, 7, 8, 1024), (1, 20, 1, 3, 100), (2, 24, 321, 2, 96)]
if CUDA:  # the real model: D = K = 1024, 8 quantizers
    ENCODE_SHAPES += [(1, 1024, 1, 8, 1024), (2, 1024, 321, 8, 1024), (3, 1024, 2000, 8, 1024)]
# relative size of a "near tie", against |r|^2 + max|e|^2 (the magnitude the scores are formed from)
TIE_TOL = tolerances.TIE
# most frames must agree with eager exactly; eager's half path rounds its distances to half
MAX_MISMATCH = {torch.float32: 0.01, torch.float16: 0.1, torch.bfloat16: 0.2}


def _codebooks(q, k, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cb = torch.randn(q, k, d, generator=g).to(DEVICE, dtype)
    return cb, cb.float().pow(2).sum(-1)


def _signal(b, d, t, cb, seed=1):
    """Frames near sums of codewords plus noise: what the encoder feeds the quantizer."""
    g = torch.Generator().manual_seed(seed)
    q, k, _ = cb.shape
    picks = torch.randint(0, k, (b, t, q), generator=g)
    x = sum(cb[i].float().cpu()[picks[..., i]] * 0.5**i for i in range(q))
    x = x + 0.3 * torch.randn(b, t, d, generator=g)
    return x.permute(0, 2, 1).to(DEVICE, cb.dtype)


def _check_codes(codes, ref, x, codebooks, dtype):
    parted, frames = check_near_ties(codes, ref, x, codebooks, TIE_TOL[dtype])
    allowed = max(1, int(MAX_MISMATCH[dtype] * frames))
    assert parted <= allowed, f"{parted} of {frames} frames differ from eager"


def test_near_tie_check_is_not_vacuous():
    """_check_codes accepts a tied alternative and rejects a clearly worse code (eager only)."""
    cb, norms = _codebooks(2, 64, 16, torch.float32)
    x = _signal(1, 16, 6, cb)
    ref = eager.rvq_encode(x, cb, norms, 2)
    twin = cb.clone()
    twin[0, 63] = twin[0, int(ref[0, 0, 2])]  # a duplicate of frame 2's stage-0 codeword
    ref = eager.rvq_encode(x, twin, norms, 2)
    alt = ref.clone()
    alt[0, 0, 2] = 63
    _check_codes(alt, ref, x, twin, torch.float32)  # a tie: fine
    worse = ref.clone()
    worse[0, 0, 3] = int((2 * x[0, :, 3] @ twin[0].T - twin[0].pow(2).sum(-1)).argmin())
    with pytest.raises(AssertionError, match="below the best score"):
        _check_codes(worse, ref, x, twin, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ENCODE_SHAPES, ids=str)
def test_encode_matches_eager_up_to_near_ties(shape, dtype):
    b, d, t, q, k = shape
    cb, norms = _codebooks(q, k, d, dtype)
    x = _signal(b, d, t, cb)
    with ops.use_backend("triton"):
        codes = ops.rvq_encode(x, cb, norms, q)
    ref = eager.rvq_encode(x, cb, norms, q)
    assert codes.dtype == torch.long and codes.shape == (b, q, t) and codes.is_contiguous()
    _check_codes(codes, ref, x, cb, dtype)
    if dtype == torch.float32 and not CUDA:
        assert torch.equal(codes, ref)  # small random problems have no fp32 near ties


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_encode_exact_ties_pick_the_first_index(dtype):
    d = 1024 if CUDA else 32
    k = 300  # several codeword tiles for every dtype's BLOCK_K
    # Small integers: every score is an exact integer in fp32 whatever the summation order, so the
    # ties are exact on every BLAS (the interpreter's numpy dot rounds by lane position otherwise).
    g = torch.Generator().manual_seed(3)
    cb = torch.randint(-2, 3, (2, k, d), generator=g).to(DEVICE, dtype)
    # stage 0: codeword 37 repeated at 40 (same tile) and 250 (a later tile); frames equal to it
    cb[0, 40] = cb[0, 37]
    cb[0, 250] = cb[0, 37]
    # stage 1: the residual is then exactly 0, so the best codewords are the zero ones: 5, 9, 130
    cb[1] += torch.sign(cb[1])  # every other codeword has a clearly positive norm
    cb[1, 5] = cb[1, 9] = cb[1, 130] = 0
    norms = cb.float().pow(2).sum(-1)
    frames = 19
    x = cb[0, 37][None, :, None].repeat(2, 1, frames)
    x[1, :, ::2] = _signal(1, d, frames, cb, seed=4)[0, :, ::2]  # ordinary frames in between
    with ops.use_backend("triton"):
        codes = ops.rvq_encode(x, cb, norms, 2)
    ref = eager.rvq_encode(x, cb, norms, 2)
    tied = torch.ones(2, frames, dtype=torch.bool, device=DEVICE)
    tied[1, ::2] = False
    assert (codes[:, 0][tied] == 37).all() and (ref[:, 0][tied] == 37).all()
    assert (codes[:, 1][tied] == 5).all() and (ref[:, 1][tied] == 5).all()
    _check_codes(codes, ref, x, cb, dtype)


def test_encode_fewer_quantizers_and_layouts():
    cb, norms = _codebooks(8, 64, 16, torch.float32)
    x = _signal(2, 16, 9, cb)
    x_nc = x.permute(0, 2, 1).contiguous().permute(0, 2, 1)  # same values, T-major memory
    assert not x_nc.is_contiguous()
    with ops.use_backend("triton"):
        all_codes = ops.rvq_encode(x, cb, norms, 8)
        three = ops.rvq_encode(x_nc, cb, norms, 3)
        one = ops.rvq_encode(x, cb, norms, 1)
    assert torch.equal(three, all_codes[:, :3]) and torch.equal(one, all_codes[:, :1])
    assert torch.equal(all_codes, eager.rvq_encode(x, cb, norms, 8))


def test_huge_planes_are_split_along_frames(monkeypatch):
    """Inputs whose channels x frames exceed int32 offsets run in frame chunks (shrunk here)."""
    cb, norms = _codebooks(3, 64, 16, torch.float32)
    x = _signal(2, 16, 50, cb)
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
    torch.testing.assert_close(proj, eager.dequantize_project(codes_ref, cb, w, bvec), rtol=1e-5, atol=1e-5)


def test_encode_bad_inputs():
    cb, norms = _codebooks(2, 64, 16, torch.float32)
    x = _signal(1, 16, 5, cb)
    with ops.use_backend("triton"):
        assert ops.rvq_encode(x[..., :0], cb, norms, 2).shape == (1, 2, 0)
        with pytest.raises(ValueError, match="num_quantizers"):
            ops.rvq_encode(x, cb, norms, 3)
        with pytest.raises(ValueError, match="channels"):
            ops.rvq_encode(x[:, :8], cb, norms, 2)
        with pytest.raises(TypeError, match="dtype"):
            ops.rvq_encode(x.half(), cb, norms, 2)
        bad = x.clone()
        bad[0, 3, 2] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            ops.rvq_encode(bad, cb, norms, 2)


DECODE_SHAPES = [(2, 8, 7, 32, 1024), (1, 3, 1, 20, 100), (2, 2, 321, 24, 96)]
if CUDA:
    DECODE_SHAPES += [(2, 8, 321, 1024, 1024), (3, 8, 2000, 1024, 1024)]


def _codes(b, q, t, k, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (b, q, t), generator=g).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=str)
def test_decode_is_bitwise_eager(shape, dtype):
    b, q, t, d, k = shape
    cb, _ = _codebooks(q + 1, k, d, dtype)  # the model may hold more quantizers than the codes use
    codes = _codes(b, q, t, k)
    with ops.use_backend("triton"):
        out = ops.rvq_decode(codes, cb)
        out32 = ops.rvq_decode(codes.int(), cb)
    ref = eager.rvq_decode(codes, cb)
    assert out.dtype == dtype and out.shape == (b, d, t) and out.is_contiguous()
    assert torch.equal(out, ref)  # same order of additions, same rounding after each
    assert torch.equal(out32, ref)


@pytest.mark.parametrize("precomputed", [False, True], ids=["fallback", "precomputed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=str)
def test_dequantize_project_matches_eager(shape, dtype, bias, precomputed):
    b, q, t, d, k = shape
    d_out = d // 4 + 3
    cb, _ = _codebooks(q, k, d, dtype)
    g = torch.Generator().manual_seed(7)
    w = (torch.randn(d_out, d, generator=g) / d**0.5).to(DEVICE, dtype)
    bvec = torch.randn(d_out, generator=g).to(DEVICE, dtype) if bias else None
    proj = torch.matmul(cb.float(), w.float().t()).to(dtype) if precomputed else None
    codes = _codes(b, q, t, k)
    with ops.use_backend("triton"):
        out = ops.dequantize_project(codes, cb, w, bvec, proj)
    assert out.dtype == dtype and out.shape == (b, d_out, t) and out.is_contiguous()
    # the truth in float64; eager (sum then project) and we (project then sum) round differently
    truth = eager.dequantize_project(codes, cb.double(), w.double(), bvec.double() if bias else None)
    ref = eager.dequantize_project(codes, cb, w, bvec)
    scale = truth.abs().max().item()
    tol = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype] * scale
    assert (out.double() - truth).abs().max().item() <= tol
    assert (ref.double() - truth).abs().max().item() <= 2 * tol  # sanity: the oracle is as close


def test_decode_bad_inputs():
    cb, _ = _codebooks(2, 16, 8, torch.float32)
    w = torch.randn(4, 8, device=DEVICE)
    with ops.use_backend("triton"):
        assert ops.rvq_decode(_codes(1, 2, 0, 16), cb).shape == (1, 8, 0)
        assert ops.dequantize_project(_codes(1, 2, 0, 16), cb, w, None).shape == (1, 4, 0)
        with pytest.raises(ValueError, match="must lie in"):
            ops.rvq_decode(_codes(1, 2, 3, 16) + 16, cb)
        with pytest.raises(TypeError, match="integer"):
            ops.rvq_decode(_codes(1, 2, 3, 16).float(), cb)
        with pytest.raises(ValueError, match="quantizers"):
            ops.rvq_decode(_codes(1, 3, 3, 16), cb)
        with pytest.raises(ValueError, match="projected_codebooks"):
            ops.dequantize_project(_codes(1, 2, 3, 16), cb, w, None, torch.zeros(2, 16, 5, device=DEVICE))


@pytest.mark.gpu
def test_device_mix_is_an_error():
    cb, norms = _codebooks(2, 16, 8, torch.float32)
    with ops.use_backend("triton"):
        with pytest.raises(ValueError, match="cpu"):
            ops.rvq_decode(_codes(1, 2, 3, 16).cpu(), cb)
        with pytest.raises(ValueError, match="cpu"):
            ops.rvq_encode(torch.randn(1, 8, 3), cb, norms, 2)


def test_dispatch_and_custom_ops():
    with ops.use_backend("triton"):
        for name, module in (("rvq_encode", rvq_encode), ("rvq_decode", gather_sum), ("dequantize_project", gather_sum)):
            assert ops.backend.implementation(name, DEVICE) == ("triton", getattr(module, name))
    cb, norms = _codebooks(2, 32, 16, torch.float32)
    x = _signal(1, 16, 5, cb)
    codes = _codes(1, 2, 5, 32)
    w, bvec = torch.randn(6, 16, device=DEVICE), torch.randn(6, device=DEVICE)
    torch.library.opcheck(rvq_encode.rvq_encode_op, (x, cb, norms, 2))
    torch.library.opcheck(gather_sum.rvq_decode_op, (codes, cb))
    torch.library.opcheck(gather_sum.dequantize_project_op, (codes, cb, w, bvec, None))


def test_torch_compile_traces_the_custom_ops():
    cb, norms = _codebooks(2, 32, 16, torch.float32)
    x = _signal(1, 16, 5, cb)
    w, bvec = torch.randn(6, 16, device=DEVICE), torch.randn(6, device=DEVICE)

    def roundtrip(x):
        codes = rvq_encode.rvq_encode_op(x, cb, norms, 2)
        return codes, gather_sum.rvq_decode_op(codes, cb), gather_sum.dequantize_project_op(codes, cb, w, bvec, None)

    got = torch.compile(roundtrip, backend="aot_eager", fullgraph=True)(x)
    for a, b in zip(got, roundtrip(x)):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_cuda_graph_capture():
    cb, norms = _codebooks(8, 1024, 1024, torch.float16)
    x = _signal(2, 1024, 300, cb)
    codes = rvq_encode.rvq_encode_op(x, cb, norms, 8)  # compile outside the capture
    gather_sum.rvq_decode_op(codes, cb)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        codes = rvq_encode.rvq_encode_op(x, cb, norms, 8)
        dec = gather_sum.rvq_decode_op(codes, cb)
    x.copy_(_signal(2, 1024, 300, cb, seed=9))
    graph.replay()
    assert torch.equal(codes, rvq_encode.rvq_encode_op(x, cb, norms, 8))
    assert torch.equal(dec, gather_sum.rvq_decode_op(codes, cb))
