"""Where the audio comes from: listing inputs into a stable, ordered item list, and decoding items.

Inputs (any mix):
  * an audio file, or a directory searched recursively for audio files (by extension);
  * a manifest: ``.txt``/``.lst``/``.list``/``.tsv`` (one path per line, or ``id<TAB>path``) or
    ``.jsonl`` (objects with ``path``, ``audio`` or ``file``, and optionally ``id``); relative paths
    are relative to the manifest's folder;
  * tables: ``.parquet`` files, Hugging Face ``.arrow`` files, or a directory holding them (a
    ``save_to_disk`` dataset or a folder of Parquet shards) when it holds no audio files. The audio
    column holds encoded file bytes, a path, or the ``{"bytes", "path"}`` struct of a ``datasets``
    Audio feature.

Item ids: the path relative to the input directory, the manifest's id (or its path as written),
the table's id column, or ``<table file>#<row>``. Ids must be unique. Order: directory entries
sorted by path; manifests and tables in their own order; inputs in the order given.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import AudioError, load_audio

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64")
TEXT_MANIFESTS = (".txt", ".lst", ".list", ".tsv", ".scp")
JSON_MANIFESTS = (".jsonl", ".ndjson")
TABLE_EXTENSIONS = (".parquet", ".arrow")


class InputError(ValueError):
    """An input that cannot be listed: missing path, unknown kind, bad manifest line, duplicate id."""


@dataclass(frozen=True)
class Item:
    """One audio input: ``source`` is a file path, or a table file with ``row`` >= 0."""

    id: str
    source: str
    row: int = -1

    def describe(self) -> str:
        return self.source if self.row < 0 else f"{self.source} row {self.row}"


def list_items(inputs, audio_column: str = "audio", id_column: str | None = None) -> list[Item]:
    """All items of ``inputs`` (paths, see the module doc) in a deterministic order."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"input {raw} does not exist")
        if path.is_dir():
            items.extend(_list_directory(path, audio_column, id_column))
        elif path.suffix.lower() in TEXT_MANIFESTS:
            items.extend(_list_text_manifest(path))
        elif path.suffix.lower() in JSON_MANIFESTS:
            items.extend(_list_json_manifest(path))
        elif path.suffix.lower() in TABLE_EXTENSIONS:
            items.extend(_list_table(path, path.name, audio_column, id_column))
        elif path.suffix.lower() in AUDIO_EXTENSIONS:
            items.append(Item(path.name, str(path.resolve())))
        else:
            raise InputError(
                f"input {raw}: unknown kind (suffix {path.suffix!r}); pass a directory, an audio file "
                f"({', '.join(AUDIO_EXTENSIONS)}), a manifest ({', '.join(TEXT_MANIFESTS + JSON_MANIFESTS)}) "
                f"or a table ({', '.join(TABLE_EXTENSIONS)})"
            )
    seen: dict[str, Item] = {}
    for item in items:
        if item.id in seen:
            raise InputError(
                f"item id {item.id!r} appears twice ({seen[item.id].describe()} and {item.describe()}); "
                "ids must be unique — tokenize one root directory, or give ids in a manifest"
            )
        seen[item.id] = item
    if not items:
        raise InputError(f"no audio found in {', '.join(map(str, inputs))}")
    return items


def _list_directory(root: Path, audio_column: str, id_column: str | None) -> list[Item]:
    audio, tables = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            if suffix in AUDIO_EXTENSIONS:
                audio.append(full)
            elif suffix in TABLE_EXTENSIONS:
                tables.append(full)
    if audio:
        rel = sorted((p.relative_to(root).as_posix(), p) for p in audio)
        return [Item(r, str(p.resolve())) for r, p in rel]
    items = []
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in tables):
        items.extend(_list_table(path, rel, audio_column, id_column))
    return items


def _list_text_manifest(path: Path) -> list[Item]:
    items = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) == 1:
                ident, audio = parts[0].strip(), parts[0].strip()
            elif len(parts) == 2:
                ident, audio = parts[0].strip(), parts[1].strip()
            else:
                raise InputError(f"{path}:{lineno}: expected 'path' or 'id<TAB>path', got {len(parts)} fields")
            items.append(Item(ident, _resolve(path, audio)))
    return items


def _list_json_manifest(path: Path) -> list[Item]:
    items = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from None
            audio = None
            if isinstance(record, dict):
                audio = next((record[k] for k in ("path", "audio", "file", "audio_filepath") if k in record), None)
            if not isinstance(audio, str):
                raise InputError(f"{path}:{lineno}: expected an object with a string 'path' (or 'audio', 'file')")
            ident = record.get("id", audio)
            items.append(Item(str(ident), _resolve(path, audio)))
    return items


def _resolve(manifest: Path, audio: str) -> str:
    p = Path(os.path.expanduser(audio))
    return str(p if p.is_absolute() else (manifest.parent / p).resolve())


