"""The command line on long audio: windowed encode, windowed and streamed decode written as they go."""

import numpy as np
import pytest
import soundfile as sf
import torch

from xcodec_fast import cli
from xcodec_fast.loading import load_model


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.wav"
    rng = np.random.default_rng(3)
    sf.write(path, (0.1 * rng.standard_normal(16000 * 7 + 123)).astype(np.float32), 16000)
    return path


def test_encode_windows_and_decode_streams_like_the_library(long_clip, tmp_path, capsys):
    model, _ = load_model("random-tiny")
    codes_path, wav, streamed = tmp_path / "c.npy", tmp_path / "a.wav", tmp_path / "s.wav"
    common = ["--model", "random-tiny", "-q"]
    assert cli.main(["encode", str(long_clip), "-o", str(codes_path), "--chunk-seconds", "2",
                     "--context-seconds", "0.5", *common]) == 0
    audio = torch.from_numpy(sf.read(long_clip, dtype="float32")[0])[None, None]
    expected = model.encode(audio, chunk_frames=100, context_frames=25).audio_codes[0]
    np.testing.assert_array_equal(np.load(codes_path), expected.numpy())

    assert cli.main(["decode", str(codes_path), "-o", str(wav), "--chunk-seconds", "1.5", *common]) == 0
    assert cli.main(["decode", str(codes_path), "-o", str(streamed), "--stream", "--push-frames", "7", *common]) == 0
    assert "first audio after" in capsys.readouterr().err
    whole = model.decode(expected[None]).audio_values[0, 0].clamp(-1, 1).numpy()
    for path in (wav, streamed):
        written, rate = sf.read(path, dtype="float32")
        assert rate == 16000 and len(written) == len(whole)
        assert np.abs(written - whole).max() <= 1.5 / 32768  # PCM_16 rounding


@pytest.mark.parametrize("args, message", [
    (["--chunk-seconds", "0.001"], "--chunk-seconds 0.001 is under 1 frame"),
    (["--stream", "--push-frames", "0"], "--push-frames must be at least 1"),
])
def test_decode_option_errors(tmp_path, args, message, capsys):
    codes = tmp_path / "c.npy"
    np.save(codes, np.zeros((8, 10), np.int16))
    assert cli.main(["decode", str(codes), "-o", str(tmp_path / "x.wav"), "--model", "random-tiny", *args]) == 2
    assert message in capsys.readouterr().err
