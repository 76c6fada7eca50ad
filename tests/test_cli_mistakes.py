"""Every subcommand against a table of user mistakes: one line naming the problem, exit code 2,
never a traceback."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from xcodec_fast import cli
from xcodec_fast import tokenize as tokenize_module

REPO = Path(__file__).resolve().parents[1]


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
    tokenize_module.tokenize([root / "data"], root / "tok", model="random-tiny", num_workers=0, progress=False)
    (root / "damaged").mkdir()
    (root / "damaged" / "tokenize.json").write_text("{ not json")
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
    # An output path under a regular file (what a read-only place looks like to a writer: nothing can be made there).
    (["encode", "{root}/clip.wav", "-o", "{root}/clip.wav/c.npy"], "cannot write .*clip.wav/c.npy"),
    (["tokenize", "{root}/data", "-o", "{root}/clip.wav/tok"], "cannot create --output-dir .*Not a directory"),
    (["detokenize", "{root}/tok", "-o", "{root}/clip.wav/wav"], "cannot create --output-dir .*Not a directory"),
    (["demo", "-o", "{root}/clip.wav/demo"], "cannot create -o .*Not a directory"),
    (["export-onnx", "-o", "{root}/clip.wav/onnx"], "clip.wav is a file, not a directory"),
    (["bench", "--output", "{root}/clip.wav/bench.json"], "cannot use --output .*clip.wav is a file"),
    (["demo", "--input", "{root}/missing.wav", "-o", "{out}/demo"], "no such audio file"),
    (["demo", "--input", "{root}/data", "-o", "{out}/demo"], "is a directory, not an audio file"),
    (["demo", "--bandwidth", "3", "-o", "{out}/demo"], "bandwidth 3.0"),
    (["info", "{root}/data"], "data has no config.json"),
    (["info", "{root}/no-such-model"], "no such directory: .*no-such-model"),
    (["export-onnx", "-o", "{out}/onnx", "--bandwidth", "3"], "bandwidth 3.0"),
    (["export-onnx", "-o", "{out}/onnx", "--opset", "3"], "--opset 3 is below 18"),
    (["bench", "--threads", "0"], "--threads must be a positive integer, got 0"),
    (["bench", "--threads", "-1"], "--threads must be a positive integer, got -1"),
    (["bench", "--quick", "--dtypes", "int8"], "unknown dtype 'int8'"),
    (["bench", "--quick", "--backends", "cuda-magic"], r"unknown backend\(s\) \['cuda-magic'\]"),
    (["bench", "--quick", "--ops", "fft"], r"unknown op\(s\) \['fft'\]"),
    (["detokenize", "{root}/tok", "-o", "{out}/wav", "--ids", "a.wav", "b.wav"], "--ids: 1 of 2 ids are in none"),
    (["detokenize", "{root}/tok", "-o", "{out}/wav", "--limit", "-1"], "--limit must be 0 or more"),
    (["detokenize", "{root}/clip.wav", "-o", "{out}/wav"], "clip.wav is not a token shard"),
]
# Subcommands without --model.
NO_MODEL = ("info", "bench")
if not torch.cuda.is_available():
    MISTAKES.append((["encode", "{root}/clip.wav", "-o", "{out}/c.npy", "--device", "cuda"], "no CUDA device; pass --device cpu"))
    MISTAKES.append((["tokenize", "{root}/data", "-o", "{out}/tok", "--device", "cuda"], "no CUDA device"))


def _case_id(argv) -> str:
    return " ".join(argv).replace("{root}/", "").replace("{out}/", "")


def _one_line_exit_2(main, argv, capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exits: the status it would give the shell
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("argv, message", MISTAKES, ids=[_case_id(a) for a, _ in MISTAKES])
def test_mistake_is_one_line_and_exit_2(files, tmp_path, capsys, argv, message):
    argv = [a.format(root=files, out=tmp_path) for a in argv] + ([] if argv[0] in NO_MODEL else MODEL)
    err = _one_line_exit_2(cli.main, argv, capsys)
    assert re.search(message, err), err


# python -m xcodec_fast.tokenize has one more subcommand: merge.
MERGE_MISTAKES = [
    (["merge", "{root}/data"], "data has no tokenize.json: not a tokenize output directory"),
    (["merge", "{root}/no-such-dir"], "no-such-dir has no tokenize.json"),
    (["merge", "{root}/damaged"], r"damaged/tokenize.json is damaged .*--overwrite"),
]


@pytest.mark.parametrize("argv, message", MERGE_MISTAKES, ids=[_case_id(a) for a, _ in MERGE_MISTAKES])
def test_merge_mistake_is_one_line_and_exit_2(files, capsys, argv, message):
    err = _one_line_exit_2(tokenize_module.main, [a.format(root=files) for a in argv], capsys)
    assert re.search(message, err), err


def test_merge_of_an_unfinished_run_is_one_line(files, tmp_path, capsys):
    out = tmp_path / "tok"
    tokenize_module.tokenize([files / "data"], out, model="random-tiny", num_workers=0, progress=False)
    (out / "journal" / "rank-00000.jsonl").unlink()  # its only shard: no longer finished
    capsys.readouterr()
    err = _one_line_exit_2(tokenize_module.main, ["merge", str(out)], capsys)
    assert "1 of 1 shards are not finished" in err and "rerun the same tokenize command" in err


HOLD_LOCK = """
import sys
from pathlib import Path
from xcodec_fast.tokenize.engine import OutputLock
lock = OutputLock(Path(sys.argv[1]), 0)
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_a_held_output_lock_is_one_line_naming_the_holder(files, tmp_path, capsys):
    """A second tokenize while another process holds the output directory: one line, exit 2,
    naming that process; nothing is written."""
    out = tmp_path / "tok"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _one_line_exit_2(cli.main, ["tokenize", str(files / "data"), "-o", str(out), *MODEL, "--num-workers", "0",
                                          "--no-progress"], capsys)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert f"{out} is being written by pid {holder.pid} on " in err and "another --output-dir" in err
    assert not (out / "tokenize.json").exists()
    assert cli.main(["tokenize", str(files / "data"), "-o", str(out), *MODEL, "--num-workers", "0", "--no-progress"]) == 0
    assert json.loads((out / "index.json").read_text())["num_ok"] == 1


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