def _open_table(path: Path):
    """A pyarrow Table for a Parquet or (Hugging Face, IPC stream or file) Arrow file; memory-mapped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path)
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _list_table(path: Path, rel: str, audio_column: str, id_column: str | None) -> list[Item]:
    import pyarrow as pa

    try:
        table = _open_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: cannot read as a table ({exc})") from None
    schema = table.schema_arrow if hasattr(table, "schema_arrow") else table.schema
    if audio_column not in schema.names:
        raise InputError(f"{path} has no audio column {audio_column!r} (columns: {schema.names}); pass --audio-column")
    num_rows = table.metadata.num_rows if hasattr(table, "schema_arrow") else table.num_rows
    source = str(path.resolve())
    if id_column is None:
        return [Item(f"{rel}#{row}", source, row) for row in range(num_rows)]
    if id_column not in schema.names:
        raise InputError(f"{path} has no id column {id_column!r} (columns: {schema.names})")
    ids = (table.read(columns=[id_column]) if hasattr(table, "schema_arrow") else table).column(id_column).to_pylist()
    return [Item(str(ident), source, row) for row, ident in enumerate(ids)]


class ItemLoader:
    """Decodes items to 16 kHz mono float32. Picklable; caches one table's row group per process,
    so consecutive rows of a table are read once."""

    def __init__(self, sample_rate: int = 16000, audio_column: str = "audio", max_file_seconds: float | None = None):
        self.sample_rate = sample_rate
        self.audio_column = audio_column
        self.max_file_seconds = max_file_seconds
        self._cache_key = None
        self._cache = None
        self._group = None

    def __getstate__(self):
        return {**self.__dict__, "_cache_key": None, "_cache": None, "_group": None}

    def load(self, item: Item) -> np.ndarray:
        if item.row < 0:
            audio, _ = load_audio(item.source, self.sample_rate, max_seconds=self.max_file_seconds, name=item.source)
            return audio
        value = self._table_value(item)
        label = item.describe()
        if isinstance(value, dict):
            if value.get("array") is not None:  # decoded audio: {"array", "sampling_rate"}
                return self._from_array(value["array"], value.get("sampling_rate"), label)
            data, path = value.get("bytes"), value.get("path")
            value = data if data is not None else path
        if value is None:
            raise AudioError(f"{label}: the {self.audio_column!r} value is empty (null)")
        if isinstance(value, str):
            resolved = value if os.path.isabs(value) else os.path.join(os.path.dirname(item.source), value)
            audio, _ = load_audio(resolved, self.sample_rate, max_seconds=self.max_file_seconds, name=f"{label} ({value})")
            return audio
        if isinstance(value, (bytes, bytearray, memoryview)):
            audio, _ = load_audio(bytes(value), self.sample_rate, max_seconds=self.max_file_seconds, name=label)
            return audio
        raise AudioError(f"{label}: cannot use a {type(value).__name__} as audio (expected bytes, a path or a struct)")

    def _from_array(self, array, sampling_rate, label: str) -> np.ndarray:
        from ..audio import downmix, resample

        if sampling_rate is None:
            raise AudioError(f"{label}: decoded audio array without a sampling_rate")
        audio = np.asarray(array, dtype=np.float32)
        if audio.size == 0:
            raise AudioError(f"{label}: no audio samples (0 frames)")
        if not np.isfinite(audio).all():
            raise AudioError(f"{label}: contains non-finite samples (NaN/Inf)")
        if self.max_file_seconds is not None and audio.shape[-1] / sampling_rate > self.max_file_seconds:
            raise AudioError(f"{label}: too long: {audio.shape[-1] / sampling_rate:.1f} s > the {self.max_file_seconds:g} s limit")
        return resample(downmix(audio), int(sampling_rate), self.sample_rate)

    def _table_value(self, item: Item):
        table = self._cache if self._cache_key and self._cache_key[0] == item.source else None
        if table is None:
            try:
                table = _open_table(Path(item.source))
            except Exception as exc:
                raise AudioError(f"{item.describe()}: cannot read the table ({exc})") from None
            self._cache_key, self._cache = (item.source, None, None), table
        if hasattr(table, "schema_arrow"):  # Parquet: read (and keep) the row group holding the row
            key = self._cache_key
            if key[1] is None or not (key[1] <= item.row < key[2]):
                start = 0
                for group in range(table.num_row_groups):
                    size = table.metadata.row_group(group).num_rows
                    if item.row < start + size:
                        column = table.read_row_group(group, columns=[self.audio_column]).column(0)
                        self._cache_key, self._group = (item.source, start, start + size), column
                        break
                    start += size
                else:
                    raise AudioError(f"{item.describe()}: the table has only {start} rows")
            return self._group[item.row - self._cache_key[1]].as_py()
        if item.row >= table.num_rows:
            raise AudioError(f"{item.describe()}: the table has only {table.num_rows} rows")
        return table.column(self.audio_column)[item.row].as_py()
