"""Corpus formats: WebDataset tar shards and Lhotse manifests, written by those libraries themselves."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from xcodec_fast.config import tiny_config
from xcodec_fast.modeling.codec import XcodecModel
from xcodec_fast.tokenize import read_codes, tokenize
from xcodec_fast.tokenize.sources import InputError, ItemLoader, expand_braces, list_items



@pytest.fixture(scope="module")
def model():
    return XcodecModel.from_random(tiny_config(), seed=5)


def _clip(seconds: float, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t)[:, None] + 0.02 * rng.standard_normal((n, channels))
    return x.astype(np.float32) if channels > 1 else x[:, 0].astype(np.float32)


def _encoded(data: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, data, 16000, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def _alone(model, audio: np.ndarray) -> np.ndarray:
    return model.encode(torch.from_numpy(audio)[None, None]).audio_codes[0].numpy().astype(np.int16)


def _rows(out):
    index = json.loads((out / "index.json").read_text())
    return pa.concat_tables([pq.read_table(out / s["file"]) for s in index["shards"]])


def test_brace_patterns():
    assert expand_braces("d/{000..002}.tar") == ["d/000.tar", "d/001.tar", "d/002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(InputError, match="runs backwards"):
        expand_braces("{3..1}")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two WebDataset shards written by webdataset's own TarWriter: one plain, one gzipped."""
    webdataset = pytest.importorskip("webdataset")
    root = tmp_path_factory.mktemp("wds")
    clips = {}
    for shard, suffix in ((0, ".tar"), (1, ".tar.gz")):
        with webdataset.TarWriter(str(root / f"shard-{shard:06d}{suffix}")) as sink:
            for i in range(3):
                key = f"s{shard}_{i:03d}"
                audio = _clip(0.4 + 0.3 * i, seed=10 * shard + i)
                clips[key] = audio
                fmt = ("FLAC", "flac") if i % 2 else ("WAV", "wav")
                sink.write({"__key__": key, fmt[1]: _encoded(audio, fmt[0]), "json": {"text": f"utterance {key}"}})
    return root, clips


def test_webdataset_shards_list_and_load(shards):
    root, clips = shards
    items = list_items([root / "shard-000000.tar"])
    assert [i.id for i in items] == ["s0_000", "s0_001", "s0_002"] and all(i.offset > 0 for i in items)
    both = list_items([root])
    assert list_items([str(root / "shard-{000000.tar,000001.tar.gz}")]) == both
    assert [i.id for i in both] == sorted(clips)
    compressed = [i for i in both if i.source.endswith(".gz")]
    assert all(i.offset == -1 for i in compressed) and json.loads(compressed[0].sidecar) == {"text": "utterance s1_000"}
    loader = ItemLoader()
    # The compressed shard is read forward; asking for an earlier member reopens it.
    for item in [*both, compressed[0]]:
        np.testing.assert_allclose(loader.load(item), clips[item.id], atol=1 / 32768)
    with pytest.raises(InputError, match="3 of 4 shards do not exist, e.g. .*shard-000001.tar"):
        list_items([str(root / "shard-{000000..000003}.tar")])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_tokenize_webdataset_keeps_keys_and_sidecars(shards, model, tmp_path, num_workers):
    root, clips = shards
    out = tmp_path / "out"
    summary = tokenize([root], out, model=model, num_workers=num_workers, progress=False, keep_json=True, shard_size=4)
    assert summary["ok"] == 6
    table = _rows(out)
    assert table.column("id").to_pylist() == sorted(clips)
    for row, codes in zip(table.to_pylist(), read_codes(table)):
        assert json.loads(row["json"]) == {"text": f"utterance {row['id']}"}
        audio = ItemLoader().load(next(i for i in list_items([root]) if i.id == row["id"]))
        np.testing.assert_array_equal(codes, _alone(model, audio), err_msg=row["id"])


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_webdataset_sample_soundfile_cannot_read_is_a_failed_item(model, tmp_path, suffix):
    """An .m4a sample is listed and fails as an item (errors.jsonl names the shard and the member);
    the samples around it tokenize."""
    webdataset = pytest.importorskip("webdataset")
    shard = tmp_path / f"mixed{suffix}"
    clips = {"a": _clip(0.5, seed=1), "c": _clip(0.6, seed=3)}
    with webdataset.TarWriter(str(shard)) as sink:
        sink.write({"__key__": "a", "flac": _encoded(clips["a"], "FLAC")})
        sink.write({"__key__": "b", "m4a": b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "json": {"text": "b"}})
        sink.write({"__key__": "c", "wav": _encoded(clips["c"], "WAV")})
    assert [i.id for i in list_items([shard])] == ["a", "b", "c"]
    out = tmp_path / "out"
    summary = tokenize([shard], out, model=model, num_workers=0, progress=False)
    assert (summary["ok"], summary["failed"]) == (2, 1)
    [error] = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert error["id"] == "b" and error["source"] == str(shard.resolve())
    assert f"{shard.resolve()}:b.m4a: soundfile cannot decode .m4a audio; convert it first" in error["reason"]
    table = _rows(out)
    assert table.column("id").to_pylist() == ["a", "c"]
    for ident, codes in zip(["a", "c"], read_codes(table)):
        np.testing.assert_array_equal(codes, _alone(model, clips[ident].astype(np.float32)), err_msg=ident)


