"""rvq_encode, rvq_decode and dequantize_project (xcodec_fast.ops) on every backend that implements
them, against eager: Triton all three, native rvq_encode (its codeword products on oneDNN).

Codes can legitimately differ from eager where two codewords score a float near-tie (the two
compute the same argmax with different roundings), so encode is checked as: every code we pick
is a near-argmax of its own residual (float64), every frame where eager picks differently is a
near tie at the first stage where they part, and such frames are few. Exact ties must go to the
first index, as torch's argmax does.

On CPU: Triton's interpreter (tests/conftest.py), tiny shapes; with a GPU the real sizes too.
Native: CPU, the tiny shapes and the real model's (D = K = 1024, 8 quantizers) at odd frame counts.
"""

import pytest
import torch

import tolerances
from near_ties import check_near_ties
from op_cases import (CUDA, DEVICES, TRITON_DTYPES, backend_params, codebooks, measure_dispatch, random_codes,
                      rvq_signal, run)
from xcodec_fast import ops
from xcodec_fast.ops import eager, native, packing, tuning

BACKENDS = backend_params("triton")
# (batch, dim, frames, quantizers, codebook size): the tiny config's quantizer, odd D / K / T
ENCODE_SHAPES = [(2, 32, 7, 8, 1024), (1, 20, 1, 3, 100), (2, 24, 321, 2, 96)]
if CUDA:  # the real model: D = K = 1024, 8 quantizers
    ENCODE_SHAPES += [(1, 1024, 1, 8, 1024), (2, 1024, 321, 8, 1024), (3, 1024, 2000, 8, 1024)]
NATIVE_ENCODE_SHAPES = ENCODE_SHAPES[:3] + [(1, 1024, 321, 8, 1024), (3, 1024, 77, 8, 1024)]
ENCODE_CASES = (backend_params("triton", [(s, d) for s in ENCODE_SHAPES for d in TRITON_DTYPES])
                + backend_params("native", [(s, torch.float32) for s in NATIVE_ENCODE_SHAPES]))
ENCODE_BACKENDS = BACKENDS + backend_params("native")
# (batch, quantizers, frames, dim, codebook size)
DECODE_SHAPES = [(2, 8, 7, 32, 1024), (1, 3, 1, 20, 100), (2, 2, 321, 24, 96)]
if CUDA:
    DECODE_SHAPES += [(2, 8, 321, 1024, 1024), (3, 8, 2000, 1024, 1024)]


def assert_codes_match(codes, ref, x, cb, backend, dtype):
    parted, frames = check_near_ties(codes, ref, x, cb, tolerances.TIE[dtype])
    allowed = max(1, int(tolerances.RVQ_MISMATCH[backend, dtype] * frames))
    assert parted <= allowed, f"{parted} of {frames} frames differ from eager"


def test_near_tie_check_is_not_vacuous():
    """The code check accepts a tied alternative and rejects a clearly worse code (eager only)."""
    cb, norms = codebooks(2, 64, 16, torch.float32)
    x = rvq_signal(1, 16, 6, cb)
    ref = eager.rvq_encode(x, cb, norms, 2)
    twin = cb.clone()
    twin[0, 63] = twin[0, int(ref[0, 0, 2])]  # a duplicate of frame 2's stage-0 codeword
    ref = eager.rvq_encode(x, twin, norms, 2)
    alt = ref.clone()
    alt[0, 0, 2] = 63
    assert_codes_match(alt, ref, x, twin, "triton", torch.float32)  # a tie: fine
    worse = ref.clone()
    worse[0, 0, 3] = int((2 * x[0, :, 3] @ twin[0].T - twin[0].pow(2).sum(-1)).argmin())
    with pytest.raises(AssertionError, match="below the best score"):
        assert_codes_match(worse, ref, x, twin, "triton", torch.float32)


@pytest.mark.parametrize("backend,shape,dtype", ENCODE_CASES)
def test_encode_matches_eager_up_to_near_ties(backend, shape, dtype):
    b, d, t, q, k = shape
    cb, norms = codebooks(q, k, d, dtype, device=DEVICES[backend])
    x = rvq_signal(b, d, t, cb)
    codes = run(backend, "rvq_encode", x, cb, norms, q)
    ref = eager.rvq_encode(x, cb, norms, q)
    assert codes.dtype == torch.long and codes.shape == (b, q, t) and codes.is_contiguous()
    assert_codes_match(codes, ref, x, cb, backend, dtype)
    if dtype == torch.float32 and not CUDA:
        assert torch.equal(codes, ref)  # small random problems have no fp32 near ties


@pytest.mark.parametrize("backend,dtype", backend_params("triton", [(d,) for d in TRITON_DTYPES])
                         + backend_params("native", [(torch.float32,)]))
