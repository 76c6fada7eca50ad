"""Output layout, shard files, the journal of finished shards, and the final index.

Layout of an output directory::

    tokenize.json            the run's settings and runtime (device, dtype, backend, torch threads
                             and version); a rerun must match them (resume) or is refused
    items.parquet            the frozen item list (id, source, row): shard k holds items
                             [k * shard_size, (k + 1) * shard_size), whatever the number of ranks
    shards/shard-00000-of-00042.parquet ...
    journal/rank-00000.jsonl one line per finished shard: rows, audio seconds, the failed items,
                             seq (the highest seq of a shard, in any rank's journal, is its current entry)
    npy/<id>.npy             with --npy: codes per item, (n_q, T) int16 (ids that would share a
                             file name get '~<hash of the id>' before .npy: see unique_relpaths)
    .tmp-npy/                with --npy: .npy files being written (a resume removes a killed run's)
    index.json               written when every shard is done: shards, counts, model, settings
    errors.jsonl             every failed item with its reason (in item order); --retry-failed
                             encodes them again and rewrites their shards
    logs/summary-rank-*.json throughput of each run of each rank

Shard schema (one row per successfully encoded item, in item order):

    id            string          item id
    source        string          file path (or table file; see ``row``)
    row           int64           row in the source table, -1 for audio files
    duration      float64         seconds of audio at 16 kHz (num_samples / 16000)
    num_samples   int64           samples at 16 kHz after decoding, downmixing and resampling
    num_frames    int32           T, code frames (50 per second)
    num_windows   int32           windows the item was encoded in (see batching.py)
    json          string          a WebDataset sample's JSON sidecar (only with keep_json)
    codes         list<list<int16>>  n_q lists of T codes: codes[q][t] is quantizer q at frame t

The Parquet schema metadata key ``xcodec_fast`` holds JSON: model, bandwidth, num_quantizers,
sample_rate, frame_rate, hop_length, codebook_size, window_samples, context_frames, xcodec_fast version, model
config, shard number. ``datasets.load_dataset("parquet", data_files=...)`` reads the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
import numpy as np

from .sources import InputError

METADATA_KEY = b"xcodec_fast"
FORMAT = "xcodec-fast-tokens/1"


def atomic_write_bytes(path: Path, data: bytes, tmp: Path | None = None) -> None:
    """Write to ``tmp`` (default: a hidden file beside ``path``), then rename it over ``path``."""
    tmp = tmp or path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}.parquet"


def shard_schema(metadata: dict):
    import pyarrow as pa

    fields = [
        pa.field("id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("duration", pa.float64()),
        pa.field("num_samples", pa.int64()),
        pa.field("num_frames", pa.int32()),
        pa.field("num_windows", pa.int32()),
        pa.field("codes", pa.list_(pa.list_(pa.int16()))),
    ]
    if metadata.get("keep_json"):
        fields.insert(-1, pa.field("json", pa.string()))
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})


def codes_array(codes: list[np.ndarray]):
    """list<list<int16>> from (n_q, T_i) arrays, built from flat buffers (no per-code Python objects)."""
    import pyarrow as pa

    n_q = [c.shape[0] for c in codes]
    inner_lengths = np.concatenate([np.full(c.shape[0], c.shape[1], dtype=np.int32) for c in codes]) if codes else np.zeros(0, np.int32)
    inner_offsets = np.concatenate([[0], np.cumsum(inner_lengths)]).astype(np.int32)
    outer_offsets = np.concatenate([[0], np.cumsum(n_q)]).astype(np.int32)
    values = np.concatenate([c.reshape(-1) for c in codes]).astype(np.int16) if codes else np.zeros(0, np.int16)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(values, pa.int16()))
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def write_shard(path: Path, rows: list[dict], metadata: dict) -> None:
    """Write ``rows`` (dicts with the schema's columns; ``codes`` an (n_q, T) int array) atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = shard_schema(metadata)
    columns = {name: [r[name] for r in rows] for name in schema.names if name != "codes"}
    arrays = [pa.array(columns[f.name], f.type) if f.name != "codes" else codes_array([r["codes"] for r in rows]) for f in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if rows:
        pq.write_table(table, tmp, compression="zstd")
    else:
        # No row group at all: an empty one makes datasets.load_dataset fail on the whole set
        # ("BatchSize must be greater than 0").
        pq.ParquetWriter(tmp, schema, compression="zstd").close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_codes(table_or_row) -> list[np.ndarray]:
    """The ``codes`` column of a shard table as (n_q, T) int16 arrays."""
    import pyarrow as pa

    column = table_or_row.column("codes") if isinstance(table_or_row, pa.Table) else table_or_row
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    out = []
    inner = column.values
    flat = inner.values.to_numpy(zero_copy_only=False)
    outer_off = column.offsets.to_numpy()
    inner_off = inner.offsets.to_numpy()
    for i in range(len(column)):
        q0, q1 = outer_off[i], outer_off[i + 1]
        start, stop = inner_off[q0], inner_off[q1]
        n_q = q1 - q0
        out.append(flat[start:stop].reshape(n_q, -1) if n_q else np.zeros((0, 0), np.int16))
    return out


def shard_metadata(path: Path) -> dict:
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in raw:
        raise ValueError(f"{path} is not an xcodec_fast token shard (no {METADATA_KEY.decode()} metadata)")
    return json.loads(raw[METADATA_KEY])


class Journal:
    """Append-only record of finished shards, one file per rank; a shard counts as done when its
    journal line exists and its file is present with the journaled row count.

    Every entry carries ``seq``, higher than every entry in any journal when this Journal opened:
    the newest entry of a shard wins whichever rank's file holds it (runs with another world size
    write a shard's newer entry into another rank's journal)."""

    def __init__(self, output_dir: Path, rank: int):
        self.dir = output_dir / "journal"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"rank-{rank:05d}.jsonl"
        # Ranks of one run write disjoint shards, so only earlier runs' entries need to be outranked.
        self._next_seq = 1 + max((e.get("seq", -1) for e in _journal_entries(output_dir)), default=-1)

    def append(self, entry: dict) -> None:
        line = json.dumps({**entry, "seq": self._next_seq}, sort_keys=True) + "\n"
        self._next_seq += 1
        with open(self.path, "a+b") as fh:
            # A kill mid-write leaves a partial last line: end it so this entry stays parseable.
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode())
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def read_all(output_dir: Path) -> dict[int, dict]:
        """Finished shards by number, from every rank's journal: the entry with the highest ``seq``
        wins (entries of older versions have none: they rank below, in file and line order)."""
        entries: dict[int, dict] = {}
        for entry in sorted(_journal_entries(output_dir), key=lambda e: e.get("seq", -1)):  # stable
            entries[entry["shard"]] = entry
        return entries


def _journal_entries(output_dir: Path) -> list[dict]:
    """Every parseable entry of every rank's journal, in file then line order."""
    journal_dir = output_dir / "journal"
    out = []
    for path in sorted(journal_dir.glob("rank-*.jsonl")) if journal_dir.is_dir() else []:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn tail of a killed run: that shard is simply redone
            if isinstance(entry, dict) and isinstance(entry.get("shard"), int):
                if not isinstance(entry.get("seq", -1), int):
                    entry.pop("seq")
                out.append(entry)
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ids_sha256(ids) -> str:
    """Digest of an ordered id list (ids may hold any character: each is length-prefixed)."""
    digest = hashlib.sha256()
    for ident in ids:
        raw = ident.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "little") + raw)
    return digest.hexdigest()


