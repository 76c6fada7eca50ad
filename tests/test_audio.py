import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from xcodec_fast.audio import (
    AudioError,
    XcodecFeatureExtractor,
    demo_clip,
    downmix,
    load_audio,
    make_demo_signal,
    resample,
    write_wav,
)

RNG = np.random.default_rng(0)


def _clips(*lengths):
    return [RNG.standard_normal(n).astype(np.float32) * 0.1 for n in lengths]


# ---- feature extractor ------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"return_tensors": "pt"},
        {"return_tensors": "np"},
        {"padding": "max_length", "max_length": 1000, "return_tensors": "pt"},
        {"truncation": True, "max_length": 700, "return_tensors": "np"},
        {"padding": False},
    ],
)
def test_feature_extractor_matches_transformers(kwargs):
    transformers = pytest.importorskip("transformers")
    ours = XcodecFeatureExtractor()
    theirs = transformers.DacFeatureExtractor(hop_length=320)
    for raw in (_clips(500, 961, 320), _clips(333)[0], list(_clips(17)[0].astype(np.float64))):
        if kwargs.get("padding") == "max_length" and not isinstance(raw, list):
            continue
        a = ours(raw, sampling_rate=16000, **kwargs)
        b = theirs(raw, sampling_rate=16000, **kwargs)
        assert sorted(a.keys()) == sorted(b.keys())
        for key in b:
            va, vb = a[key], b[key]
            if isinstance(vb, list):
                assert len(va) == len(vb)
                for x, y in zip(va, vb):
                    np.testing.assert_array_equal(x, y)
                    assert x.dtype == y.dtype and x.shape == y.shape
            else:
                assert type(va) is type(vb) and va.dtype == vb.dtype and va.shape == vb.shape, key
                np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))


def test_feature_extractor_pads_to_hop_multiple_with_mask():
    fe = XcodecFeatureExtractor()
    out = fe(_clips(500, 1000), sampling_rate=16000, return_tensors="pt")
    assert out.input_values.shape == (2, 1, 1280) and out.input_values.dtype == torch.float32
    assert out.padding_mask.sum(-1).tolist() == [500, 1000]
    assert (out.input_values[0, 0, 500:] == 0).all()
    assert out.to("cpu").input_values.shape == (2, 1, 1280)


def test_feature_extractor_errors():
    fe = XcodecFeatureExtractor()
    with pytest.raises(ValueError, match="sampling rate of 16000.*not 44100"):
        fe(_clips(100)[0], sampling_rate=44100)
    with pytest.raises(ValueError, match="Expected mono audio.*shape \\(2, 100\\)"):
        fe(RNG.standard_normal((2, 100)), sampling_rate=16000)
    with pytest.raises(ValueError, match="Both padding and truncation"):
        fe(_clips(100), padding=True, truncation=True, max_length=10, sampling_rate=16000)
    with pytest.raises(ValueError, match="max_length is defined"):
        fe(_clips(100), padding="max_length", sampling_rate=16000)
    with pytest.raises(ValueError, match="different shapes"):
        fe(_clips(100, 200), padding=False, return_tensors="pt", sampling_rate=16000)
    with pytest.raises(ValueError, match="empty list"):
        fe([], sampling_rate=16000)
    with pytest.raises(ValueError, match="item 1 .* empty"):
        fe([np.ones(3), np.zeros(0)], sampling_rate=16000)


def test_feature_extractor_save_load_roundtrip(tmp_path):
    fe = XcodecFeatureExtractor(processor_class="SomeProcessor")
    fe.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert data["feature_extractor_type"] == "DacFeatureExtractor" and data["hop_length"] == 320
    again = XcodecFeatureExtractor.from_pretrained(tmp_path)
    assert again.to_dict() == fe.to_dict()
    transformers = pytest.importorskip("transformers")
    theirs = transformers.DacFeatureExtractor.from_pretrained(tmp_path)
    assert theirs.hop_length == 320 and theirs.sampling_rate == 16000
    # ... and a config transformers wrote loads here.
    theirs.save_pretrained(tmp_path / "t")
    assert XcodecFeatureExtractor.from_pretrained(tmp_path / "t").hop_length == 320


