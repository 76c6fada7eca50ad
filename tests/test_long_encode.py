"""Windowed encode of long recordings against the whole-file encode."""

from __future__ import annotations

import contextlib

import pytest
import torch

import tolerances
import xcodec_fast
from xcodec_fast import XcodecModel
from xcodec_fast.config import tiny_config
from xcodec_fast.modeling import codec
from xcodec_fast.ops import tuning



@pytest.fixture(scope="module", params=["group", "layer"])
def model(request):
    return XcodecModel.from_random(tiny_config(semantic_model_config={"feat_extract_norm": request.param}), seed=1)


def random_audio(batch: int, samples: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 1, samples, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.mark.parametrize("backend", ["eager", "native", "native-fast-winograd"])
def test_windows_with_whole_context_equal_the_whole_encode(model, backend):
    """With attention context covering the recording, only the exact parts differ from a whole
    encode: the acoustic windows (receptive field) and the GroupNorm statistics (first pass).
    Also with the opt-in Winograd F(4,7) residual units forced everywhere."""
    name = backend.removesuffix("-fast-winograd")
    if not xcodec_fast.ops.availability(name)[0]:
        pytest.skip(f"{name} unavailable")
    fast = name != backend
    with xcodec_fast.use_backend(name), \
            (tuning.forced("residual_unit", "winograd4") if fast else contextlib.nullcontext()):
        for samples in (16000 * 2, 16000 * 3 + 17, 5 * 320 + 1):
            audio = random_audio(2, samples, seed=samples)
            whole = model.encode(audio).audio_codes
            frames = whole.shape[-1]
            for chunk in (1, 7, frames - 1):
                got = model.encode(audio, chunk_frames=max(1, chunk), context_frames=frames).audio_codes
                assert torch.equal(got, whole), f"{samples} samples, chunks of {chunk}"


def test_group_norm_statistics_match_group_norm():
    model = XcodecModel.from_random(tiny_config(), seed=2)
    extractor = model.semantic_model.feature_extractor
    x = torch.randn(2, 16000 * 3 + 5, generator=torch.Generator().manual_seed(3))
    first = extractor.conv_layers[0]
    with torch.inference_mode():
        mean, variance = extractor.group_norm_statistics(x, chunk_frames=777)
        full = first.conv(x[:, None])
        ours = first(x[:, None], None, (mean, variance))
        theirs = first(x[:, None], None)
    tolerances.assert_close(mean, full.mean(-1, keepdim=True), tolerances.CHUNKED_GROUP_NORM_MEAN)
    tolerances.assert_close(ours, theirs, tolerances.CHUNKED_GROUP_NORM_OUTPUT)


def test_agreement_grows_with_context(model):
    """Random weights attend almost uniformly (the worst case for windowed attention), yet more
    context must not lower agreement, and the whole context gives the whole encode."""
    audio = random_audio(1, 16000 * 4, seed=5)
    with xcodec_fast.use_backend("eager"):
        whole = model.encode(audio).audio_codes
        agreement = []
        for context in (0, 20, 80, whole.shape[-1]):
            got = model.encode(audio, chunk_frames=25, context_frames=context).audio_codes
            agreement.append((got[:, 0] == whole[:, 0]).float().mean().item())
    assert agreement[-1] == 1.0
    assert agreement[0] < agreement[-1]


def test_long_recordings_window_by_default(model, monkeypatch):
    monkeypatch.setattr(codec, "ENCODE_CHUNK_FRAMES", 20)
    calls = []
    encode_windows = model.encode_windows
    model.encode_windows = lambda *args: calls.append(args[2:]) or encode_windows(*args)
    try:
        model.encode(random_audio(1, 19 * 320, seed=1))
        assert calls == []
        model.encode(random_audio(1, 60 * 320, seed=1))
        assert calls == [(20, codec.ENCODE_CONTEXT_FRAMES)]
    finally:
        del model.encode_windows


def test_windowed_encode_errors(model):
    audio = random_audio(2, 16000, seed=1)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="chunk_frames must be a positive int or None"):
            model.encode(audio, chunk_frames=bad)
    with pytest.raises(ValueError, match="context_frames must be an int >= 0 or None"):
        model.encode(audio, chunk_frames=10, context_frames=-1)
    with pytest.raises(ValueError, match="chunk_frames applies to unpadded input"):
        model.encode(audio, chunk_frames=10, padding_mask=torch.ones(2, 16000))