def shard_digests(path: Path) -> dict:
    """What the journal records of a written shard, and what a resume checks it against."""
    import pyarrow.parquet as pq

    return {"sha256": file_sha256(path), "ids_sha256": ids_sha256(pq.read_table(path, columns=["id"]).column("id").to_pylist())}


def completed_shards(output_dir: Path, num_shards: int, warn=None, verify: bool = True) -> dict[int, dict]:
    """Journaled shards whose file still holds what was written: the row count, and (entries of
    this version on, with ``verify``) the file's sha256 and its ids. Anything else is redone;
    ``warn(shard, why)`` is told why."""
    import pyarrow.parquet as pq

    done = {}
    for shard, entry in Journal.read_all(output_dir).items():
        if shard >= num_shards:
            continue
        path = output_dir / "shards" / entry["file"]
        try:
            if pq.read_metadata(path).num_rows != entry["rows"]:
                raise ValueError(f"{entry['rows']} rows journaled, the file holds {pq.read_metadata(path).num_rows}")
            if verify and "sha256" in entry:
                found = shard_digests(path)
                if found["ids_sha256"] != entry["ids_sha256"]:
                    raise ValueError("its item ids are not the ones written (another shard's file?)")
                if found["sha256"] != entry["sha256"]:
                    raise ValueError("its content differs from what was written (damaged?)")
            done[shard] = entry
        except FileNotFoundError:
            pass  # never finished, or removed: redo it
        except (OSError, ValueError) as exc:
            if warn is not None:
                warn(shard, f"{path.name} is redone: {exc}")
    return done


