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

  * WebDataset shards: ``.tar`` / ``.tar.gz`` / ``.tgz`` files, a directory of them (when it holds
    no audio files), or a brace pattern (``data/{000000..000099}.tar``). A sample is the group of
    members sharing a key (the member path up to the first dot of its file name); its audio is the
    first member with an audio extension, its ``.json`` member the sidecar (kept with
    ``keep_json``); a sample whose audio soundfile cannot read (``.m4a``...) is a failed item. Read with the standard library's tarfile: listing records each member's data
    offset, so a worker reads an uncompressed shard's samples by seeking, front to back, without
    extracting anything; a compressed shard is decompressed as a stream, forward only.
  * Lhotse manifests: ``.jsonl`` / ``.jsonl.gz`` whose records are cuts (one item per cut: its
    recording's file, its start, duration and channel; ids are the cut ids) or recordings (one item
    per recording), read by a small reader of Lhotse's documented JSON schema (file sources only;
    recordings with ``transforms``, e.g. speed perturbation, are refused: they are not applied).

Item ids: the path relative to the input directory, the manifest's id (or its path as written),
the table's id column, ``<table file>#<row>``, the WebDataset key or the Lhotse cut / recording id.
Ids must be unique. Order: directory entries sorted by path; manifests, shards and tables in their
own order; inputs in the order given.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import AudioError, load_audio

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64")
TEXT_MANIFESTS = (".txt", ".lst", ".list", ".tsv", ".scp")
JSON_MANIFESTS = (".jsonl", ".ndjson")
TABLE_EXTENSIONS = (".parquet", ".arrow")
TAR_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
# Audio that soundfile (libsndfile) cannot decode: listed, so each one is reported, not skipped.
UNREADABLE_AUDIO = (".m4a", ".aac", ".mp4", ".wma", ".amr", ".ape", ".webm", ".mka", ".ac3")


class InputError(ValueError):
    """An input that cannot be listed: missing path, unknown kind, bad manifest line, duplicate id."""


@dataclass(frozen=True)
class Item:
    """One audio input: ``source`` is a file path, a table file with ``row`` >= 0, or a tar shard
    with ``member`` (and its data ``offset``/``size`` when the shard is uncompressed). ``start`` and
    ``duration`` (seconds; -1: to the end) select a span, ``channel`` one channel (-1: downmix).
    ``sidecar``: a WebDataset sample's JSON text."""

    id: str
    source: str
    row: int = -1
    member: str = ""
    offset: int = -1
    size: int = -1
    start: float = 0.0
    duration: float = -1.0
    channel: int = -1
    sidecar: str | None = None

    def describe(self) -> str:
        if self.member:
            return f"{self.source}:{self.member}"
        if self.row >= 0:
            return f"{self.source} row {self.row}"
        if self.start or self.duration >= 0:
            span = "end" if self.duration < 0 else f"{self.start + self.duration:.3f} s"
            return f"{self.source} [{self.start:.3f} s to {span}]"
        return self.source


def _is_tar(path: Path) -> bool:
    return path.name.lower().endswith(TAR_EXTENSIONS)


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard patterns: ``{000..012}`` (zero-padded as written) and ``{a,b}``, nested
    left to right; a pattern without braces is itself."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        low, high = numeric.groups()
        if int(high) < int(low):
            raise InputError(f"shard pattern {pattern!r}: range {body} runs backwards")
        width = len(low) if low.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    else:
        choices = body.split(",")
    return [out for choice in choices for out in expand_braces(head + choice + tail)]


