"""The command line as a user runs it, on a tiny local checkpoint (no network)."""

import numpy as np
import pytest
import torch

from xcodec_fast import cli
from xcodec_fast.audio import load_audio, write_wav
from xcodec_fast.config import tiny_config
from xcodec_fast.modeling.codec import XcodecModel


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_model")
    XcodecModel.from_random(tiny_config(), seed=3).save_pretrained(path)
    return path


@pytest.fixture()
def clip(tmp_path):
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(22050 * 2 + 17)).astype(np.float32)
    path = tmp_path / "clip.wav"
    write_wav(path, audio, 22050)  # not 16 kHz: the CLI must resample
    return path


def test_encode_then_decode_matches_the_library(tiny_dir, clip, tmp_path, capsys):
    codes_path = tmp_path / "codes.npy"
    assert cli.main(["encode", str(clip), "-o", str(codes_path), "--model", str(tiny_dir), "--bandwidth", "1.5"]) == 0
    codes = np.load(codes_path)
    model = XcodecModel.from_pretrained(tiny_dir)
    audio, _ = load_audio(clip, target_sr=16000)
    expected = model.encode(torch.from_numpy(audio)[None, None], bandwidth=1.5).audio_codes[0]
    assert codes.shape == (3, expected.shape[-1])
    np.testing.assert_array_equal(codes, expected.numpy())

    wav_path = tmp_path / "out.wav"
    assert cli.main(["decode", str(codes_path), "-o", str(wav_path), "--model", str(tiny_dir)]) == 0
    decoded, sr = load_audio(wav_path, target_sr=16000)
    assert sr == 16000 and len(decoded) == 320 * codes.shape[-1]
    reference = model.decode(torch.from_numpy(codes.astype(np.int64))[None]).audio_values[0, 0].numpy()
    # 16-bit wav storage: one quantization step of tolerance
    np.testing.assert_allclose(decoded, np.clip(reference, -1, 1), atol=2.0 / 32768)


def test_decode_rejects_bad_codes_files(tiny_dir, tmp_path, capsys):
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((8, 4), dtype=np.float32))
    assert cli.main(["decode", str(floats), "-o", str(tmp_path / "x.wav"), "--model", str(tiny_dir)]) == 2
    assert "must be integers" in capsys.readouterr().err
    out_of_range = tmp_path / "big.npy"
    np.save(out_of_range, np.full((8, 4), 5000, dtype=np.int64))
    assert cli.main(["decode", str(out_of_range), "-o", str(tmp_path / "x.wav"), "--model", str(tiny_dir)]) == 2
    assert "5000" in capsys.readouterr().err


def test_encode_reports_unreadable_file(tiny_dir, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav")
    assert cli.main(["encode", str(broken), "-o", str(tmp_path / "c.npy"), "--model", str(tiny_dir)]) == 2
    assert "broken.wav" in capsys.readouterr().err


def test_info_lists_backends_and_model(tiny_dir, capsys):
    assert cli.main(["info", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "eager" in out and "native" in out and "triton" in out
    assert "quantizers 8 x 1024" in out and "hop 320" in out


def test_demo_runs_offline_with_a_local_model(tiny_dir, tmp_path, capsys):
    assert cli.main(["demo", "--model", str(tiny_dir), "-o", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    codes = np.load(tmp_path / "demo" / "codes.npy")
    assert codes.shape[0] == 8 and codes.shape[1] > 0
    assert (tmp_path / "demo" / "reconstruction.wav").exists()
    assert "encode" in out and "x real time" in out


def test_only_demo_falls_back_to_random_weights_offline(monkeypatch, tmp_path, clip, capsys):
    from xcodec_fast import loading

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "DEFAULT_MODEL", "hf-audio/not-cached-anywhere")
    # encode must not write meaningless codes: it fails and says what to pass
    assert cli.main(["encode", str(clip), "-o", str(tmp_path / "codes.npy")]) == 2
    assert "--model" in capsys.readouterr().err
    assert not (tmp_path / "codes.npy").exists()
    # the demo falls back, loudly
    model, model_id = loading.load_model(None, random_fallback=True, fallback_config=tiny_config())
    assert model_id == "random-weights" and isinstance(model, XcodecModel)
    assert "RANDOM-WEIGHT" in capsys.readouterr().err


def test_random_model_specs(tmp_path, clip):
    codes_path = tmp_path / "codes.npy"
    assert cli.main(["encode", str(clip), "-o", str(codes_path), "--model", "random-tiny"]) == 0
    assert np.load(codes_path).shape[0] == 8


def test_encode_writes_exactly_the_path_it_prints(tiny_dir, clip, tmp_path, capsys):
    """np.save appends .npy to other names; -o codes.bin must write codes.bin and nothing else."""
    out = tmp_path / "codes.bin"
    assert cli.main(["encode", str(clip), "-o", str(out), "--model", str(tiny_dir)]) == 0
    printed = capsys.readouterr()
    assert str(out) in printed.out + printed.err
    assert out.exists() and not (tmp_path / "codes.bin.npy").exists()
    assert np.load(out).ndim == 2


def test_encode_output_under_a_file_is_one_line_before_any_work(tiny_dir, clip, tmp_path, capsys):
    blocker = tmp_path / "somefile"
    blocker.write_text("x")
    assert cli.main(["encode", str(clip), "-o", str(blocker / "out.npy"), "--model", str(tiny_dir)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err