def test_webdataset_readable_audio_wins_over_unreadable(tmp_path):
    webdataset = pytest.importorskip("webdataset")
    with webdataset.TarWriter(str(tmp_path / "both.tar")) as sink:
        sink.write({"__key__": "k", "m4a": b"\x00\x00\x00\x20ftypM4A ", "flac": _encoded(_clip(0.2, seed=1), "FLAC")})
    [item] = list_items([tmp_path / "both.tar"])
    assert item.member == "k.flac" and len(ItemLoader().load(item)) == 3200


@pytest.fixture(scope="module")
def lhotse_manifests(tmp_path_factory):
    """Recordings and cuts written by lhotse itself: a mono and a stereo file, cuts into both."""
    lhotse = pytest.importorskip("lhotse")
    root = tmp_path_factory.mktemp("lhotse")
    sf.write(root / "mono.wav", _clip(3.0, seed=1), 16000, subtype="PCM_16")
    sf.write(root / "stereo.flac", _clip(2.5, seed=2, channels=2), 16000, subtype="PCM_16")
    recordings = lhotse.RecordingSet.from_recordings(
        [lhotse.Recording.from_file(root / "mono.wav"), lhotse.Recording.from_file(root / "stereo.flac")])
    cuts = lhotse.CutSet.from_cuts([
        lhotse.MonoCut("mono-a", start=0.5, duration=1.25, channel=0, recording=recordings["mono"]),
        lhotse.MonoCut("mono-b", start=1.7, duration=1.3, channel=0, recording=recordings["mono"]),
        lhotse.MonoCut("stereo-right", start=0.3, duration=1.9, channel=1, recording=recordings["stereo"]),
    ])
    recordings.to_file(root / "recordings.jsonl.gz")
    cuts.to_file(root / "cuts.jsonl.gz")
    return root, recordings, cuts


def test_lhotse_cuts_read_only_their_span(lhotse_manifests):
    root, recordings, cuts = lhotse_manifests
    items = list_items([root / "cuts.jsonl.gz"])
    assert [i.id for i in items] == ["mono-a", "mono-b", "stereo-right"]
    loader = ItemLoader()
    for item, cut in zip(items, cuts):
        np.testing.assert_array_equal(loader.load(item), cut.load_audio()[0].astype(np.float32), err_msg=item.id)
    whole = list_items([root / "recordings.jsonl.gz"])
    assert [i.id for i in whole] == ["mono", "stereo"]
    np.testing.assert_array_equal(loader.load(whole[0]), recordings["mono"].load_audio()[0])


def test_tokenize_lhotse_cuts(lhotse_manifests, model, tmp_path):
    root, _, cuts = lhotse_manifests
    out = tmp_path / "out"
    assert tokenize([root / "cuts.jsonl.gz"], out, model=model, num_workers=0, progress=False)["ok"] == 3
    table = _rows(out)
    for row, codes, cut in zip(table.to_pylist(), read_codes(table), cuts):
        assert row["id"] == cut.id and row["num_samples"] == cut.num_samples
        np.testing.assert_array_equal(codes, _alone(model, cut.load_audio()[0].astype(np.float32)), err_msg=cut.id)