def list_items(inputs, audio_column: str = "audio", id_column: str | None = None) -> list[Item]:
    """All items of ``inputs`` (paths, see the module doc) in a deterministic order."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    items: list[Item] = []
    expanded = []
    for raw in inputs:
        names = expand_braces(str(raw)) if "{" in str(raw) else [raw]
        missing = [name for name in names if not Path(name).exists()]
        if len(names) > 1 and missing:
            raise InputError(f"shard pattern {raw}: {len(missing)} of {len(names)} shards do not exist, e.g. {missing[0]}")
        expanded.extend(names)
    for raw in expanded:
        path = Path(raw)
        if not path.exists():
            raise InputError(f"input {raw} does not exist")
        name = path.name.lower()
        if path.is_dir():
            items.extend(_list_directory(path, audio_column, id_column))
        elif _is_tar(path):
            items.extend(list_tar(path))
        elif path.suffix.lower() in TEXT_MANIFESTS:
            items.extend(_list_text_manifest(path))
        elif path.suffix.lower() in JSON_MANIFESTS or name.endswith(tuple(e + ".gz" for e in JSON_MANIFESTS)):
            items.extend(_list_json_manifest(path))
        elif path.suffix.lower() in TABLE_EXTENSIONS:
            items.extend(_list_table(path, path.name, audio_column, id_column))
        elif path.suffix.lower() in AUDIO_EXTENSIONS:
            items.append(Item(path.name, str(path.resolve())))
        else:
            raise InputError(
                f"input {raw}: unknown kind (suffix {path.suffix!r}); pass a directory, an audio file "
                f"({', '.join(AUDIO_EXTENSIONS)}), a manifest ({', '.join(TEXT_MANIFESTS + JSON_MANIFESTS)}, "
                f"Lhotse .jsonl.gz), a table ({', '.join(TABLE_EXTENSIONS)}) or WebDataset shards "
                f"({', '.join(TAR_EXTENSIONS)})"
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


def _identity(folder: Path) -> tuple[int, int]:
    info = folder.stat()
    return info.st_dev, info.st_ino


def _list_directory(root: Path, audio_column: str, id_column: str | None) -> list[Item]:
    audio, tables, tars = [], [], []
    # Symlinked folders are followed, each real folder once: a link loop or a second link to the
    # same folder would list its files again.
    seen = {_identity(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            identity = _identity(Path(dirpath) / d)
            if identity not in seen:
                seen.add(identity)
                kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            suffix = os.path.splitext(name)[1].lower()
            if name.startswith("."):
                continue
            full = Path(dirpath) / name
            if suffix in AUDIO_EXTENSIONS or suffix in UNREADABLE_AUDIO:
                audio.append(full)
            elif suffix in TABLE_EXTENSIONS:
                tables.append(full)
            elif _is_tar(full):
                tars.append(full)
    if audio:
        rel = sorted((p.relative_to(root).as_posix(), p) for p in audio)
        return [Item(r, str(p.resolve())) for r, p in rel]
    items = []
    if tars:
        for _, path in sorted((p.relative_to(root).as_posix(), p) for p in tars):
            items.extend(list_tar(path))
        return items
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in tables):
        items.extend(_list_table(path, rel, audio_column, id_column))
    return items


def _utf8_line(path: Path, lineno: int, raw: bytes) -> str:
    """One manifest line as text, or an InputError naming the line and the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                         "save the manifest as UTF-8") from None


def _list_text_manifest(path: Path) -> list[Item]:
    items = []
    # Bytes, decoded line by line: a decoding error then names its line.
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = _utf8_line(path, lineno, raw).rstrip("\n").rstrip("\r")
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


