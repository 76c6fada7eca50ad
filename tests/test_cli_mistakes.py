"""Every subcommand against a table of user mistakes: one line naming the problem, exit code 2,
never a traceback."""

import numpy as np
import pytest
import soundfile as sf
import torch

from xcodec_fast import cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    sf.write(root / "clip.wav", np.zeros(16000, np.float32), 16000)
    np.save(root / "codes.npy", np.zeros((8, 10), np.int16))
    (root / "empty.npy").write_bytes(b"")
    np.savez(root / "codes.npz", codes=np.zeros((8, 10), np.int16))
    np.save(root / "float.npy", np.zeros((8, 10), np.float32))
    np.save(root / "range.npy", np.full((8, 10), 5000, np.int16))
    (root / "data").mkdir()
    sf.write(root / "data" / "a.wav", np.zeros(8000, np.float32), 16000)
    return root


MODEL = ["--model", "random-tiny"]
MISTAKES = [
    (["encode", "{root}/missing.wav", "-o", "{out}/c.npy"], "no such audio file"),
    (["encode", "{root}/clip.wav", "-o", "{out}/c.npy", "--bandwidth", "3"], "bandwidth"),
    (["decode", "{root}/empty.npy", "-o", "{out}/a.wav"], "cannot read codes from"),
    (["decode", "{root}/codes.npz", "-o", "{out}/a.wav"], "is an .npz archive"),
    (["decode", "{root}/float.npy", "-o", "{out}/a.wav"], "codes must be integers"),
    (["decode", "{root}/range.npy", "-o", "{out}/a.wav"], r"must lie in \[0, 1023\]"),
    (["decode", "{root}/codes.npy", "-o", "/proc/xcodec-no/a.wav"], "/proc/xcodec-no"),
    (["tokenize", "{root}/data", "-o", "{out}/tok", "--threads", "0"], "--threads must be a positive integer"),
    (["tokenize", "{root}/nothing-here", "-o", "{out}/tok"], "does not exist"),
    (["detokenize", "{root}/data", "-o", "{out}/wav"], "no token shards"),
]
if not torch.cuda.is_available():
    MISTAKES.append((["encode", "{root}/clip.wav", "-o", "{out}/c.npy", "--device", "cuda"], "no CUDA device; pass --device cpu"))
    MISTAKES.append((["tokenize", "{root}/data", "-o", "{out}/tok", "--device", "cuda"], "no CUDA device"))


@pytest.mark.parametrize("argv, message", MISTAKES, ids=[" ".join(a[:1] + a[3:]) for a, _ in MISTAKES])
def test_mistake_is_one_line_and_exit_2(files, tmp_path, capsys, argv, message):
    argv = [a.format(root=files, out=tmp_path) for a in argv] + MODEL
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own exits: the status it would give the shell
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert pytest.importorskip("re").search(message, err), err


def test_an_unavailable_backend_is_one_line(files, tmp_path, capsys, monkeypatch):
    """(The tests run Triton through its interpreter, so --backend triton works here: force the refusal.)"""
    from xcodec_fast.ops.backend import BackendUnavailableError

    def refuse(*args, **kwargs):
        raise BackendUnavailableError("backend 'triton' was requested but cannot run on cpu")

    monkeypatch.setattr(cli, "_load", refuse)
    assert cli.main(["encode", str(files / "clip.wav"), "-o", str(tmp_path / "c.npy"), "--backend", "triton"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: backend 'triton' was requested") and "Traceback" not in err


def test_a_mistake_exits_2_from_a_real_process(tmp_path):
    """The exit status the shell sees, not the one main() returns: a float codes file."""
    import subprocess
    import sys

    import numpy as np

    codes = tmp_path / "floats.npy"
    np.save(codes, np.zeros((8, 4), dtype=np.float32))
    result = subprocess.run([sys.executable, "-m", "xcodec_fast.cli", "decode", str(codes), "-o", str(tmp_path / "x.wav"),
                             "--model", "random-tiny"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "must be integers" in result.stderr