def test_encode_exact_ties_pick_the_first_index(backend, dtype):
    device = DEVICES[backend]
    d = 1024 if CUDA or backend == "native" else 32
    k = 300  # several codeword tiles for every dtype's BLOCK_K
    # Small integers: every score is an exact integer in fp32 whatever the summation order, so the
    # ties are exact on every BLAS (the interpreter's numpy dot rounds by lane position otherwise).
    g = torch.Generator().manual_seed(3)
    cb = torch.randint(-2, 3, (2, k, d), generator=g).to(device, dtype)
    # stage 0: codeword 37 repeated at 40 (same tile) and 250 (a later tile); frames equal to it
    cb[0, 40] = cb[0, 37]
    cb[0, 250] = cb[0, 37]
    # stage 1: the residual is then exactly 0, so the best codewords are the zero ones: 5, 9, 130
    cb[1] += torch.sign(cb[1])  # every other codeword has a clearly positive norm
    cb[1, 5] = cb[1, 9] = cb[1, 130] = 0
    norms = cb.float().pow(2).sum(-1)
    frames = 19
    x = cb[0, 37][None, :, None].repeat(2, 1, frames)
    x[1, :, ::2] = rvq_signal(1, d, frames, cb, seed=4)[0, :, ::2]  # ordinary frames in between
    codes = run(backend, "rvq_encode", x, cb, norms, 2)
    ref = eager.rvq_encode(x, cb, norms, 2)
    tied = torch.ones(2, frames, dtype=torch.bool, device=device)
    tied[1, ::2] = False
    assert (codes[:, 0][tied] == 37).all() and (ref[:, 0][tied] == 37).all()
    assert (codes[:, 1][tied] == 5).all() and (ref[:, 1][tied] == 5).all()
    assert_codes_match(codes, ref, x, cb, backend, dtype)


@pytest.mark.parametrize("backend", ENCODE_BACKENDS)
def test_encode_fewer_quantizers_and_layouts(backend):
    cb, norms = codebooks(8, 64, 16, torch.float32, device=DEVICES[backend])
    x = rvq_signal(2, 16, 9, cb)
    x_nc = x.permute(0, 2, 1).contiguous().permute(0, 2, 1)  # same values, T-major memory
    assert not x_nc.is_contiguous()
    all_codes = run(backend, "rvq_encode", x, cb, norms, 8)
    three = run(backend, "rvq_encode", x_nc, cb, norms, 3)
    one = run(backend, "rvq_encode", x, cb, norms, 1)
    assert torch.equal(three, all_codes[:, :3]) and torch.equal(one, all_codes[:, :1])
    assert torch.equal(all_codes, eager.rvq_encode(x, cb, norms, 8))


@pytest.mark.parametrize("backend", ENCODE_BACKENDS)
def test_encode_bad_inputs(backend):
    cb, norms = codebooks(2, 64, 16, torch.float32, device=DEVICES[backend])
    x = rvq_signal(1, 16, 5, cb)
    with ops.use_backend(backend):
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


NATIVE = backend_params("native")


@pytest.mark.parametrize("backend", NATIVE)
def test_native_codebooks_are_reordered_once_and_again_when_they_change(backend):
    cb, norms = codebooks(3, 64, 16, torch.float32, device=DEVICES[backend])
    x = rvq_signal(2, 16, 11, cb)
    packing.STATS.reset()
    first = run(backend, "rvq_encode", x, cb, norms, 3)
    assert torch.equal(run(backend, "rvq_encode", x, cb, norms, 3), first) and packing.STATS.packs == 1
    cb[1].copy_(cb[1].flip(0))  # stage 1's codewords in reverse order: its codes must follow
    norms = cb.pow(2).sum(-1)
    again = run(backend, "rvq_encode", x, cb, norms, 3)
    assert packing.STATS.packs == 2
    assert torch.equal(again, eager.rvq_encode(x, cb, norms, 3))
    assert torch.equal(again[:, 0], first[:, 0]) and torch.equal(again[:, 1], 63 - first[:, 1])


@pytest.mark.parametrize("backend", NATIVE)
def test_native_measured_dispatch_times_both_gemms_once_per_codebook_geometry(backend, tmp_path, monkeypatch):
    measure_dispatch(tmp_path, monkeypatch)
    cb, norms = codebooks(4, 96, 24, torch.float32, device=DEVICES[backend])
    for batch, frames in ((1, 5), (3, 200)):  # other lengths: the same site, measured once
        x = rvq_signal(batch, 24, frames, cb)
        assert torch.equal(run(backend, "rvq_encode", x, cb, norms, 4), eager.rvq_encode(x, cb, norms, 4))
    table = native.tuner().table
    assert set(table) == {"rvq_encode|D24|K96|q4|float32"}
    entry = table["rvq_encode|D24|K96|q4|float32"]
    assert entry["choice"] in ("onednn", "aten") and set(entry["ms"]) == {"onednn", "aten"}
    assert entry["measured_shape"] == [1, 24, 512]
    with tuning.forced("rvq_encode", "aten"):  # the other choice is eager itself
        assert torch.equal(run(backend, "rvq_encode", x, cb, norms, 2), eager.rvq_encode(x, cb, norms, 2))


