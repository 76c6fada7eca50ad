"""Bad input to XcodecModel: each is a clear error naming the problem (transformers' message where
it has one), and the output objects behave like transformers' ModelOutput."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tolerances
from oracle import make_hf_model, random_audio, tiny_variant
from xcodec_fast import XcodecModel, ops
from xcodec_fast.modeling.outputs import XcodecEncoderOutput


@pytest.fixture(scope="module")
def model():
    return XcodecModel.from_random(tiny_variant("hubert", "group", False), seed=0)


@pytest.fixture(scope="module")
def codes(model):
    return model.encode(random_audio(2, 1, 3200, seed=1)).audio_codes


def _message(fn) -> str:
    with pytest.raises(Exception) as info:
        fn()
    return str(info.value)


def test_messages_equal_transformers_for_stereo_and_bandwidth(model):
    transformers = pytest.importorskip("transformers")  # noqa: F841
    hf_model = make_hf_model(model.config, seed=0)
    stereo = random_audio(1, 2, 1600)
    mono = random_audio(1, 1, 1600)
    ours = _message(lambda: model.encode(stereo))
    assert ours == _message(lambda: hf_model.encode(stereo)) == "Audio must be mono, but got 2"
    ours = _message(lambda: model.encode(mono, bandwidth=3.0))
    assert ours == _message(lambda: hf_model.encode(mono, bandwidth=3.0))
    assert "doesn't support the bandwidth 3.0" in ours


@pytest.mark.parametrize(
    "audio, error, pattern",
    [
        (torch.zeros(1, 1600), ValueError, r"shape \(batch, channels, samples\), got \(1, 1600\)"),
        (torch.zeros(1600), ValueError, r"shape \(batch, channels, samples\), got \(1600,\)"),
        (torch.zeros(1, 1, 0), ValueError, "input_values is empty"),
        (torch.zeros(0, 1, 1600), ValueError, "input_values is empty"),
        (torch.zeros(1, 1, 1600, dtype=torch.int16), TypeError, "floating point audio.*got dtype torch.int16"),
        (torch.full((1, 1, 1600), float("nan")), ValueError, "NaN or infinite"),
        (torch.tensor([[[0.0] * 1599 + [float("inf")]]]), ValueError, "NaN or infinite"),
        (torch.zeros(1, 1, 79), ValueError, "79 samples is too short: encode needs at least 80"),
        ([[0.0] * 1600], TypeError, "must be a torch.Tensor"),
    ],
    ids=["rank2", "rank1", "empty", "empty-batch", "int16", "nan", "inf", "too-short", "list"],
)
def test_bad_audio(model, audio, error, pattern):
    with pytest.raises(error, match=pattern):
        model.encode(audio)


def test_shortest_accepted_audio_encodes(model):
    assert model.encode(random_audio(1, 1, 80)).audio_codes.shape == (1, 8, 1)


@pytest.mark.parametrize("bandwidth", [3.0, 0.0, -1, "4", True])
def test_unsupported_bandwidth(model, bandwidth):
    with pytest.raises(ValueError, match=f"doesn't support the bandwidth {bandwidth}"):
        model.encode(random_audio(1, 1, 1600), bandwidth=bandwidth)


@pytest.mark.parametrize("bandwidth", [np.float32(1.5), torch.tensor(1.5), 1.5])
def test_bandwidth_as_numpy_or_tensor_scalar(model, bandwidth):
    # transformers accepts any value comparing equal to a supported bandwidth
    assert model.encode(random_audio(1, 1, 1600), bandwidth=bandwidth).audio_codes.shape[1] == 3


@pytest.mark.parametrize(
    "mask, pattern",
    [
        (torch.ones(2, 100), r"padding_mask must have shape \(batch, samples\) = \(2, 3200\), got \(2, 100\)"),
        (torch.full((2, 3200), 2), "only 0 \\(padding\\) and 1"),
        (torch.cat([torch.zeros(2, 100), torch.ones(2, 3100)], 1), "item 0 is not right-padded"),
        (torch.cat([torch.ones(1, 3200), torch.zeros(1, 3200)]), "item 1 has no valid samples"),
        (torch.stack([torch.ones(3200), (torch.arange(3200) < 50).float()]), "50 samples is too short"),
    ],
    ids=["shape", "values", "holes", "empty-item", "short-item"],
)
def test_bad_padding_mask(model, mask, pattern):
    with pytest.raises(ValueError, match=pattern):
        model.encode(random_audio(2, 1, 3200), padding_mask=mask)


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda c: c.float(), TypeError, "integer tensor.*got dtype torch.float32"),
        (lambda c: c[0], ValueError, r"shape \(batch, num_quantizers, frames\), got \(8, 10\)"),
        (lambda c: torch.cat([c, c[:, :1]], 1), ValueError, "9 quantizers \\(dim 1\\); this model has 1 to 8"),
        (lambda c: c.clone().fill_(1024), ValueError, r"must lie in \[0, 1023\], got values in \[1024, 1024\]"),
        (lambda c: c - c.max() - 1, ValueError, r"must lie in \[0, 1023\]"),
        (lambda c: c[..., :0], ValueError, "audio_codes is empty"),
        (lambda c: c.tolist(), TypeError, "must be a torch.Tensor"),
    ],
    ids=["float", "rank2", "too-many-quantizers", "too-large", "negative", "no-frames", "list"],
)
def test_bad_codes(model, codes, make, error, pattern):
    with pytest.raises(error, match=pattern):
        model.decode(make(codes))


def test_bad_code_lengths(model, codes):
    with pytest.raises(ValueError, match=r"audio_code_lengths must lie in \[1, 10\]"):
        model.decode(codes, audio_code_lengths=torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="one per item"):
        model.decode(codes, audio_code_lengths=torch.tensor([10]))


def test_forward_rejects_codes_with_padding_mask(model, codes):
    with pytest.raises(ValueError, match="padding_mask only applies when forward encodes"):
        model(random_audio(2, 1, 3200), audio_codes=codes, padding_mask=torch.ones(2, 3200))


def test_backend_choice(model, codes):
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        XcodecModel(model.config, backend="cuda")
    audio = model.decode(codes).audio_values
    try:
        model.backend = "eager"
        eager_audio = model.decode(codes).audio_values
        if ops.backend.resolve_auto(audio.device) == "eager":
            assert torch.equal(eager_audio, audio)
        else:  # native: GEMM residual units sum in another order (tests/tolerances.py's CONV bound)
            tolerances.assert_close(audio, eager_audio, tolerances.AUDIO)
        with pytest.raises(ValueError, match="unknown backend"):
            model.backend = "fast"
    finally:
        model.backend = None


def test_return_dict_false_and_output_access(model):
    audio = random_audio(2, 1, 3200, seed=2)
    out = model.encode(audio)
    assert isinstance(out, XcodecEncoderOutput)
    assert out[0] is out["audio_codes"] is out.audio_codes
    assert out.to_tuple() == (out.audio_codes,)  # None fields are skipped
    with pytest.raises(KeyError, match="audio_code_lengths"):
        out["audio_code_lengths"]
    assert torch.equal(model.encode(audio, return_dict=False), out.audio_codes)
    decoded = model.decode(out.audio_codes, return_dict=False)
    assert isinstance(decoded, torch.Tensor) and decoded.shape == (2, 1, 3200)
    padded = model.encode(audio, padding_mask=torch.ones(2, 3200))
    assert padded.to_tuple()[1].tolist() == [10, 10]


def test_no_gradients_are_tracked(model):
    audio = random_audio(1, 1, 1600).requires_grad_(True)
    codes = model.encode(audio).audio_codes
    assert not codes.requires_grad
    assert not model.decode(codes).audio_values.requires_grad
