"""The whole model on the triton backend against eager: codes and decoded audio.

CPU: the tiny config under Triton's interpreter (tests/conftest.py), one short clip, fp32 and fp16.
CUDA: the full-size default config on 10 s of audio, fp32, fp16 and bf16.

Every hot op must really run its Triton implementation: the registered implementations are spied
on, so an op that silently fell back to eager fails the test.
"""

import collections
import math

import pytest
import torch

import tolerances
import xcodec_fast.ops as ops
from xcodec_fast.config import XcodecConfig, tiny_config
from xcodec_fast.modeling import XcodecModel
from xcodec_fast.ops import backend
from near_ties import check_near_ties

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")

if not ops.availability("triton", DEVICE)[0]:
    pytest.skip(f"triton backend unavailable: {ops.availability('triton', DEVICE)[1]}", allow_module_level=True)

# The interpreter runs ~25 s per encode + decode of 0.2 s at batch 1; a GPU takes the real thing.
BATCH, SECONDS = (2, 10.0) if CUDA else (1, 0.2)
HALF_DTYPES = [torch.float16] + ([torch.bfloat16] if CUDA else [])
TRITON_OPS = ("snake", "residual_unit", "snake_conv1d", "snake_conv_transpose1d", "rvq_encode", "dequantize_project")
TIE_TOL = tolerances.TIE[torch.float32]
MAX_FP32_MISMATCH = 0.01


def _model(dtype=torch.float32):
    model = XcodecModel.from_random(XcodecConfig() if CUDA else tiny_config(), seed=11)
    return model.to(DEVICE, dtype)


def _audio():
    g = torch.Generator().manual_seed(5)
    n = int(SECONDS * 16000)
    t = torch.arange(n) / 16000
    # a few partials plus noise: speech-like enough to spread codes over the codebooks
    tone = sum(0.2 * torch.sin(2 * math.pi * f * t + p) for f, p in ((180, 0.0), (410, 1.0), (1250, 2.0)))
    x = tone[None, None] * torch.linspace(0.5, 1.0, BATCH)[:, None, None] + 0.05 * torch.randn(BATCH, 1, n, generator=g)
    return x.clamp(-1, 1).to(DEVICE)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls per (op, backend) of the registered implementations; keeps rvq_encode's input."""
    calls = collections.Counter()
    seen = {}
    for op, impls in backend._registry.items():
        for name, fn in list(impls.items()):
            def wrapper(*args, _fn=fn, _key=(op, name)):
                calls[_key] += 1
                if _key == ("rvq_encode", "triton"):
                    seen["embeddings"] = args[0]
                return _fn(*args)

            monkeypatch.setitem(impls, name, wrapper)
    return calls, seen


def _assert_all_triton(calls):
    for op in TRITON_OPS:
        assert calls[(op, "triton")] > 0, f"{op} never ran its triton implementation: {dict(calls)}"
    fallbacks = {key: n for key, n in calls.items() if key[1] != "triton"}
    assert not fallbacks, f"ops fell back to another backend: {fallbacks}"


def _check_near_ties(codes, ref, x, codebooks):
    return check_near_ties(codes, ref, x, codebooks, TIE_TOL)


def _snr_db(ref, test):
    ref, test = ref.double(), test.double()
    return 10 * math.log10(ref.pow(2).sum().item() / max((ref - test).pow(2).sum().item(), 1e-300))


def test_near_tie_check_rejects_a_worse_code():
    g = torch.Generator().manual_seed(0)
    cb = torch.randn(2, 32, 8, generator=g)
    x = torch.randn(1, 8, 4, generator=g)
    with ops.use_backend("eager"):
        ref = ops.rvq_encode(x, cb, cb.pow(2).sum(-1), 2)
    assert _check_near_ties(ref, ref, x, cb) == (0, 4)
    worse = ref.clone()
    worse[0, 0, 1] = (ref[0, 0, 1] + 1) % 32  # random codewords: never a tie
    with pytest.raises(AssertionError, match="below the best score"):
        _check_near_ties(worse, ref, x, cb)


def test_fp32_triton_matches_eager(spy, monkeypatch):
    calls, seen = spy
    # Eager's CUDA convs run in TF32 by default (matmuls do not): a reference 1e-3 off, not fp32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model, x = _model(), _audio()

    model.backend = "eager"
    ref_codes = model.encode(x, return_dict=False)
    ref_audio = model.decode(ref_codes, return_dict=False)
    assert not any(key[1] == "triton" for key in calls)
    calls.clear()

    model.backend = "triton"
    codes = model.encode(x, return_dict=False)
    audio = model.decode(ref_codes, return_dict=False)  # the same codes: compare the decoder alone
    _assert_all_triton(calls)

    assert codes.shape == ref_codes.shape and codes.dtype == torch.long
    parted, frames = _check_near_ties(codes, ref_codes, seen["embeddings"], model.quantizer.codebooks)
    print(f"\nfp32 triton vs eager: {parted} of {frames} frames part at a near tie")
    if not CUDA:
        assert parted == 0  # a small random problem has no fp32 near ties
    assert parted <= max(1, int(MAX_FP32_MISMATCH * frames))
    assert audio.shape == ref_audio.shape == (BATCH, 1, model.config.hop_length * codes.shape[-1])
    error = ((audio - ref_audio).abs().max() / ref_audio.abs().max()).item()
    print(f"fp32 decoded audio: max |triton - eager| / max |eager| = {error:.3g}")
    assert error <= 1e-4


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_half_triton_is_as_close_to_fp32_as_eager_half(dtype, spy):
    """Half codes differ from fp32 wherever rounding flips a choice and the residual paths part;
    Triton's half must stay about as close to fp32 as eager's half is."""
    calls, _ = spy
    x = _audio()
    full = _model()
    full.backend = "eager"
    ref_codes = full.encode(x, return_dict=False)
    ref_audio = full.decode(ref_codes, return_dict=False)

    half = _model(dtype)
    half.backend = "eager"
    eager_codes = half.encode(x, return_dict=False)
    eager_audio = half.decode(eager_codes, return_dict=False)
    calls.clear()
    half.backend = "triton"
    codes = half.encode(x, return_dict=False)
    audio = half.decode(codes, return_dict=False)
    _assert_all_triton(calls)

    agree = (codes == ref_codes).double().mean().item()
    agree_first = (codes[:, 0] == ref_codes[:, 0]).double().mean().item()
    eager_agree = (eager_codes == ref_codes).double().mean().item()
    snr, eager_snr = _snr_db(ref_audio, audio), _snr_db(ref_audio, eager_audio)
    print(
        f"\n{dtype} vs fp32 eager: triton codes {agree:.1%} equal (stage 0: {agree_first:.1%}), "
        f"audio SNR {snr:.1f} dB; eager {dtype}: codes {eager_agree:.1%}, SNR {eager_snr:.1f} dB"
    )
    assert agree >= eager_agree - 0.05
    assert snr >= eager_snr - 3.0
    if not CUDA:
        assert agree >= 0.9