def test_lhotse_errors_name_the_line(tmp_path):
    import gzip

    bad = tmp_path / "cuts.jsonl.gz"
    cut = {"id": "c", "start": 0, "duration": 1, "channel": 0, "type": "MonoCut",
           "recording": {"id": "r", "sampling_rate": 16000, "num_samples": 16000, "duration": 1,
                         "sources": [{"type": "url", "channels": [0], "source": "http://x/y.wav"}]}}
    with gzip.open(bad, "wt") as fh:
        fh.write(json.dumps(cut) + "\n")
    with pytest.raises(InputError, match=r"cuts.jsonl.gz:1: recording 'r' has a 'url' source"):
        list_items([bad])
    with gzip.open(bad, "wt") as fh:
        fh.write(json.dumps({**cut, "id": None}) + "\n")
    with pytest.raises(InputError, match=r"cuts.jsonl.gz:1: a Lhotse cut needs a string 'id'"):
        list_items([bad])
    (tmp_path / "latin1.jsonl").write_bytes('{"path": "caf\xe9.wav"}\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.jsonl:1: not UTF-8 text \(byte 0xe9 at column 14\)"):
        list_items([tmp_path / "latin1.jsonl"])


@pytest.mark.parametrize("perturbation", ["perturb_speed", "perturb_volume"])
def test_lhotse_transforms_are_refused(lhotse_manifests, tmp_path, perturbation):
    """Recordings with transforms (written by lhotse's own perturbation) would be read untransformed:
    refused, naming the manifest, its line and the id, whether a cut holds them or a recording."""
    lhotse = pytest.importorskip("lhotse")
    _, recordings, cuts = lhotse_manifests
    factor = 1.1 if perturbation == "perturb_speed" else 0.5
    name = "Speed" if perturbation == "perturb_speed" else "Volume"
    perturbed = getattr(cuts[1], perturbation)(factor)
    lhotse.CutSet.from_cuts([cuts[0], perturbed, cuts[2]]).to_file(tmp_path / "cuts_sp.jsonl.gz")
    with pytest.raises(InputError, match=rf"cuts_sp.jsonl.gz:2: cut '{perturbed.id}': its recording "
                                         rf"'{perturbed.recording.id}' has transforms \({name}\), which are not applied "
                                         r"here; write the transformed audio to files first \(lhotse: CutSet.save_audios"):
        list_items([tmp_path / "cuts_sp.jsonl.gz"])
    recording = getattr(recordings["mono"], perturbation)(factor)
    lhotse.RecordingSet.from_recordings([recordings["stereo"], recording]).to_file(tmp_path / "recordings_sp.jsonl.gz")
    with pytest.raises(InputError, match=rf"recordings_sp.jsonl.gz:2: recording '{recording.id}' has transforms \({name}\)"):
        list_items([tmp_path / "recordings_sp.jsonl.gz"])


def test_lhotse_supervisions_alone_name_the_manifest_needed(lhotse_manifests, tmp_path):
    lhotse = pytest.importorskip("lhotse")
    lhotse.SupervisionSet.from_segments([
        lhotse.SupervisionSegment("mono-sup", recording_id="mono", start=0.5, duration=1.0, channel=0, text="hello"),
    ]).to_file(tmp_path / "supervisions_train.jsonl.gz")
    with pytest.raises(InputError, match=r"supervisions_train.jsonl.gz:1: a Lhotse supervisions manifest \(supervision "
                                         r"'mono-sup' of recording 'mono'\) holds no audio; pass the recordings manifest "
                                         r"\(recordings\*.jsonl.gz\) or a cuts manifest \(cuts\*.jsonl.gz\)"):
        list_items([tmp_path / "supervisions_train.jsonl.gz"])


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_hugging_face_audio_dataset(model, tmp_path, layout):
    """A dataset built with `datasets` itself, audio cast to its Audio feature (bytes + path structs)."""
    datasets = pytest.importorskip("datasets")
    clips = [_clip(0.5 + 0.25 * i, seed=30 + i) for i in range(3)]
    table = datasets.Dataset.from_dict({
        "name": [f"clip{i}" for i in range(3)],
        "audio": [{"bytes": _encoded(c, "FLAC"), "path": f"clip{i}.flac"} for i, c in enumerate(clips)],
    }).cast_column("audio", datasets.Audio(sampling_rate=16000, decode=False))
    if layout == "parquet":
        source = tmp_path / "data.parquet"
        table.to_parquet(str(source))
    else:
        source = tmp_path / "saved"
        table.save_to_disk(str(source))
    out = tmp_path / "out"
    assert tokenize([source], out, model=model, num_workers=0, progress=False, id_column="name")["ok"] == 3
    rows = _rows(out)
    assert rows.column("id").to_pylist() == ["clip0", "clip1", "clip2"]
    for clip, codes in zip(clips, read_codes(rows)):
        decoded = sf.read(io.BytesIO(_encoded(clip, "FLAC")), dtype="float32")[0]
        np.testing.assert_array_equal(codes, _alone(model, decoded))


def test_directory_walk_survives_symlink_loops(tmp_path):
    root = tmp_path / "corpus"
    (root / "a" / "b").mkdir(parents=True)
    for path in (root / "x.wav", root / "a" / "y.wav", root / "a" / "b" / "z.wav"):
        sf.write(path, _clip(0.1, seed=1), 16000)
    (root / "a" / "b" / "loop").symlink_to(root, target_is_directory=True)
    (root / "again").symlink_to(root / "a", target_is_directory=True)
    assert [i.id for i in list_items([root])] == ["a/b/z.wav", "a/y.wav", "x.wav"]


def test_null_ids_are_named(tmp_path):
    table = pa.table({"name": ["a", None], "audio": [b"x", b"y"]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(InputError, match=r"t.parquet row 1: the id column 'name' is null"):
        list_items([tmp_path / "t.parquet"], id_column="name")
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav", "id": "a"}\n{"path": "b.wav", "id": null}\n')
    with pytest.raises(InputError, match=r"m.jsonl:2: 'id' is null"):
        list_items([tmp_path / "m.jsonl"])


def test_a_non_utf8_text_manifest_is_named(tmp_path):
    (tmp_path / "list.txt").write_bytes("ok.wav\ncaf\xe9.wav\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"list.txt:2: not UTF-8 text \(byte 0xe9 at column 4\)"):
        list_items([tmp_path / "list.txt"])