@pytest.mark.parametrize("backend", NATIVE)
def test_native_half_precision_and_autograd_take_eager(backend):
    for dtype in (torch.float16, torch.bfloat16):
        cb, norms = codebooks(2, 64, 16, dtype, device=DEVICES[backend])
        x = rvq_signal(1, 16, 9, cb)
        assert torch.equal(run(backend, "rvq_encode", x, cb, norms, 2), eager.rvq_encode(x, cb, norms, 2))
    x32 = x.float().requires_grad_()
    cb32 = cb.float()
    with torch.enable_grad():
        assert torch.equal(run(backend, "rvq_encode", x32, cb32, norms, 2),
                           eager.rvq_encode(x32, cb32, norms, 2))


@pytest.mark.parametrize(
    "backend,shape,dtype", backend_params("triton", [(s, d) for s in DECODE_SHAPES for d in TRITON_DTYPES]))
def test_decode_is_bitwise_eager(backend, shape, dtype):
    b, q, t, d, k = shape
    cb, _ = codebooks(q + 1, k, d, dtype)  # the model may hold more quantizers than the codes use
    codes = random_codes(b, q, t, k)
    out = run(backend, "rvq_decode", codes, cb)
    out32 = run(backend, "rvq_decode", codes.int(), cb)
    ref = eager.rvq_decode(codes, cb)
    assert out.dtype == dtype and out.shape == (b, d, t) and out.is_contiguous()
    assert torch.equal(out, ref)  # same order of additions, same rounding after each
    assert torch.equal(out32, ref)


@pytest.mark.parametrize("precomputed", [False, True], ids=["fallback", "precomputed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(
    "backend,shape,dtype", backend_params("triton", [(s, d) for s in DECODE_SHAPES for d in TRITON_DTYPES]))
def test_dequantize_project_matches_eager(backend, shape, dtype, bias, precomputed):
    device = DEVICES[backend]
    b, q, t, d, k = shape
    d_out = d // 4 + 3
    cb, _ = codebooks(q, k, d, dtype)
    g = torch.Generator().manual_seed(7)
    w = (torch.randn(d_out, d, generator=g) / d**0.5).to(device, dtype)
    bvec = torch.randn(d_out, generator=g).to(device, dtype) if bias else None
    proj = torch.matmul(cb.float(), w.float().t()).to(dtype) if precomputed else None
    codes = random_codes(b, q, t, k)
    out = run(backend, "dequantize_project", codes, cb, w, bvec, proj)
    assert out.dtype == dtype and out.shape == (b, d_out, t) and out.is_contiguous()
    # the truth in float64; eager (sum then project) and we (project then sum) round differently
    truth = eager.dequantize_project(codes, cb.double(), w.double(), bvec.double() if bias else None)
    ref = eager.dequantize_project(codes, cb, w, bvec)
    tol = tolerances.DEQUANTIZE_PROJECT[backend, dtype] * truth.abs().max().item()
    assert (out.double() - truth).abs().max().item() <= tol
    assert (ref.double() - truth).abs().max().item() <= 2 * tol  # sanity: the oracle is as close


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_bad_inputs(backend):
    device = DEVICES[backend]
    cb, _ = codebooks(2, 16, 8, torch.float32)
    w = torch.randn(4, 8, device=device)
    with ops.use_backend(backend):
        assert ops.rvq_decode(random_codes(1, 2, 0, 16), cb).shape == (1, 8, 0)
        assert ops.dequantize_project(random_codes(1, 2, 0, 16), cb, w, None).shape == (1, 4, 0)
        with pytest.raises(ValueError, match="must lie in"):
            ops.rvq_decode(random_codes(1, 2, 3, 16) + 16, cb)
        with pytest.raises(TypeError, match="integer"):
            ops.rvq_decode(random_codes(1, 2, 3, 16).float(), cb)
        with pytest.raises(ValueError, match="quantizers"):
            ops.rvq_decode(random_codes(1, 3, 3, 16), cb)
        with pytest.raises(ValueError, match="projected_codebooks"):
            ops.dequantize_project(random_codes(1, 2, 3, 16), cb, w, None, torch.zeros(2, 16, 5, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_device_mix_is_an_error(backend):
    cb, norms = codebooks(2, 16, 8, torch.float32)
    with ops.use_backend(backend):
        with pytest.raises(ValueError, match="cpu"):
            ops.rvq_decode(random_codes(1, 2, 3, 16).cpu(), cb)
        with pytest.raises(ValueError, match="cpu"):
            ops.rvq_encode(torch.randn(1, 8, 3), cb, norms, 2)