_UNSAFE = re.compile(r"[^A-Za-z0-9._/+=@,-]")


def safe_relpath(item_id: str, suffix: str) -> str:
    """A relative file path for an item id: no absolute paths, no '..', odd characters -> '_'.
    Not one-to-one ('x y' and 'x_y' give the same path): name files with ``unique_relpaths``."""
    parts = [p for p in _UNSAFE.sub("_", item_id).split("/") if p not in ("", ".", "..")]
    if not parts:
        parts = ["_"]
    return "/".join(parts) + suffix


def _id_tag(item_id: str) -> str:
    # '~' never survives safe_relpath, so a tagged name cannot equal an untagged one.
    return "~" + hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def unique_relpaths(ids, suffix: str, keep_own_suffix: bool = False) -> dict[str, str]:
    """id -> relative path ending in ``suffix``, a different file for every id, also on
    case-insensitive file systems. A path is ``safe_relpath(id, suffix)`` unless another id maps to
    the same path (ignoring case), or the path is another id's folder: then every id involved gets
    ``~`` and a hash of the id before the suffix. Depends only on the set of ids, so every rank and
    every resume of a run picks the same names. ``keep_own_suffix``: an id that already ends in
    ``suffix`` (any case) keeps its ending instead of getting a second one ('a.wav' -> 'a.wav')."""
    stems = {}
    for item_id in ids:
        own = keep_own_suffix and item_id.lower().endswith(suffix.lower())
        stem, end = (item_id[: len(item_id) - len(suffix)], item_id[len(item_id) - len(suffix) :]) if own else (item_id, suffix)
        stems[item_id] = (safe_relpath(stem, ""), end)
    paths = {item_id: stem + end for item_id, (stem, end) in stems.items()}
    by_key: dict[str, list[str]] = {}
    for item_id, path in paths.items():
        by_key.setdefault(path.casefold(), []).append(item_id)
    folders = {path.casefold().rsplit("/", i)[0] for path in paths.values() for i in range(1, path.count("/") + 1)}
    for key, members in by_key.items():
        if len(members) > 1 or key in folders:
            for item_id in members:
                stem, end = stems[item_id]
                paths[item_id] = stem + _id_tag(item_id) + end
    seen: dict[str, str] = {}
    for item_id, path in paths.items():
        other = seen.setdefault(path.casefold(), item_id)
        if other != item_id:  # a 48-bit hash collision: not worth a scheme of its own
            raise InputError(f"ids {other!r} and {item_id!r} map to the same file name {path!r}; rename one")
    return paths


def write_npy(path: Path, codes: np.ndarray, tmp: Path | None = None) -> None:
    """``tmp``: where the bytes go before the rename; the engine keeps its temps in one flat folder
    (same file system), so a resume can find a killed run's strays without walking npy/."""
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    if tmp is not None:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, codes.astype(np.int16), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue(), tmp)


def write_index(output_dir: Path, settings: dict, num_shards: int, entries: dict[int, dict]) -> dict:
    """index.json and errors.jsonl from the journal; both are deterministic in the run's content."""
    missing = [k for k in range(num_shards) if k not in entries]
    if missing:
        raise RuntimeError(
            f"{output_dir}: {len(missing)} of {num_shards} shards are not finished (first: {missing[:5]}); "
            "rerun the same tokenize command to finish them"
        )
    errors = [err for k in range(num_shards) for err in entries[k].get("errors", [])]
    lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors)
    atomic_write_bytes(output_dir / "errors.jsonl", lines.encode())
    shards = [
        {
            "file": f"shards/{entries[k]['file']}",
            "rows": entries[k]["rows"],
            "failed": entries[k]["failed"],
            "audio_seconds": entries[k]["audio_seconds"],
            "num_frames": entries[k]["num_frames"],
        }
        for k in range(num_shards)
    ]
    index = {
        "format": FORMAT,
        **{k: settings[k] for k in ("model", "bandwidth", "num_quantizers", "sample_rate", "frame_rate",
                                    "hop_length", "window_samples", "context_frames", "shard_size", "num_items", "version")},
        "num_shards": num_shards,
        "num_ok": sum(s["rows"] for s in shards),
        "num_failed": len(errors),
        "audio_hours": round(sum(s["audio_seconds"] for s in shards) / 3600, 6),
        "errors_file": "errors.jsonl",
        "shards": shards,
    }
    atomic_write_json(output_dir / "index.json", index)
    return index