def _json_records(path: Path):
    """(line number, record) of a .jsonl or .jsonl.gz file, blank lines skipped."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                line = _utf8_line(path, lineno, raw)
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise InputError(f"{path}: cannot read as {'gzipped ' if opener is gzip.open else ''}UTF-8 JSON lines ({exc})") from None


def _lhotse_kind(record) -> str | None:
    if isinstance(record, dict):
        if "recording" in record and "start" in record and "duration" in record:
            return "cuts"
        if "sources" in record and "sampling_rate" in record:
            return "recordings"
    return None


def _lhotse_without_audio(record) -> str | None:
    """'supervisions' or 'features' for the Lhotse manifests that point at a recording by id only."""
    if isinstance(record, dict) and "recording_id" in record and "recording" not in record:
        if "storage_type" in record:
            return "features"
        if "start" in record and "duration" in record:
            return "supervisions"
    return None


def _list_json_manifest(path: Path) -> list[Item]:
    records = _json_records(path)
    first = next(records, None)
    if first is None:
        return []
    kind = _lhotse_kind(first[1])
    if kind is not None:
        return _list_lhotse(path, kind, [first], records)
    other = _lhotse_without_audio(first[1])
    if other is not None:
        # They name their recording by id alone: the audio's file and rate are in the recordings.
        lineno, record = first
        what = f"{other[:-1]} {record['id']!r}" if record.get("id") else other[:-1]
        raise InputError(
            f"{path}:{lineno}: a Lhotse {other} manifest ({what} of recording {record['recording_id']!r}) holds no "
            "audio; pass the recordings manifest (recordings*.jsonl.gz) or a cuts manifest (cuts*.jsonl.gz) instead"
        )
    items = []
    for lineno, record in [first, *records]:
        audio = None
        if isinstance(record, dict):
            audio = next((record[k] for k in ("path", "audio", "file", "audio_filepath") if k in record), None)
        if not isinstance(audio, str):
            raise InputError(f"{path}:{lineno}: expected an object with a string 'path' (or 'audio', 'file')")
        ident = record.get("id", audio)
        if ident is None:
            raise InputError(f"{path}:{lineno}: 'id' is null; give a string id or leave the key out")
        items.append(Item(str(ident), _resolve(path, audio)))
    return items


def _lhotse_source(manifest: Path, lineno: int, recording: dict, channel: int) -> tuple[str, int]:
    """(file, channel within that file) of a Lhotse recording's ``sources`` for ``channel``
    (-1: the recording's only source, downmixed)."""
    sources = recording.get("sources")
    if not isinstance(sources, list) or not sources:
        raise InputError(f"{manifest}:{lineno}: recording {recording.get('id')!r} has no sources")
    for source in sources:
        channels = source.get("channels") or [0]
        if channel >= 0 and channel not in channels:
            continue
        if source.get("type") != "file" or not isinstance(source.get("source"), str):
            raise InputError(
                f"{manifest}:{lineno}: recording {recording.get('id')!r} has a {source.get('type')!r} source; "
                "only 'file' sources are read (convert URL/command/memory/shar sources to files first)"
            )
        if channel < 0:
            if len(sources) > 1:
                raise InputError(f"{manifest}:{lineno}: recording {recording.get('id')!r} has one source per "
                                 "channel; tokenize cuts of one channel each")
            return _resolve(manifest, source["source"]), -1
        return _resolve(manifest, source["source"]), (channels.index(channel) if len(channels) > 1 else -1)
    raise InputError(f"{manifest}:{lineno}: recording {recording.get('id')!r} has no source for channel {channel}")


def _refuse_transforms(manifest: Path, lineno: int, recording: dict, cut: str | None = None) -> None:
    """A recording with ``transforms`` (speed or volume perturbation, reverb...) is refused: they are not
    applied here, so the file's own audio would be tokenized under the perturbed recording's id."""
    transforms = recording.get("transforms")
    if not transforms:
        return
    names = ", ".join(str(t.get("name")) if isinstance(t, dict) else repr(t) for t in transforms)
    whose = f"cut {cut!r}: its recording" if cut is not None else "recording"
    raise InputError(
        f"{manifest}:{lineno}: {whose} {recording.get('id')!r} has transforms ({names}), which are not applied "
        "here; write the transformed audio to files first (lhotse: CutSet.save_audios(DIR)) and tokenize that "
        "manifest, or leave the transforms out"
    )


def _list_lhotse(path: Path, kind: str, head: list, rest) -> list[Item]:
    items = []
    for lineno, record in [*head, *rest]:
        if _lhotse_kind(record) != kind:
            raise InputError(f"{path}:{lineno}: not a Lhotse {kind[:-1]} like the lines before it")
        ident = record.get("id")
        if not isinstance(ident, str) or not ident:
            raise InputError(f"{path}:{lineno}: a Lhotse {kind[:-1]} needs a string 'id', got {ident!r}")
        if kind == "recordings":
            _refuse_transforms(path, lineno, record)
            source, _ = _lhotse_source(path, lineno, record, -1)
            items.append(Item(ident, source))
            continue
        cut_type = record.get("type", "MonoCut")
        if cut_type != "MonoCut":
            raise InputError(f"{path}:{lineno}: cut {ident!r} is a {cut_type}; only MonoCut cuts are read")
        channel = record.get("channel", 0)
        if not isinstance(channel, int):
            raise InputError(f"{path}:{lineno}: cut {ident!r} has channel {channel!r}; one channel per cut is read")
        recording = record["recording"]
        if not isinstance(recording, dict):
            raise InputError(f"{path}:{lineno}: cut {ident!r} has a {type(recording).__name__} 'recording'; "
                             "expected the recording object")
        _refuse_transforms(path, lineno, recording, cut=ident)
        num_channels = sum(len(s.get("channels") or [0]) for s in recording.get("sources", []))
        source, file_channel = _lhotse_source(path, lineno, recording, channel if num_channels > 1 else -1)
        start, duration = float(record["start"]), float(record["duration"])
        if start < 0 or duration <= 0:
            raise InputError(f"{path}:{lineno}: cut {ident!r} spans start {start} s, duration {duration} s")
        items.append(Item(ident, source, start=start, duration=duration, channel=file_channel))
    return items


def list_tar(path: Path) -> list[Item]:
    """The samples of one WebDataset shard, in member order."""
    compressed = not path.name.lower().endswith(".tar")
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                if base.startswith(".") or "." not in base:
                    continue
                stem, _, extension = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                sample = samples.setdefault(key, {})
                extension = "." + extension.lower()
                if extension == ".json" and "json" not in sample:
                    sample["json"] = tar.extractfile(member).read().decode("utf-8", errors="replace")
                elif extension in AUDIO_EXTENSIONS and "audio" not in sample:
                    sample["audio"] = member
                elif extension in UNREADABLE_AUDIO and "unreadable" not in sample:
                    sample["unreadable"] = member  # listed, to fail as an item, unless readable audio is there too
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read as a tar shard ({exc})") from None
    source = str(path.resolve())
    items = []
    for key, sample in samples.items():
        member = sample.get("audio", sample.get("unreadable"))
        if member is None:
            raise InputError(f"{path}: sample {key!r} has no audio member (extensions {', '.join(AUDIO_EXTENSIONS)})")
        items.append(Item(key, source, member=member.name, offset=-1 if compressed else member.offset_data,
                          size=member.size, sidecar=sample.get("json")))
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
    if None in ids:
        raise InputError(f"{path} row {ids.index(None)}: the id column {id_column!r} is null; every row needs an id")
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
        self._tar_stream = None

    def __getstate__(self):
        return {**self.__dict__, "_cache_key": None, "_cache": None, "_group": None, "_tar_stream": None}

    def load(self, item: Item) -> np.ndarray:
        if item.member.lower().endswith(UNREADABLE_AUDIO):
            suffix = os.path.splitext(item.member)[1]
            raise AudioError(f"{item.describe()}: soundfile cannot decode {suffix} audio; convert it first "
                             f"(e.g. ffmpeg -i in{suffix} out.flac) and write the shard again")
        if item.member:
            audio, _ = load_audio(self._tar_member(item), self.sample_rate, max_seconds=self.max_file_seconds,
                                  name=item.describe())
            return audio
        if item.row < 0 and item.source.lower().endswith(UNREADABLE_AUDIO):
            suffix = os.path.splitext(item.source)[1]
            raise AudioError(f"{item.source}: soundfile cannot decode {suffix} audio; convert it first "
                             f"(e.g. ffmpeg -i in{suffix} out.flac)")
        if item.row < 0:
            span = {}
            if item.start or item.duration >= 0:
                span = {"offset": item.start, "duration": None if item.duration < 0 else item.duration}
            audio, _ = load_audio(item.source, self.sample_rate, max_seconds=self.max_file_seconds, name=item.source,
                                  channel=None if item.channel < 0 else item.channel, **span)
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

    def _tar_member(self, item: Item) -> bytes:
        """A shard member's bytes: by seeking in an uncompressed shard, else from a forward-only
        stream of the compressed one (kept open: a worker's items of a shard come in order)."""
        if item.offset >= 0:
            with open(item.source, "rb") as fh:
                fh.seek(item.offset)
                data = fh.read(item.size)
            if len(data) != item.size:
                raise AudioError(f"{item.describe()}: the shard ends {item.size - len(data)} bytes early")
            return data
        if self._tar_stream is None or self._tar_stream[0] != item.source or item.member in self._tar_stream[2]:
            if self._tar_stream is not None:
                self._tar_stream[1].close()
            self._tar_stream = (item.source, tarfile.open(item.source, "r|*"), set())
        _, tar, passed = self._tar_stream
        try:
            for member in tar:
                passed.add(member.name)
                if member.name == item.member:
                    return tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            self._tar_stream = None
            raise AudioError(f"{item.describe()}: cannot read the shard ({exc})") from None
        self._tar_stream = None
        raise AudioError(f"{item.describe()}: no such member in the shard")

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