def test_feature_extractor_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json"):
        XcodecFeatureExtractor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"feature_extractor_type": "WhisperFeatureExtractor"}')
    with pytest.raises(ValueError, match="WhisperFeatureExtractor"):
        XcodecFeatureExtractor.from_pretrained(tmp_path)


# ---- files ------------------------------------------------------------------------------
@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_load_audio_resamples_and_downmixes(tmp_path, sr, channels, fmt):
    n = int(sr * 0.37)
    data = (RNG.standard_normal((n, channels)) * 0.2).astype(np.float32)
    path = tmp_path / f"x.{fmt}"
    sf.write(path, data, sr, subtype="PCM_16")
    decoded = sf.read(path, dtype="float32", always_2d=True)[0]
    audio, out_sr = load_audio(path, block_seconds=0.05)  # many blocks: must equal the one-shot path
    assert out_sr == 16000 and audio.dtype == np.float32 and audio.ndim == 1
    expected = resample(downmix(decoded.T), sr, 16000)
    np.testing.assert_array_equal(audio, expected)
    assert abs(len(audio) - n * 16000 / sr) <= 1
    multi, _ = load_audio(path, mono=False)
    assert multi.shape[0] == channels
    keep, keep_sr = load_audio(path, target_sr=None)
    assert keep_sr == sr and len(keep) == n


def _broken_files(tmp_path):
    files = {}
    files["garbage"] = tmp_path / "garbage.wav"
    files["garbage"].write_bytes(os.urandom(2000))
    files["empty"] = tmp_path / "empty.wav"
    files["empty"].write_bytes(b"")
    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    files["truncated_wav"] = tmp_path / "truncated.wav"
    files["truncated_wav"].write_bytes(good.read_bytes()[:15000])
    sf.write(tmp_path / "good.flac", (RNG.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    files["truncated_flac"] = tmp_path / "truncated.flac"
    files["truncated_flac"].write_bytes((tmp_path / "good.flac").read_bytes()[:9000])
    files["zero_frames"] = tmp_path / "zero_frames.wav"
    sf.write(files["zero_frames"], np.zeros(0, np.float32), 16000)
    files["nan"] = tmp_path / "nan.wav"
    sf.write(files["nan"], np.full(800, np.nan, np.float32), 16000, subtype="FLOAT")
    return files


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("garbage", "cannot decode"),
        ("empty", "empty file"),
        ("truncated_wav", "truncated"),
        ("truncated_flac", "cannot decode"),
        ("zero_frames", "0 frames"),
        ("nan", "non-finite"),
    ],
)
def test_load_audio_rejects_broken_files(tmp_path, kind, reason):
    path = _broken_files(tmp_path)[kind]
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(path)
    assert str(path) in str(info.value)


def test_load_audio_limits_and_sources(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(16000 * 3, np.float32), 16000)
    with pytest.raises(AudioError, match="too long: 3.0 s > the 2 s limit"):
        load_audio(path, max_seconds=2)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    from_bytes, _ = load_audio(path.read_bytes(), name="row 7")
    assert len(from_bytes) == 16000 * 3
    with pytest.raises(AudioError, match="row 8: cannot decode"):
        load_audio(b"not audio at all", name="row 8")


def test_write_wav_roundtrip_and_errors(tmp_path):
    audio = np.sin(np.linspace(0, 100, 4000)).astype(np.float32) * 0.5
    write_wav(tmp_path / "a" / "x.wav", torch.from_numpy(audio))
    back, sr = load_audio(tmp_path / "a" / "x.wav")
    assert sr == 16000 and np.abs(back - audio).max() < 1e-4
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "bad.wav", np.full(10, np.nan))
    with pytest.raises(ValueError, match="shape"):
        write_wav(tmp_path / "bad.wav", np.zeros((1, 2, 3)))


def test_demo_clip_is_bundled_and_deterministic():
    audio, sr = demo_clip()
    assert sr == 16000 and audio.shape == (48000,)
    np.testing.assert_allclose(audio, make_demo_signal(), atol=1 / 32768 + 1e-7)
    assert 0.05 < float(np.sqrt(np.mean(audio**2))) < 0.5
