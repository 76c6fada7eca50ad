import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from xcodec_fast.audio import load_audio
from xcodec_fast.config import tiny_config
from xcodec_fast.modeling.codec import ENCODE_CONTEXT_FRAMES, XcodecModel
import xcodec_fast.loading
import xcodec_fast.tokenize
from xcodec_fast.tokenize import build_parser, detokenize, list_items, main, merge, read_codes, run, tokenize
from xcodec_fast.tokenize.batching import Segment, pack_batches, window_encodes
from xcodec_fast.tokenize.engine import RuntimeMismatch, SettingsMismatch
from xcodec_fast.tokenize import writer
from xcodec_fast.tokenize.ray import XcodecTokenizeBatch

REPO = Path(__file__).resolve().parents[1]
BROKEN = {"garbage.wav", "empty.wav", "truncated.wav", "nan.wav", "zero.flac", "tiny.wav"}


@pytest.fixture(scope="module")
def model():
    return XcodecModel.from_random(tiny_config(), seed=0)


def _chirp(sr, seconds, channels, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    f0 = 100 + 50 * seed
    tone = 0.3 * np.sin(2 * np.pi * (f0 + 200 * t) * t)
    x = tone[:, None] + 0.05 * rng.standard_normal((len(t), channels))
    return x.astype(np.float32)


def make_dataset(root: Path, n_good: int = 12, long_seconds: float = 2.3) -> Path:
    """Good files of many lengths, rates, channel counts and formats, one longer than the test
    window (1 s), and the broken kinds."""
    root.mkdir(parents=True, exist_ok=True)
    rates = [8000, 16000, 22050, 44100]
    for i in range(n_good):
        sr, channels = rates[i % 4], 1 + (i % 3 == 1)
        fmt = "flac" if i % 2 else "wav"
        sub = root / ("a" if i % 3 else "b")
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"clip{i:02d}.{fmt}", _chirp(sr, 0.15 + 0.11 * i, channels, i), sr)
    sf.write(root / "long.wav", _chirp(16000, long_seconds, 1, 99), 16000)
    (root / "garbage.wav").write_bytes(os.urandom(700))
    (root / "empty.wav").write_bytes(b"")
    sf.write(root / "good16.wav", _chirp(16000, 0.5, 1, 7), 16000, subtype="PCM_16")
    (root / "truncated.wav").write_bytes((root / "good16.wav").read_bytes()[:9000])
    sf.write(root / "nan.wav", np.full(4000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(root / "zero.flac", np.zeros(0, np.float32), 16000)
    sf.write(root / "tiny.wav", _chirp(16000, 0.002, 1, 3), 16000)  # 32 samples: below the model minimum
    return root


def _rows(out_dir: Path):
    index = json.loads((out_dir / "index.json").read_text())
    tables = [pq.read_table(out_dir / s["file"]) for s in index["shards"]]
    return index, tables


def _alone(model, audio, window, context_frames=ENCODE_CONTEXT_FRAMES):
    """The item alone: whole, or (longer than the window) in windows with attention context."""
    x = torch.from_numpy(audio)[None, None]
    if len(audio) <= window:
        return model.encode(x).audio_codes[0].numpy().astype(np.int16)
    codes = model.encode(x, chunk_frames=window // 320, context_frames=context_frames).audio_codes
    return codes[0].numpy().astype(np.int16)


def test_codes_equal_alone_errors_reported_schema(tmp_path, model):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "out"
    summary = tokenize([data], out, model=model, batch_seconds=3, max_seconds=1, shard_size=5,
                       num_workers=1, npy=True, progress=False)
    index, tables = _rows(out)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {e["id"] for e in errors} == BROKEN
    reasons = {e["id"]: e["reason"] for e in errors}
    assert "truncated" in reasons["truncated.wav"] and "non-finite" in reasons["nan.wav"]
    assert "too short" in reasons["tiny.wav"] and "cannot decode" in reasons["garbage.wav"]
    assert summary["ok"] == index["num_ok"] == 14 and summary["failed"] == index["num_failed"] == len(BROKEN)

    table = pa.concat_tables(tables)
    ids = table.column("id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert set(ids) | BROKEN == {i.id for i in list_items([data])}
    meta = json.loads(pq.read_schema(out / index["shards"][0]["file"]).metadata[b"xcodec_fast"])
    assert meta["num_quantizers"] == 8 and meta["window_samples"] == 16000 and meta["version"]
    assert meta["context_frames"] == ENCODE_CONTEXT_FRAMES
    assert table.schema.field("codes").type == pa.list_(pa.list_(pa.int16()))
    window = meta["window_samples"]
    for row, codes in zip(table.to_pylist(), read_codes(table)):
        audio, _ = load_audio(row["source"])
        assert row["num_samples"] == len(audio) and codes.shape == (8, row["num_frames"])
        assert row["num_windows"] == (window_encodes(row["num_frames"], window // 320) if len(audio) > window else 1)
        np.testing.assert_array_equal(codes, _alone(model, audio, window), err_msg=row["id"])
        np.testing.assert_array_equal(np.load(out / "npy" / (row["id"] + ".npy")), codes)
    assert table.to_pylist()[ids.index("long.wav")]["num_windows"] == 3


def test_window_longer_than_the_batch_is_encoded_alone(tmp_path, model):
    # --batch-seconds below --max-seconds: every 1 s window exceeds the 0.5 s budget and forms its own
    # batch; codes are still each item's codes alone, window by window.
    data = tmp_path / "data"
    data.mkdir()
    for i, seconds in enumerate((0.2, 1.7, 0.9)):
        sf.write(data / f"{i}.wav", _chirp(16000, seconds, 1, i), 16000)
    out = tmp_path / "out"
    summary = tokenize([data], out, model=model, num_workers=0, progress=False, batch_seconds=0.5, max_seconds=1)
    assert summary["ok"] == 3 and summary["model_calls"] >= 3
    for row, codes in zip(pa.concat_tables(_rows(out)[1]).to_pylist(), read_codes(pa.concat_tables(_rows(out)[1]))):
        audio, _ = load_audio(row["source"])
        np.testing.assert_array_equal(codes, _alone(model, audio, 16000), err_msg=row["id"])
    with pytest.raises(ValueError, match="--batch-seconds must be positive, got 0"):
        tokenize([data], tmp_path / "bad", model=model, num_workers=0, progress=False, batch_seconds=0)


def test_default_batch_follows_the_device():
    from xcodec_fast.tokenize.engine import default_batch_seconds

    assert default_batch_seconds(torch.device("cuda", 0)) == 120.0
    assert default_batch_seconds(torch.device("cpu")) == 20.0


def test_shards_load_with_datasets(tmp_path, model):
    datasets = pytest.importorskip("datasets")
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", _chirp(16000, 0.5, 1, 1), 16000)
    for name in ("b.wav", "c.wav"):  # the second shard: every item fails, so it has no rows
        (data / name).write_bytes(b"not audio")
    tokenize([data], tmp_path / "out", model=model, num_workers=0, progress=False, batch_seconds=2, max_seconds=1,
             shard_size=1)
    index, _ = _rows(tmp_path / "out")
    assert [s["rows"] for s in index["shards"]] == [1, 0, 0]
    files = [str(tmp_path / "out" / s["file"]) for s in index["shards"]]
    loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    assert loaded.num_rows == 1 and np.array(loaded[0]["codes"]).shape == (8, 25)


def test_table_and_manifest_inputs(tmp_path, model):
    clips = [_chirp(sr, 0.2 + 0.1 * i, 1 + i % 2, i) for i, sr in enumerate([16000, 22050, 8000])]
    blobs = []
    for i, (clip, sr) in enumerate(zip(clips, [16000, 22050, 8000])):
        path = tmp_path / f"c{i}.flac"
        sf.write(path, clip, sr)
        blobs.append(path.read_bytes())
    hf_style = pa.table({
        "key": ["x", "y", "z", "bad"],
        "audio": pa.array([{"bytes": blobs[0], "path": None}, {"bytes": None, "path": str(tmp_path / "c1.flac")},
                           {"bytes": blobs[2], "path": "c2.flac"}, {"bytes": b"junk", "path": None}],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
    })
    pq.write_table(hf_style, tmp_path / "train.parquet", row_group_size=2)
    (tmp_path / "list.txt").write_text("a\tc0.flac\nc1.flac\n")
    (tmp_path / "list.jsonl").write_text(json.dumps({"id": "j2", "path": "c2.flac"}) + "\n")

    out = tmp_path / "out"
    tokenize([tmp_path / "train.parquet"], out, model=model, id_column="key", num_workers=0, progress=False,
             batch_seconds=2, max_seconds=1)
    index, tables = _rows(out)
    table = pa.concat_tables(tables)
    assert table.column("id").to_pylist() == ["x", "y", "z"] and index["num_failed"] == 1
    by_id = dict(zip(table.column("id").to_pylist(), read_codes(table)))
    for key, i in zip("xyz", range(3)):
        audio, _ = load_audio(tmp_path / f"c{i}.flac")
        np.testing.assert_array_equal(by_id[key], _alone(model, audio, 16000))

    items = list_items([tmp_path / "list.txt", tmp_path / "list.jsonl"])
    assert [(i.id, Path(i.source).name) for i in items] == [("a", "c0.flac"), ("c1.flac", "c1.flac"), ("j2", "c2.flac")]
    assert [i.id for i in list_items([tmp_path / "train.parquet"])] == [f"train.parquet#{r}" for r in range(4)]
    with pytest.raises(ValueError, match="appears twice"):
        list_items([tmp_path / "list.txt", tmp_path / "list.txt"])
    with pytest.raises(ValueError, match="no audio column 'sound'"):
        list_items([tmp_path / "train.parquet"], audio_column="sound")


def test_rerun_resumes_and_refuses_other_settings(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.3, 1, i), 16000)
    out = tmp_path / "out"
    tokenize([data], out, model=model, shard_size=2, num_workers=0, progress=False, batch_seconds=2, max_seconds=1)
    _, before = _rows(out)
    again = tokenize([data], out, model=model, shard_size=2, num_workers=0, progress=False, batch_seconds=2, max_seconds=1)
    assert again["items_this_run"] == 0 and again["skipped_already_done"] == 5
    assert [t.equals(u) for t, u in zip(before, _rows(out)[1])] == [True] * 3
    with pytest.raises(SettingsMismatch, match="shard_size: was 2, now 3"):
        tokenize([data], out, model=model, shard_size=3, num_workers=0, progress=False, batch_seconds=2, max_seconds=1)
    # A journaled shard whose file went missing is written again; the index then holds all items.
    (out / "shards" / "shard-00001-of-00003.parquet").unlink()
    (out / "index.json").unlink()
    assert tokenize([data], out, model=model, shard_size=2, num_workers=0, progress=False, batch_seconds=2,
                    max_seconds=1)["items_this_run"] == 2
    assert merge(out)["num_ok"] == 5


def test_cuda_graphs_needs_a_cuda_device(tmp_path, model, capsys):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "0.wav", _chirp(16000, 0.3, 1, 0), 16000)
    with pytest.raises(ValueError, match="--cuda-graphs needs a CUDA device; this run's model is on cpu"):
        tokenize([data], tmp_path / "out", model=model, cuda_graphs=True, num_workers=0, progress=False)
    args = build_parser().parse_args([str(data), "-o", str(tmp_path / "cli"), "--model", "random-tiny", "--device", "cpu",
                                      "--cuda-graphs", "--no-progress", "--num-workers", "0"])
    assert args.cuda_graphs and run(args) == 2
    assert "--cuda-graphs needs a CUDA device" in capsys.readouterr().err


def test_runtime_records_the_batching(tmp_path, model):
    """Batch shapes set the kernels' reduction order, so the runtime records the batching and a
    resume under another one is refused."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.3, 1, i), 16000)
    out = tmp_path / "out"
    kw = dict(model=model, shard_size=2, num_workers=0, progress=False, batch_seconds=2, max_seconds=1)
    first = tokenize([data], out, **kw)
    assert first["batching"] == "padded" and first["cuda_graphs"] is None
    settings = json.loads((out / "tokenize.json").read_text())
    assert settings["runtime"]["batching"] == "padded"
    settings["runtime"]["batching"] = "cuda-graph-buckets"
    (out / "tokenize.json").write_text(json.dumps(settings))
    (out / "shards" / "shard-00001-of-00002.parquet").unlink()
    with pytest.raises(RuntimeMismatch, match="batching: was 'cuda-graph-buckets', now 'padded'"):
        tokenize([data], out, **kw)


def test_bucketed_run_holds_partial_batches_until_the_end(tmp_path, model, monkeypatch):
    """The run loop in bucketed batching (what --cuda-graphs runs on a GPU, here without graphs):
    a bucket's partial batch waits for later items, every item still finishes in its shard, and
    the codes are the padded run's up to near ties."""
    from xcodec_fast.tokenize import engine

    data = tmp_path / "data"
    data.mkdir()
    for i in range(14):
        sf.write(data / f"{i:02d}.wav", _chirp(16000, 0.1 + 0.03 * (i % 5), 1, i), 16000)
    kw = dict(model=model, shard_size=4, num_workers=0, progress=False, batch_seconds=0.4, max_seconds=1,
              sort_buffer=1)
    padded = tokenize([data], tmp_path / "padded", **kw)
    real_encoder, real_runtime, encoders, held = engine.BatchEncoder, engine.runtime_info, [], []

    class Bucketed(real_encoder):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, bucketed=True)
            encoders.append(self)

        def pack_ready(self, segments, final):
            ready, waiting = super().pack_ready(segments, final)
            held.append(len(waiting))
            return ready, waiting

    monkeypatch.setattr(engine, "BatchEncoder", Bucketed)
    monkeypatch.setattr(engine, "runtime_info", lambda m, batching="padded": {**real_runtime(m), "batching": "buckets"})
    bucketed = tokenize([data], tmp_path / "bucketed", **kw)
    assert bucketed["batching"] == "buckets" and bucketed["ok"] == padded["ok"] == 14
    assert 0 < padded["padding_fraction"] < bucketed["padding_fraction"] < 1
    assert max(held[:-1]) > 0 and held[-1] == 0  # partial batches waited, none at the end
    (_, want), (_, got) = _rows(tmp_path / "padded"), _rows(tmp_path / "bucketed")
    want, got = pa.concat_tables(want).to_pylist(), pa.concat_tables(got).to_pylist()
    assert [r["id"] for r in got] == [r["id"] for r in want]
    from test_fixed_shape_encode import _assert_codes_agree
    for w, g in zip(want, got):
        audio = load_audio(g["source"])[0]
        _assert_codes_agree(model, Segment(0, 0, audio), np.array(g["codes"]), np.array(w["codes"]))


def test_resume_under_other_runtime_is_refused_unless_forced(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.3, 1, i), 16000)
    out, summary = tmp_path / "out", tmp_path / "bench" / "summary.json"
    common = [data, "-o", out, "--model", "random-tiny", "--shard-size", "2", "--max-seconds", "1", "--batch-seconds", "2",
              "--num-workers", "0", "--no-progress"]
    cli = lambda *extra: run(build_parser().parse_args(list(map(str, [*common, *extra]))))  # noqa: E731
    try:
        assert cli("--threads", "1") == 0
        runtime = json.loads((out / "tokenize.json").read_text())["runtime"]
        assert runtime["device"] == "cpu" and runtime["dtype"] == "float32" and runtime["torch_threads"] == 1
        assert runtime["torch_version"] == torch.__version__ and runtime["backend"] in ("eager", "native")
        (out / "shards" / "shard-00001-of-00002.parquet").unlink()
        capsys.readouterr()
        assert cli("--threads", "2") == 2
        err = capsys.readouterr().err
        assert "torch_threads: was 1, now 2" in err and "--force-resume" in err and "near-ties" in err
        assert not (out / "shards" / "shard-00001-of-00002.parquet").exists()
        assert cli("--threads", "2", "--force-resume", "--json-summary", summary) == 0
    finally:
        torch.set_num_threads(1)
    saved = json.loads((out / "tokenize.json").read_text())
    assert saved["runtime"] == runtime and saved["resumed_with_other_runtime"][0]["torch_threads"] == 2
    stats = json.loads(summary.read_text())
    assert stats["ok"] == 1 and stats["skipped_already_done"] == 2 and stats["runtime"]["torch_threads"] == 2
    assert 0 < stats["model_busy_seconds"] <= stats["wall_seconds"] < stats["wall_seconds_total"]
    assert stats["audio_hours_per_hour"] == pytest.approx(0.3 / stats["wall_seconds"], rel=1e-6)
    assert merge(out)["num_ok"] == 3


def test_retry_failed_rewrites_shards_as_a_clean_run(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("0", "1", "2", "3", "4"):
        sf.write(data / f"{name}.wav", _chirp(16000, 0.2 + 0.1 * int(name), 1, int(name)), 16000)
    (data / "0b.wav").write_bytes(b"RIFF not yet")  # fixed later; mid-shard, so the rewrite must keep item order
    (data / "zz.wav").write_bytes(b"RIFF never")
    kw = dict(model=model, shard_size=3, num_workers=0, progress=False, batch_seconds=2, max_seconds=1, npy=True)
    out = tmp_path / "out"
    tokenize([data], out, **kw)
    assert tokenize([data], out, **kw)["items_this_run"] == 0  # a plain resume leaves failures alone
    sf.write(data / "0b.wav", _chirp(22050, 0.7, 2, 9), 22050)
    again = tokenize([data], out, retry_failed=True, **kw)
    assert (again["items_this_run"], again["ok"], again["failed"], again["retried"]) == (2, 1, 1, 2)
    assert again["skipped_already_done"] == 5

    clean = tmp_path / "clean"
    tokenize([data], clean, **kw)
    assert list(_shard_tables(out)) == list(_shard_tables(clean))
    for name, table in _shard_tables(clean).items():
        assert _shard_tables(out)[name].equals(table, check_metadata=True), name
    assert (out / "errors.jsonl").read_text() == (clean / "errors.jsonl").read_text()
    assert [json.loads(line)["id"] for line in (out / "errors.jsonl").read_text().splitlines()] == ["zz.wav"]
    assert json.loads((out / "index.json").read_text()) == json.loads((clean / "index.json").read_text())
    assert sorted(p.name for p in (out / "npy").iterdir()) == sorted(p.name for p in (clean / "npy").iterdir())
    np.testing.assert_array_equal(np.load(out / "npy" / "0b.wav.npy"), np.load(clean / "npy" / "0b.wav.npy"))


def test_resume_removes_npy_temps_of_a_killed_run(tmp_path, model, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.3, 1, i), 16000)
    kw = dict(model=model, shard_size=2, num_workers=0, progress=False, batch_seconds=2, max_seconds=1, npy=True)
    real_replace = os.replace

    def die_before_npy_rename(src, dst):
        if str(dst).endswith("2.wav.npy"):
            raise KeyboardInterrupt  # killed between writing the temp and renaming it
        real_replace(src, dst)

    out = tmp_path / "out"
    monkeypatch.setattr(writer.os, "replace", die_before_npy_rename)
    with pytest.raises(KeyboardInterrupt):
        tokenize([data], out, **kw)
    monkeypatch.setattr(writer.os, "replace", real_replace)
    stray = out / ".tmp-npy" / f"00001-{os.getpid()}.npy.tmp"
    assert list((out / ".tmp-npy").iterdir()) == [stray]
    stray.rename(stray.with_name("00001-999999.npy.tmp"))  # a killed process's temp carries its own pid
    assert tokenize([data], out, **kw)["ok"] == 2
    assert not list((out / ".tmp-npy").iterdir())
    assert sorted(p.name for p in (out / "npy").iterdir()) == [f"{i}.wav.npy" for i in range(4)]


def test_oom_halves_the_batch_and_codes_stay_exact(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.2 + 0.05 * i, 1, i), 16000)
    real_encode = model.encode
    calls = []

    def encode_with_small_memory(x, **kwargs):
        calls.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_encode(x, **kwargs)

    model.encode = encode_with_small_memory
    try:
        summary = tokenize([data], tmp_path / "out", model=model, num_workers=0, progress=False, batch_seconds=10, max_seconds=1)
    finally:
        del model.encode
    assert summary["oom_splits"] >= 1 and summary["ok"] == 6 and max(calls) == 6
    _, tables = _rows(tmp_path / "out")
    table = pa.concat_tables(tables)
    for row, codes in zip(table.to_pylist(), read_codes(table)):
        np.testing.assert_array_equal(codes, _alone(model, load_audio(row["source"])[0], 16000))


def test_pack_batches_respects_budget_and_is_order_independent():
    rng = random.Random(0)
    segments = [Segment(k, 0, np.zeros(rng.randint(100, 5000), np.float32)) for k in range(40)]
    batches = pack_batches(segments, budget=8000, hop_length=320)
    assert sorted(s.key for b in batches for s in b) == list(range(40))
    for batch in batches:
        longest = -(-max(s.length for s in batch) // 320) * 320
        assert len(batch) * longest <= 8000
    shuffled = segments[:]
    rng.shuffle(shuffled)
    again = pack_batches(shuffled, budget=8000, hop_length=320)
    assert [[s.key for s in b] for b in again] == [[s.key for s in b] for b in batches]


def test_detokenize_writes_original_lengths(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    # Lengths off the 320-sample hop (and a windowed item): the decoder stops short, so the end is padded.
    sf.write(data / "a.wav", _chirp(16000, 1.8, 1, 1)[:27277], 16000)
    sf.write(data / "b.flac", _chirp(22050, 0.41, 2, 2), 22050)
    tokenize([data], tmp_path / "out", model=model, num_workers=0, progress=False, batch_seconds=2, max_seconds=1)
    written = detokenize(tmp_path / "out", tmp_path / "wav", model=model)
    assert sorted(p.relative_to(tmp_path / "wav").as_posix() for p in written) == ["a.wav", "b.flac.wav"]
    for src, dst in (("a.wav", "a.wav"), ("b.flac", "b.flac.wav")):
        n = len(load_audio(data / src)[0])
        assert n % 320 and len(load_audio(tmp_path / "wav" / dst)[0]) == n, src


def test_colliding_ids_get_distinct_files(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    # Pairs that one sanitized name would merge: odd characters, case, an id vs its own .wav, file vs folder.
    ids = ["x y.wav", "x_y.wav", "B.wav", "b.wav", "a", "a.wav", "d", "d.npy/e", "plain.wav"]
    lines = []
    for i, ident in enumerate(ids):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.2 + 0.02 * i, 1, i), 16000)
        lines.append(f"{ident}\t{i}.wav")
    (data / "list.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    tokenize([data / "list.txt"], out, model=model, num_workers=0, progress=False, batch_seconds=2, max_seconds=1,
             npy=True, shard_size=4)
    table = pa.concat_tables(_rows(out)[1])
    by_id = dict(zip(table.column("id").to_pylist(), read_codes(table)))
    assert sorted(by_id) == sorted(ids)

    npy_paths = writer.unique_relpaths(ids, ".npy")
    assert npy_paths["plain.wav"] == "plain.wav.npy" and npy_paths["a"] == "a.npy"  # no clash: name kept
    assert npy_paths["d"] != "d.npy" and len({p.lower() for p in npy_paths.values()}) == len(ids)
    files = [p for p in (out / "npy").rglob("*") if p.is_file()]
    assert len(files) == len(ids)
    for ident, rel in npy_paths.items():
        np.testing.assert_array_equal(np.load(out / "npy" / rel), by_id[ident], err_msg=ident)

    written = detokenize(out, tmp_path / "wav", model=model)
    assert len(written) == len(set(written)) == len(ids) == len([p for p in (tmp_path / "wav").rglob("*") if p.is_file()])
    names = writer.unique_relpaths(ids, ".wav", keep_own_suffix=True)
    assert names["plain.wav"] == "plain.wav" and names["d"] == "d.wav" and names["a"] != names["a.wav"]
    for ident in ids:
        decoded = load_audio(tmp_path / "wav" / names[ident])[0]
        assert len(decoded) == table.column("num_samples").to_pylist()[table.column("id").to_pylist().index(ident)]
    # A subset is named as in the full output; a shard passed twice is written once.
    some = detokenize([out, out / "shards" / "shard-00000-of-00003.parquet"], tmp_path / "some", model=model,
                      ids=["a", "x y.wav"])
    assert sorted(p.relative_to(tmp_path / "some").as_posix() for p in some) == sorted([names["a"], names["x y.wav"]])


def test_model_that_cannot_load_is_a_clear_cli_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an uncached hub id then fails at once, with an OSError
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", _chirp(16000, 0.3, 1, 0), 16000)
    assert main([str(data), "-o", str(tmp_path / "out"), "--model", "no-such-org/no-such-model", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-org/no-such-model" in err and "Traceback" not in err
    tokenize([data], tmp_path / "tok", model="random-tiny", num_workers=0, progress=False, batch_seconds=2, max_seconds=1)
    assert main(["detokenize", str(tmp_path / "tok"), "-o", str(tmp_path / "wav"), "--model", "no-such-org/no-such-model"]) == 2
    assert "no-such-org/no-such-model" in capsys.readouterr().err and not (tmp_path / "wav").exists()


def test_world_size_change_then_retry_failed_finishes(tmp_path, model, monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)  # ranks run one after another, no process group
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.2 + 0.05 * i, 1, i), 16000)
    (data / "3.wav").write_bytes(b"RIFF broken")  # shard 1: rank 1's in a 2-rank run
    kw = dict(model=model, shard_size=2, num_workers=0, progress=False, batch_seconds=2, max_seconds=1)
    out = tmp_path / "out"
    tokenize([data], out, rank=0, world_size=2, **kw)
    tokenize([data], out, rank=1, world_size=2, **kw)
    assert merge(out)["num_failed"] == 1
    sf.write(data / "3.wav", _chirp(16000, 0.35, 1, 3), 16000)
    # One process now: shard 1's new entry lands in rank-00000.jsonl, its stale one stays in rank-00001.jsonl.
    summary = tokenize([data], out, rank=0, world_size=1, retry_failed=True, **kw)
    assert summary["retried"] == 1 and summary["index"] is not None
    index = json.loads((out / "index.json").read_text())
    assert (index["num_ok"], index["num_failed"]) == (6, 0) and (out / "errors.jsonl").read_text() == ""
    assert tokenize([data], out, rank=0, world_size=1, **kw)["items_this_run"] == 0
    clean = tmp_path / "clean"
    tokenize([data], clean, **kw)
    for name, table in _shard_tables(clean).items():
        assert _shard_tables(out)[name].equals(table, check_metadata=True), name


def test_long_items_are_packed_alone(model):
    """A long item's codes must not depend on its batch: it is encoded alone, whatever the budget."""
    from xcodec_fast.tokenize.engine import BatchEncoder

    encoder = BatchEncoder(model, budget_samples=16000 * 10, window_samples=16000)
    segments = [Segment(k, 0, np.zeros(n, np.float32)) for k, n in enumerate((8000, 16001, 12000, 30000, 16000))]
    batches = [[s.key for s in batch] for batch in encoder.pack(segments)]
    assert batches[:2] == [[3], [1]] and sorted(k for b in batches[2:] for k in b) == [0, 2, 4]
    assert window_encodes(1, 50) == 1 and window_encodes(50, 50) == 1 and window_encodes(51, 50) == 2


def test_tokenizer_uses_the_shared_loader():
    assert xcodec_fast.tokenize.load_model is xcodec_fast.loading.load_model
    assert xcodec_fast.tokenize.DEFAULT_MODEL == xcodec_fast.loading.DEFAULT_MODEL


def test_ray_callable_without_ray(tmp_path, model):
    sr = 22050
    clip = _chirp(sr, 1.3, 1, 5)
    path = tmp_path / "c.flac"
    sf.write(path, clip, sr)
    udf = XcodecTokenizeBatch(model=model, batch_seconds=2, max_seconds=1)
    batch = {"audio": np.array([path.read_bytes(), str(path), b"junk"], dtype=object), "key": np.array(["a", "b", "c"])}
    out = udf(batch)
    expected = _alone(model, load_audio(path)[0], 16000)
    np.testing.assert_array_equal(out["codes"][0], expected)
    np.testing.assert_array_equal(out["codes"][1], expected)
    assert out["error"][0] == "" and "cannot decode" in out["error"][2] and out["codes"][2].shape == (8, 0)
    assert list(out["key"]) == ["a", "b", "c"] and "audio" not in out


def _run_cli(args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "xcodec_fast.tokenize", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _journal_lines(out: Path):
    journals = sorted((out / "journal").glob("*.jsonl")) if (out / "journal").is_dir() else []
    return [line for p in journals for line in p.read_text().splitlines() if line.endswith("}")]


def _shard_tables(out: Path):
    return {p.name: pq.read_table(p) for p in sorted((out / "shards").glob("shard-*.parquet"))}


def test_kill_and_resume_gives_identical_shards(tmp_path):
    data = make_dataset(tmp_path / "data", n_good=16, long_seconds=1.6)
    common = ["--model", "random-tiny", "--shard-size", "2", "--max-seconds", "1", "--batch-seconds", "2", "--sort-buffer", "1",
              "--num-workers", "1", "--threads", "1", "--no-progress"]
    ref = tmp_path / "ref"
    proc = _run_cli([data, "-o", ref, *common])
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]

    out = tmp_path / "out"
    rng = random.Random(1234)
    kills, finished = 0, []
    for _ in range(5):
        # Kill at a random moment after 1-3 more shards are journaled: mid-batch, mid-write, anywhere.
        target = len(_journal_lines(out)) + rng.randint(1, 3)
        proc = _run_cli([data, "-o", out, *common])
        while proc.poll() is None and len(_journal_lines(out)) < target:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        finished.append(len(_journal_lines(out)))
    assert kills >= 3 and finished[-1] < 13, finished  # 13 shards: the kills left work to resume
    proc = _run_cli([data, "-o", out, *common])
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]

    ref_tables, out_tables = _shard_tables(ref), _shard_tables(out)
    assert list(out_tables) == list(ref_tables)
    for name in ref_tables:
        assert out_tables[name].equals(ref_tables[name], check_metadata=True), name
    assert (out / "errors.jsonl").read_text() == (ref / "errors.jsonl").read_text()
    assert json.loads((out / "index.json").read_text()) == json.loads((ref / "index.json").read_text())
    ids = [i for t in out_tables.values() for i in t.column("id").to_pylist()]
    failed = [json.loads(line)["id"] for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) and sorted(ids + failed) == sorted(i.id for i in list_items([data]))
    assert not list((out / "shards").glob(".*tmp*"))


def test_detokenize_never_overwrites_unless_asked(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(data / name, _chirp(16000, 0.6, 1, 3), 16000)
    original = (data / "a.wav").read_bytes()
    tokenize([data], tmp_path / "out", model=model, num_workers=0, progress=False)
    with pytest.raises(FileExistsError, match=r"a.wav exists \(2 of the 2 files to write do\).*--overwrite"):
        detokenize(tmp_path / "out", data, model=model)
    assert (data / "a.wav").read_bytes() == original  # nothing was written before the check
    assert main(["detokenize", str(tmp_path / "out"), "-o", str(data), "--model", "random-tiny"]) == 2
    written = detokenize(tmp_path / "out", data, model=model, overwrite=True)
    assert sorted(p.name for p in written) == ["a.wav", "b.wav"] and (data / "a.wav").read_bytes() != original


def test_one_writer_per_output_directory(tmp_path, model):
    from xcodec_fast.tokenize.engine import OutputLock

    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", _chirp(16000, 0.5, 1, 1), 16000)
    out = tmp_path / "out"
    out.mkdir()
    holder = OutputLock(out, 0)
    try:
        with pytest.raises(RuntimeError, match=rf"{out} is being written by pid {os.getpid()} on .* since .*another --output-dir"):
            tokenize([data], out, model=model, num_workers=0, progress=False)
        assert not (out / "tokenize.json").exists()
        # Another rank's lock is another file: ranks of one torchrun run do not block each other.
        OutputLock(out, 1).release()
    finally:
        holder.release()
    assert tokenize([data], out, model=model, num_workers=0, progress=False)["ok"] == 1


def test_resume_verifies_the_shards_it_keeps(tmp_path, model, capsys):
    """A finished shard is kept only if its file still holds what the journal says was written:
    a damaged page, or another shard's file copied over it, is redone (same row count both times)."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.4 + 0.1 * i, 1, i), 16000)
    out = tmp_path / "out"
    kw = dict(model=model, shard_size=2, num_workers=0, progress=False)
    tokenize([data], out, **kw)
    shards = sorted((out / "shards").glob("*.parquet"))
    clean = {p.name: p.read_bytes() for p in shards}
    entries = [json.loads(line) for line in (out / "journal" / "rank-00000.jsonl").read_text().splitlines()]
    assert all(len(e["sha256"]) == 64 and len(e["ids_sha256"]) == 64 for e in entries)

    shards[1].write_bytes(clean[shards[0].name])  # shard 0's file over shard 1 (2 rows each)
    damaged = bytearray(clean[shards[0].name])
    damaged[len(damaged) // 3] ^= 0xFF  # a flipped byte inside the data pages
    shards[0].write_bytes(bytes(damaged))
    capsys.readouterr()
    assert tokenize([data], out, **kw)["items_this_run"] == 4
    err = capsys.readouterr().err
    assert "shard-00001-of-00002.parquet is redone: its item ids are not the ones written" in err
    assert "shard-00000-of-00002.parquet is redone" in err
    assert {p.name: p.read_bytes() for p in shards} == clean
    assert tokenize([data], out, **kw)["items_this_run"] == 0  # verified now: nothing to redo


def test_the_weights_are_part_of_the_run(tmp_path, model, capsys):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", _chirp(16000, 0.5, 1, 1), 16000)
    out = tmp_path / "out"
    kw = dict(num_workers=0, progress=False)
    tokenize([data], out, model=model, **kw)
    other = XcodecModel.from_random(tiny_config(), seed=99)  # same config, other weights
    with pytest.raises(SettingsMismatch, match="weights_sha256: was .*--force-resume"):
        tokenize([data], out, model=other, **kw)
    assert tokenize([data], out, model=other, force_resume=True, **kw)["items_this_run"] == 0
    with pytest.raises(ValueError, match="encoded with other weights.*--allow-other-weights"):
        detokenize(out, tmp_path / "wav", model=other)
    assert len(detokenize(out, tmp_path / "wav", model=other, allow_other_weights=True)) == 1
    assert len(detokenize(out, tmp_path / "wav2", model=model)) == 1


def test_a_damaged_settings_file_is_named(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", _chirp(16000, 0.5, 1, 1), 16000)
    out = tmp_path / "out"
    tokenize([data], out, model=model, num_workers=0, progress=False)
    (out / "tokenize.json").write_text("{ not json")
    with pytest.raises(SettingsMismatch, match=r"tokenize.json is damaged .*--overwrite"):
        tokenize([data], out, model=model, num_workers=0, progress=False)


def test_resume_says_when_the_inputs_changed(tmp_path, model, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(data / name, _chirp(16000, 0.4, 1, 2), 16000)
    (data / "c.m4a").write_bytes(b"\x00\x00\x00 ftypM4A ")  # an extension soundfile cannot read
    out = tmp_path / "out"
    kw = dict(model=model, num_workers=0, progress=False)
    summary = tokenize([data], out, **kw)
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert summary["ok"] == 2 and [e["id"] for e in errors] == ["c.m4a"]
    assert "soundfile cannot decode .m4a audio; convert it first" in errors[0]["reason"]
    sf.write(data / "new.wav", _chirp(16000, 0.4, 1, 3), 16000)
    capsys.readouterr()
    assert tokenize([data], out, **kw)["items_this_run"] == 0
    err = capsys.readouterr().err
    assert "1 items were added to the inputs since this run began (e.g. 'new.wav')" in err and "--overwrite" in err


def test_a_first_attempt_that_wrote_nothing_does_not_fix_the_settings(tmp_path, model, monkeypatch):
    import xcodec_fast.tokenize.engine as engine

    data = tmp_path / "data"
    data.mkdir()
    sf.write(data / "a.wav", _chirp(16000, 0.4, 1, 2), 16000)
    out = tmp_path / "out"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed before any shard was finished

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_run_rank", crash)
        with pytest.raises(KeyboardInterrupt):
            tokenize([data], out, model=model, num_workers=0, progress=False, bandwidth=2.0)
    assert (out / "tokenize.json").exists()
    summary = tokenize([data], out, model=model, num_workers=0, progress=False, bandwidth=1.0)
    assert summary["ok"] == 1 and json.loads((out / "tokenize.json").read_text())["bandwidth"] == 1.0


def test_npy_on_a_finished_run_writes_every_item(tmp_path, model):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.3 + 0.1 * i, 1, i), 16000)
    out = tmp_path / "out"
    kw = dict(model=model, num_workers=0, progress=False, shard_size=2)
    tokenize([data], out, **kw)
    assert not (out / "npy").exists()
    tokenize([data], out, npy=True, **kw)
    table = pa.concat_tables(_rows(out)[1])
    for row, codes in zip(table.to_pylist(), read_codes(table)):
        np.testing.assert_array_equal(np.load(out / "npy" / (row["id"] + ".npy")), codes)


def test_npy_with_retry_failed_writes_every_item(tmp_path, model):
    """A resume with --retry-failed --npy after a first run without --npy: every item gets its file,
    those of the shard it rewrites and of the shards it leaves alone, not only the retried one."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        sf.write(data / f"{i}.wav", _chirp(16000, 0.2 + 0.1 * i, 1, i), 16000)
    (data / "1b.wav").write_bytes(b"RIFF not yet")  # shard 1 of [0 1] [1b 2] [3 4]
    kw = dict(model=model, num_workers=0, progress=False, shard_size=2, batch_seconds=2, max_seconds=1)
    out = tmp_path / "out"
    assert tokenize([data], out, **kw)["failed"] == 1 and not (out / "npy").exists()
    sf.write(data / "1b.wav", _chirp(16000, 0.45, 1, 9), 16000)
    again = tokenize([data], out, npy=True, retry_failed=True, **kw)
    assert (again["retried"], again["ok"], again["skipped_already_done"]) == (1, 1, 5)
    table = pa.concat_tables(_rows(out)[1])
    assert sorted(p.name for p in (out / "npy").iterdir()) == sorted(f"{i}.npy" for i in table.column("id").to_pylist())
    assert len(table) == 6
    for row, codes in zip(table.to_pylist(), read_codes(table)):
        np.testing.assert_array_equal(np.load(out / "npy" / (row["id"] + ".npy")), codes, err_msg=row["id"])


def test_bfloat16_tokens_belong_to_the_float32_weights(tmp_path, capsys):
    """The weights' fingerprint does not depend on the run's dtype: shards tokenized with --dtype
    bfloat16 detokenize, and resume, with the same checkpoint in float32; other weights at the same
    path (same config, other random weights) are refused, naming the weights."""
    from xcodec_fast.loading import weights_fingerprint

    same = tmp_path / "checkpoint"
    XcodecModel.from_random(tiny_config(), seed=0).save_pretrained(same)
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.wav", "b.wav"):
        sf.write(data / name, _chirp(16000, 0.4, 1, len(name)), 16000)
    out = tmp_path / "out"
    common = [data, "-o", out, "--shard-size", "1", "--num-workers", "0", "--no-progress"]
    cli = lambda *extra: main(list(map(str, [*common, *extra])))  # noqa: E731

    assert cli("--model", same, "--dtype", "bfloat16") == 0
    saved = json.loads((out / "tokenize.json").read_text())
    assert saved["runtime"]["dtype"] == "bfloat16"
    assert saved["weights_sha256"] == weights_fingerprint(XcodecModel.from_pretrained(same))  # the float32 load's
    assert main(["detokenize", str(out), "-o", str(tmp_path / "wav"), "--model", str(same)]) == 0

    # A float32 resume: refused for the runtime (dtype) alone, accepted with --force-resume, weights unquestioned.
    (out / "shards" / "shard-00001-of-00002.parquet").unlink()
    capsys.readouterr()
    assert cli("--model", same) == 2
    err = capsys.readouterr().err
    assert "dtype: was 'bfloat16', now 'float32'" in err and "weights" not in err
    assert cli("--model", same, "--force-resume") == 0
    err = capsys.readouterr().err
    assert "other weights" not in err and "ok 1, failed 0, skipped (already done) 1" in err

    XcodecModel.from_random(tiny_config(), seed=99).save_pretrained(same)  # retrained in place
    assert cli("--model", same) == 2
    err = capsys.readouterr().err
    assert "(weights_sha256: was" in err and "can be forced with --force-resume" in err and "Traceback" not in err
    assert main(["detokenize", str(out), "-o", str(tmp_path / "wav2"), "--model", str(same)]) == 2
    err = capsys.readouterr().err
    assert f"was encoded with other weights than {same}'s" in err and "--allow-other-weights" in err
    assert not (tmp_path / "wav2").exists()


def test_item_errors_carry_no_memory_addresses(tmp_path, model, monkeypatch):
    """A library's message can hold an object's repr ('<object object at 0x7f...>'), different in
    every run: errors.jsonl and the Ray adapter's error column record it without the address."""
    import xcodec_fast.audio

    def failing_resample(audio, orig_sr, target_sr):
        raise RuntimeError(f"resampler {object()!r} failed")

    monkeypatch.setattr(xcodec_fast.audio, "resample", failing_resample)
    decoded = {"array": _chirp(22050, 0.3, 1, 1)[:, 0].tolist(), "sampling_rate": 22050}  # datasets' decoded Audio
    pq.write_table(pa.table({"name": ["bad"], "audio": [decoded]}), tmp_path / "decoded.parquet")
    out = tmp_path / "out"
    tokenize([tmp_path / "decoded.parquet"], out, model=model, id_column="name", num_workers=0, progress=False)
    [error] = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    udf = XcodecTokenizeBatch(model=model, batch_seconds=2, max_seconds=1)
    ray_error = udf({"audio": np.array([decoded], dtype=object), "name": np.array(["bad"])})["error"][0]
    for text in (error["reason"], ray_error):
        assert "resampler <object object> failed" in text and not re.search(r"0x[0-9a-fA-F]", text), text


def test_options_object_and_keywords_are_the_same_run(tmp_path):
    """tokenize() takes its settings as keywords or as one TokenizeOptions (keywords override it);
    a misspelt setting is a TypeError naming it, a bad value a ValueError naming the option."""
    import dataclasses

    from xcodec_fast.tokenize import TokenizeOptions

    opts = TokenizeOptions(shard_size=3, progress=False, num_workers=0)
    assert dataclasses.replace(opts, npy=True).npy and not opts.npy
    with pytest.raises(TypeError, match="shard_sise"):
        tokenize([str(tmp_path)], tmp_path / "out", model="random-tiny", options=opts, shard_sise=2)
    with pytest.raises(ValueError, match="shard_size must be at least 1"):
        tokenize([str(tmp_path)], tmp_path / "out", model="random-tiny", options=opts, shard_size=0)
    with pytest.raises(ValueError, match="--threads must be a positive integer"):
        TokenizeOptions(threads=0).check()


def test_throughput_bench_records_each_dtype(tmp_path):
    """python -m xcodec_fast.tokenize.bench runs the command line once per (dtype, threads) and
    stores each run's summary with the dtype it ran in."""
    from xcodec_fast.tokenize import bench

    output = tmp_path / "tokenize.json"
    assert bench.main(["-o", str(output), "--tiny-seconds", "3", "--full-seconds", "0", "--threads", "1",
                       "--dtypes", "float32", "bfloat16"]) == 0
    runs = json.loads(output.read_text())["runs"]
    assert [(r["model"], r["dtype"], r["threads"]) for r in runs] == [("random-tiny", "float32", 1),
                                                                      ("random-tiny", "bfloat16", 1)]
    for entry in runs:
        assert entry["summary"]["runtime"]["dtype"] == entry["dtype"]
        assert entry["summary"]["ok"] >= 1 and entry["summary"]["failed"] == 0
        assert entry["batching"] == entry["summary"]["runtime"]["batching"] == "padded" and entry["cuda_graphs"] is None
    with pytest.raises(SystemExit):
        bench.main(["-o", str(output), "--batching", "cuda-graphs"])  # needs --device cuda


def test_throughput_bench_keeps_going_past_a_failed_run(tmp_path, monkeypatch):
    """A failed run is stored with its reason, the others still run, the file is written after each
    run (a time-boxed caller keeps what finished), and the exit status says one failed."""
    from xcodec_fast.tokenize import bench

    real, calls = bench.run_one, []

    def first_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("tokenize failed: the graph capture broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "run_one", first_fails)
    output = tmp_path / "tokenize.json"
    assert bench.main(["-o", str(output), "--tiny-seconds", "3", "--full-seconds", "0", "--threads", "1", "2"]) == 1
    runs = json.loads(output.read_text())["runs"]
    assert [r["threads"] for r in runs] == [1, 2]
    assert "graph capture broke" in runs[0]["error"] and "summary" not in runs[0]
    assert runs[1]["summary"]["ok"] >= 1
