import os

import numpy as np
import pytest
import soundfile as sf
import torch

from xcodec_fast.audio import AudioError, demo_clip, downmix, load_audio, make_demo_signal, resample, write_wav

RNG = np.random.default_rng(0)


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
