"""The tokenization run: list items, split them into shards, decode in worker processes, encode in
length-bucketed batches, write shards atomically, resume from the journal, merge ranks.

Determinism: shard k always holds items [k * shard_size, (k + 1) * shard_size) of the frozen item
list, rows in item order; an item's codes do not depend on its batch (the model's padding-mask
contract). So a resumed or multi-rank run writes exactly the shards of an uninterrupted one —
on the same kind of device with the same torch thread count: other float reduction orders can
flip a near-tie quantizer choice (measured: 8 of 240k codes, 1 vs 2 CPU threads). So the run's
runtime (device, dtype, backend, threads, torch version) is recorded too, and a resume under another
one is refused unless forced.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import cpu_malloc
from ..errors import short_error, without_addresses
from ..loading import load_model, weights_fingerprint
from .batching import (Segment, bucket_batch_size, bucket_length, collate, pack_batches, pack_buckets,
                       padded_length, window_encodes, window_samples)
from .sources import InputError, Item, ItemLoader, list_items
from .writer import (
    Journal,
    atomic_write_json,
    completed_shards,
    read_codes,
    shard_digests,
    shard_name,
    unique_relpaths,
    write_index,
    write_npy,
    write_shard,
)

# Settings that shape the output: a rerun into the same directory must repeat them exactly.
_OUTPUT_SETTINGS = ("model", "bandwidth", "num_quantizers", "window_samples", "context_frames", "shard_size", "keep_json",
                    "weights_sha256", "audio_column",
                    "id_column", "max_file_seconds", "inputs", "version", "model_config")


class SettingsMismatch(RuntimeError):
    """The output directory holds a run with other settings."""


class RuntimeMismatch(SettingsMismatch):
    """The output directory was written on another device / dtype / backend / thread count / torch."""


def runtime_info(model, batching: str = "padded") -> dict:
    """What float reduction order depends on, so what a resume must repeat for identical codes.
    ``batching``: how short items are batched (``BatchEncoder.batching``), as batch shapes set
    the kernels' reduction order too."""
    import torch

    from ..ops.backend import current_backend, resolve_auto

    device = model.device
    backend = model.backend or current_backend()
    if backend == "auto":
        backend = resolve_auto(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        from ..benchmark.machine import cpu_name

        name = cpu_name()  # other SIMD kernels (AVX2 vs AVX-512) reduce in another order too
    return {
        "device": device.type,
        "device_name": name,
        "dtype": str(model.dtype).removeprefix("torch."),
        "backend": backend,
        # Threads only split CPU reductions; on a GPU they do not touch the codes.
        "torch_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch_version": torch.__version__,
        "batching": batching,
    }


def default_batch_seconds(device) -> float:
    """Audio per model call when not given: 120 s on a GPU (large batches fill it); 20 s on a CPU,
    where activations of large batches leave the caches (2-core Xeon, full model, 2-18 s files:
    ~8.3 audio-h/h at 20 s against ~4.8 at 120 s)."""
    return 120.0 if getattr(device, "type", str(device)) == "cuda" else 20.0


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and ("out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError))


class BatchEncoder:
    """Encodes lists of segments with one padded model call, halving the batch on out-of-memory
    and isolating a failing segment by bisection; a segment that fails alone gets an error."""

    def __init__(self, model, bandwidth=None, budget_samples: int = 16000 * 120, max_items: int | None = None,
                 window_samples: int | None = None, context_frames: int | None = None, bucketed: bool = False,
                 cuda_graphs: bool = False):
        from ..cuda_graphs import FixedShapeEncoder
        from ..modeling.codec import ENCODE_CONTEXT_FRAMES

        self.model = model
        # Bucketed: batches of a few fixed shapes (batching.pack_buckets), encoded by
        # encode_fixed_shape, each shape replayed from its own CUDA graph with cuda_graphs.
        self.bucketed = bool(bucketed or cuda_graphs)
        self.fixed_shape = FixedShapeEncoder(model, bandwidth, graphs=cuda_graphs) if self.bucketed else None
        # Items longer than the window are encoded alone, window by window with attention context.
        self.window = window_samples
        self.context_frames = ENCODE_CONTEXT_FRAMES if context_frames is None else int(context_frames)
        self.bandwidth = bandwidth
        self.budget = int(budget_samples)
        self.max_items = max_items
        self.hop = model.config.hop_length
        self.min_samples = model.min_input_length() if hasattr(model, "min_input_length") else 1
        self.busy_seconds = 0.0
        self.calls = 0
        # Samples of the items encoded, and of the model calls that encoded them (padding and fill too).
        self.audio_samples = 0
        self.computed_samples = 0
        self.oom_splits = 0
        self._ever_succeeded = False
        self._lone_failures = 0

    def is_long(self, segment: Segment) -> bool:
        return self.window is not None and segment.length > self.window

    def pack(self, segments: list[Segment]) -> list[list[Segment]]:
        """Long items alone (their codes must not depend on what they are batched with), the rest
        in padded batches."""
        long = sorted((s for s in segments if self.is_long(s)), key=lambda s: (-s.length, s.key))
        short = [s for s in segments if not self.is_long(s)]
        if self.bucketed:
            return [[s] for s in long] + pack_buckets(short, self.budget, self.hop, self.window, self.max_items)
        return [[s] for s in long] + pack_batches(short, self.budget, self.hop, self.max_items)

    @property
    def batching(self) -> str:
        """How short items are batched (codes depend on it at float near-ties)."""
        if not self.bucketed:
            return "padded"
        return "cuda-graph-buckets" if self.fixed_shape.use_graphs else "buckets"

    def encode(self, segments: list[Segment]) -> list[np.ndarray | str]:
        """Codes (n_q, T) int16 per segment, or an error string."""
        results: list[np.ndarray | str | None] = [None] * len(segments)
        runnable = []
        for i, seg in enumerate(segments):
            if seg.length < self.min_samples:
                results[i] = f"too short: {seg.length} samples at 16 kHz; the model needs at least {self.min_samples}"
            else:
                runnable.append(i)
        if runnable:
            for i, out in zip(runnable, self._encode_split([segments[i] for i in runnable])):
                results[i] = out
        return results

    def pack_ready(self, segments: list[Segment], final: bool) -> tuple[list[list[Segment]], list[Segment]]:
        """(batches to encode now, segments to hold for the next flush). Bucketed, a bucket's last
        batch that is not full waits for more of its length unless ``final``: filled with silent
        items at every flush, it would cost up to a whole batch of padding per bucket each time."""
        batches = self.pack(segments)
        if final or not self.bucketed:
            return batches, []
        ready, held = [], []
        for batch in batches:
            (held if len(batch) < self._filled_items(batch) else ready).append(batch)
        return ready, [seg for batch in held for seg in batch]

    def _filled_items(self, segments: list[Segment]) -> int:
        """Items of the model call that encodes ``segments`` (bucketed: filled to the bucket's count)."""
        if not self.bucketed or (len(segments) == 1 and self.is_long(segments[0])):
            return len(segments)
        samples = bucket_length(max(s.length for s in segments), self.hop, self.window)
        return max(len(segments), bucket_batch_size(samples, self.budget, self.max_items))

    def _call_samples(self, segments: list[Segment]) -> int:
        longest = max(s.length for s in segments)
        if self.bucketed:
            return self._filled_items(segments) * bucket_length(longest, self.hop, self.window)
        return len(segments) * padded_length(longest, self.hop)

    def _encode_split(self, segments: list[Segment]) -> list[np.ndarray | str]:
        try:
            return self._encode_now(segments)
        except Exception as exc:  # noqa: BLE001 - every failure is either retried smaller or reported per item
            oom, reason = _is_oom(exc), short_error(exc)
            if len(segments) == 1 and not oom and not self._ever_succeeded:
                self._lone_failures += 1
                if self._lone_failures >= 3:
                    raise ModelFailing(f"the model failed on each of the first inputs; last error: {exc}") from exc
        # Past the except block the exception and its traceback are gone, and with them the failed
        # call's frames and tensors (a half-captured graph's pool too), so memory can be freed.
        if oom:
            self._free_memory()
            self.oom_splits += 1
            filled = self._filled_items(segments)
            size = self._call_samples(segments)
            if size <= self.budget:
                # Later batches are packed within the smaller budget, so one OOM is not paid again. A
                # batch packed before an earlier halving is only split: halving again would compound.
                longest = max(s.length for s in segments)
                self.budget = max(size // 2, longest + self.hop)
            if self._filled_items(segments) < filled:
                return self._encode_split(segments)  # fewer silent fill items first
        if len(segments) == 1:
            alone = "out of memory encoding one item alone; lower --max-seconds or --batch-seconds"
            return [f"{alone if oom else 'encode failed'}: {reason}"]
        half = len(segments) // 2
        return self._encode_split(segments[:half]) + self._encode_split(segments[half:])

    def _encode_now(self, segments: list[Segment]) -> list[np.ndarray]:
        import torch

        device, dtype = self.model.device, self.model.dtype
        start = time.perf_counter()
        if len(segments) == 1 and self.is_long(segments[0]):
            x = torch.from_numpy(segments[0].audio)[None, None].to(device=device, dtype=dtype)
            codes = self.model.encode(x, bandwidth=self.bandwidth, chunk_frames=self.window // self.hop,
                                      context_frames=self.context_frames).audio_codes
            lengths = [codes.shape[-1]]
        elif self.bucketed:
            samples = bucket_length(max(s.length for s in segments), self.hop, self.window)
            audio, _ = collate(segments, self.hop, samples)
            codes, code_lengths = self.fixed_shape.encode(torch.from_numpy(audio), [s.length for s in segments],
                                                          self._filled_items(segments))
            lengths = code_lengths.tolist()
        else:
            audio, mask = collate(segments, self.hop)
            x = torch.from_numpy(audio).to(device=device, dtype=dtype, non_blocking=True)
            m = torch.from_numpy(mask).to(device=device)
            out = self.model.encode(x, bandwidth=self.bandwidth, padding_mask=m)
            codes, lengths = out.audio_codes, out.audio_code_lengths.tolist()
        codes = codes.to("cpu", torch.int16).numpy()  # the copy waits for the device
        self.busy_seconds += time.perf_counter() - start
        self.calls += 1
        self._ever_succeeded = True
        longest = max(s.length for s in segments)
        self.audio_samples += sum(s.length for s in segments)
        self.computed_samples += (self._call_samples(segments) if self.bucketed and not self.is_long(segments[0])
                                  else len(segments) * longest)  # the padded path trims to the longest
        return [np.ascontiguousarray(codes[b, :, : lengths[b]]) for b in range(len(segments))]

    def _free_memory(self) -> None:
        import gc

        import torch

        if self.fixed_shape is not None:
            self.fixed_shape.release_graphs()  # their pool holds the largest bucket's activations
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# worker-side decoding
# ---------------------------------------------------------------------------------------------
def item_error(exc: BaseException) -> str:
    """An item's failure as it is recorded (errors.jsonl, the Ray adapter's ``error`` column): the
    message without memory addresses, which differ from run to run, or the type when it is empty."""
    return without_addresses(str(exc)).strip() or type(exc).__name__


class _DecodeDataset:
    """Map-style dataset for torch's DataLoader: position -> (position, audio or None, error or None)."""

    def __init__(self, items: list[Item], loader: ItemLoader):
        self.items = items
        self.loader = loader

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        item = self.items[position]
        try:
            return position, self.loader.load(item), None
        except Exception as exc:  # noqa: BLE001 - any decode failure becomes an errors.jsonl entry
            text = item_error(exc)
            return position, None, text if item.source in text or item.id in text else f"{item.describe()}: {text}"


def _single_thread(_worker_id: int) -> None:
    # Decoding is one file per worker; torch threads there would only fight the model for cores.
    import torch

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        # A killed run's worker would otherwise block forever on its full result queue (orphaned).
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _keep_as_is(sample):
    return sample


def _decoded_stream(items: list[Item], loader: ItemLoader, num_workers: int, prefetch: int):
    if num_workers <= 0:
        dataset = _DecodeDataset(items, loader)
        for position in range(len(dataset)):
            yield dataset[position]
        return
    import torch.utils.data as tud

    data = tud.DataLoader(
        _DecodeDataset(items, loader),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_keep_as_is,
        prefetch_factor=prefetch,
        worker_init_fn=_single_thread,
    )
    yield from data


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
@dataclass
class _Pending:
    item: Item
    shard: int
    num_samples: int = 0
    codes: np.ndarray | None = None
    error: str | None = None


class ModelFailing(RuntimeError):
    """The model failed on every one of the first inputs: a run-level problem, not a bad item."""


class OutputInUse(RuntimeError):
    """Another run holds the output directory."""


class OutputLock:
    """One writer per output directory and rank: an exclusive ``flock`` on
    ``.lock-rank-<rank>`` held for the whole run, released by the kernel if the process dies.
    A second run fails at once, naming the holder."""

    def __init__(self, output_dir: Path, rank: int):
        import fcntl
        import socket

        self.path = output_dir / f".lock-rank-{rank:05d}"
        self._fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "another process"
            self._fh.close()
            raise OutputInUse(
                f"{output_dir} is being written by {holder} (lock {self.path.name}); wait for that run to "
                "finish, stop it, or use another --output-dir"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}")
        self._fh.flush()

    def release(self) -> None:
        if not self._fh.closed:
            self._fh.close()  # closing drops the flock


def _dist_env(rank, world_size):
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world size {world_size})")
    return rank, world_size


class _Group:
    """Barriers between ranks (torch.distributed, gloo) when launched by torchrun; no-op alone."""

    def __init__(self, world_size: int):
        self.active = False
        if world_size > 1 and "MASTER_ADDR" in os.environ:
            import datetime

            import torch.distributed as dist

            if not dist.is_initialized():
                # Ranks wait for each other at the end of a run that may take days.
                dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
                self._owned = True
            else:
                self._owned = False
            self.active = True

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.active and self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def _prepare(output_dir: Path, settings: dict, inputs, audio_column, id_column, overwrite: bool,
             force_resume: bool = False, owner: bool = True) -> list[Item]:
    """Freeze the item list, settings and runtime on the first run; check them on a rerun.
    ``owner``: this process is rank 0, the only writer of the top-level files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings_path, items_path = output_dir / "tokenize.json", output_dir / "items.parquet"
    if owner:
        # Temp files of a killed run (tokenize.json, items.parquet, index.json, errors.jsonl: rank 0's).
        for tmp in output_dir.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)
    nothing_written = not any((output_dir / "journal").glob("rank-*.jsonl")) and not any(
        (output_dir / "shards").glob("*.parquet"))
    if settings_path.exists() and not overwrite and owner and nothing_written:
        # A first attempt that failed before finishing a shard fixes nothing: start afresh.
        _say(f"note: {output_dir} holds no finished shard of its earlier run; starting with this run's settings")
        overwrite = True
    if settings_path.exists() and not overwrite:
        try:
            saved = json.loads(settings_path.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError(f"holds a {type(saved).__name__}, not an object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise SettingsMismatch(f"{settings_path} is damaged ({short_error(exc, with_type=False)}); "
                                   "use a new --output-dir, or --overwrite to start this one again") from None
        diff = [k for k in _OUTPUT_SETTINGS if saved.get(k) != settings.get(k)]
        if force_resume and diff == ["weights_sha256"]:
            _say(f"warning: {output_dir} was written with other weights; resuming as --force-resume asks")
            diff = []
        if diff:
            details = "; ".join(f"{k}: was {saved.get(k)!r}, now {settings.get(k)!r}" for k in diff if k != "model_config")
            raise SettingsMismatch(
                f"{output_dir} holds a run with other settings ({details or 'model config differs'}); "
                "rerun with the same settings to resume, or use a new --output-dir"
                + ("; other weights (weights_sha256) can be forced with --force-resume" if diff == ["weights_sha256"] else "")
            )
        was, now = saved.get("runtime") or {}, settings["runtime"]
        changed = [k for k in now if was.get(k) != now[k]]
        if changed and not force_resume:
            details = "; ".join(f"{k}: was {was.get(k)!r}, now {now[k]!r}" for k in changed)
            raise RuntimeMismatch(
                f"{output_dir} was written with another runtime ({details}); codes can differ at float "
                "near-ties between runtimes, so resuming would mix outputs. Rerun with the same --device, "
                "--dtype, --backend, --threads, --cuda-graphs and torch, use a new --output-dir, or pass --force-resume "
                "(shards written before and after may differ at float near-ties)"
            )
        if changed and owner:
            # Forced: keep the first runtime for later checks and record that the output is mixed.
            resumed = saved.get("resumed_with_other_runtime", []) + [now]
            atomic_write_json(settings_path, {**saved, "resumed_with_other_runtime": resumed})
        items = _read_items(items_path)
        if owner:
            _report_changed_inputs(output_dir, items, inputs, audio_column, id_column)
        return items
    if overwrite:
        for stale in ("journal", "shards", ".tmp-npy"):
            for path in sorted((output_dir / stale).glob("*")) if (output_dir / stale).is_dir() else []:
                path.unlink()
        for name in ("index.json", "errors.jsonl"):
            (output_dir / name).unlink(missing_ok=True)
    items = list_items(inputs, audio_column=audio_column, id_column=id_column)
    table = pa.table({name: pa.array([getattr(i, name) for i in items], kind) for name, kind in _item_columns().items()})
    tmp = items_path.with_name(f".items.parquet.tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, items_path)
    atomic_write_json(settings_path, {**settings, "num_items": len(items)})
    return items


def _report_changed_inputs(output_dir: Path, items: list[Item], inputs, audio_column, id_column) -> None:
    """A resume keeps the item list of the first run; say so when the inputs have changed since."""
    try:
        now = list_items(inputs, audio_column=audio_column, id_column=id_column)
    except InputError as exc:
        _say(f"warning: the inputs cannot be listed now ({exc}); resuming with the {len(items)} items of the first run")
        return
    frozen = {i.id for i in items}
    added = [i.id for i in now if i.id not in frozen]
    gone = len(frozen - {i.id for i in now})
    if added:
        _say(f"warning: {len(added)} items were added to the inputs since this run began (e.g. {added[0]!r}); "
             f"a resume keeps the first run's {len(items)} items. Tokenize the new ones into another "
             "--output-dir, or pass --overwrite to start again with all of them")
    if gone:
        _say(f"warning: {gone} items of this run are no longer in the inputs; they will be reported as errors if not done")


def _item_columns() -> dict:
    """items.parquet's columns: Item's fields."""
    import pyarrow as pa

    return {"id": pa.string(), "source": pa.string(), "row": pa.int64(), "member": pa.string(), "offset": pa.int64(),
            "size": pa.int64(), "start": pa.float64(), "duration": pa.float64(), "channel": pa.int64(),
            "sidecar": pa.string()}


def _read_items(path: Path) -> list[Item]:
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError(f"{path} is missing; the output directory is incomplete — use a new --output-dir")
    table = pq.read_table(path)
    names = [name for name in _item_columns() if name in table.column_names]  # older runs stored fewer
    columns = [table.column(name).to_pylist() for name in names]
    return [Item(**dict(zip(names, values))) for values in zip(*columns)]


def _context_frames(context_seconds: float, cfg) -> int:
    if not context_seconds >= 0:
        raise ValueError(f"--context-seconds must be 0 or more, got {context_seconds}")
    return int(round(context_seconds * cfg.frame_rate))


@dataclass(frozen=True)
class TokenizeOptions:
    """How a tokenize run works (everything but what it reads, where it writes and the model);
    ``tokenize(inputs, out, model, **fields)`` or ``tokenize(inputs, out, model, options=...)``.
    Field meanings: :func:`tokenize`."""

    bandwidth: float | None = None
    batch_seconds: float | None = None
    max_seconds: float = 60.0
    context_seconds: float | None = None
    max_file_seconds: float = 4 * 3600.0
    shard_size: int = 1000
    num_workers: int | None = None
    npy: bool = False
    keep_json: bool = False
    audio_column: str = "audio"
    id_column: str | None = None
    device: str | None = None
    dtype: str | None = None
    backend: str | None = None
    max_batch_items: int | None = None
    cuda_graphs: bool = False
    sort_buffer: int = 8
    progress: bool = True
    overwrite: bool = False
    rank: int | None = None
    world_size: int | None = None
    merge: bool = True
    threads: int | None = None
    retry_failed: bool = False
    force_resume: bool = False

    def check(self) -> None:
        """Reject values no run can use, naming the option."""
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"--threads must be a positive integer, got {self.threads!r}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.batch_seconds is not None and not self.batch_seconds > 0:
            raise ValueError(f"--batch-seconds must be positive, got {self.batch_seconds}")


@dataclass
class RankRun:
    """One rank's share of a run, with what every part of it reads."""

    items: list
    output_dir: Path
    settings: dict
    model: object
    rank: int
    world_size: int
    window: int  # samples per encode window of a long file
    batch_seconds: float  # resolved for the model's device
    options: TokenizeOptions


def tokenize(inputs, output_dir, model=None, options: TokenizeOptions | None = None, **fields) -> dict:
    """Tokenize ``inputs`` (files, directories, manifests, tables: see ``sources``) into Parquet
    shards under ``output_dir`` (layout and schema: see ``writer``). Resumable: rerunning the same
    call finishes what an interrupted one left. Returns this rank's summary dict.

    ``model``: hub id, local directory, an XcodecModel, or 'random' / 'random-tiny'.
    ``batch_seconds``: audio per model call (padding included; default :func:`default_batch_seconds`
    for the model's device); an item longer than that is encoded alone. ``max_seconds``: window
    length for long files, ``context_seconds``: semantic attention context each side of a window
    (default the model's ``ENCODE_CONTEXT_FRAMES``; see ``batching``). ``max_file_seconds``: longer files are reported as errors.
    Under torchrun (RANK / WORLD_SIZE), rank r handles shards k with k % WORLD_SIZE == r; rank 0
    writes index.json once all ranks are done.

    ``keep_json``: WebDataset samples' JSON sidecars go into a ``json`` column of the shards.

    ``retry_failed``: on a resume, encode the items of finished shards that failed (listed in
    errors.jsonl) again; their shards are rewritten with the items that now succeed, so the output
    equals a fresh run over the fixed inputs. ``force_resume``: resume even though the device,
    dtype, backend, torch thread count or torch version differ from the recorded run (shards
    written before and after may differ at float near-ties).
    """
    import torch

    from .. import __version__
    from ..modeling.codec import ENCODE_CONTEXT_FRAMES

    wall_start = time.perf_counter()
    opts = dataclasses.replace(options or TokenizeOptions(), **fields)  # an unknown field is a TypeError
    opts.check()
    bandwidth, batch_seconds, shard_size, device = opts.bandwidth, opts.batch_seconds, opts.shard_size, opts.device
    audio_column, id_column = opts.audio_column, opts.id_column
    rank, world_size = _dist_env(opts.rank, opts.world_size)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    if device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    model, model_id = load_model(model, device=device, dtype=opts.dtype, backend=opts.backend)
    if opts.cuda_graphs and model.device.type != "cuda":
        raise ValueError(f"--cuda-graphs needs a CUDA device; this run's model is on {model.device} "
                         "(pass --device cuda, or drop --cuda-graphs)")
    cfg = model.config
    n_q = cfg.num_quantizers_for_bandwidth(bandwidth)
    window = window_samples(opts.max_seconds, cfg.sample_rate, cfg.hop_length)
    if batch_seconds is None:
        batch_seconds = default_batch_seconds(model.device)
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --output-dir {output_dir}: {exc.filename or output_dir}: {exc.strerror}; "
                         "pass a directory you can write") from None
    settings = {
        "model": model_id,
        "bandwidth": bandwidth,
        "num_quantizers": n_q,
        "sample_rate": cfg.sample_rate,
        "frame_rate": cfg.frame_rate,
        "hop_length": cfg.hop_length,
        "codebook_size": cfg.codebook_size,
        "window_samples": window,
        "context_frames": (ENCODE_CONTEXT_FRAMES if opts.context_seconds is None
                           else _context_frames(opts.context_seconds, cfg)),
        "shard_size": shard_size,
        "keep_json": bool(opts.keep_json),
        "audio_column": audio_column,
        "id_column": id_column,
        "max_file_seconds": opts.max_file_seconds,
        "inputs": [str(Path(p).resolve()) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)],
        "version": __version__,
        "model_config": cfg.to_dict(),
        "weights_sha256": weights_fingerprint(model),
        "runtime": runtime_info(model, "cuda-graph-buckets" if opts.cuda_graphs else "padded"),
    }
    lock = OutputLock(output_dir, rank)
    group = _Group(world_size)
    try:
        if rank == 0:
            items = _prepare(output_dir, settings, inputs, audio_column, id_column, opts.overwrite, opts.force_resume)
        group.barrier()
        if rank != 0:
            if world_size > 1 and not group.active and not (output_dir / "tokenize.json").exists():
                raise InputError(f"rank {rank} without torchrun: run rank 0 first (it lists the inputs)")
            items = _prepare(output_dir, settings, inputs, audio_column, id_column, overwrite=False,
                             force_resume=opts.force_resume, owner=False)
        summary = _run_rank(RankRun(items, output_dir, settings, model, rank, world_size, window, batch_seconds, opts))
        group.barrier()
        if rank == 0 and opts.merge:
            num_shards = math.ceil(len(items) / shard_size)
            # Verified at this run's start or written by it, under the lock: no need to hash them again.
            done = completed_shards(output_dir, num_shards, verify=False)
            if len(done) == num_shards:
                saved = {**settings, "num_items": len(items)}
                summary["index"] = str(output_dir / "index.json")
                write_index(output_dir, saved, num_shards, done)
            else:
                summary["index"] = None
                _say(f"{len(done)} of {num_shards} shards done; index.json is written once all ranks finish "
                     f"(or run: python -m xcodec_fast.tokenize merge {output_dir})")
    finally:
        group.close()
        lock.release()
    summary["wall_seconds_total"] = time.perf_counter() - wall_start
    return summary


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run_rank(run: RankRun) -> dict:
    from tqdm import tqdm

    items, output_dir, settings, model = run.items, run.output_dir, run.settings, run.model
    rank, world_size, window, batch_seconds = run.rank, run.world_size, run.window, run.batch_seconds
    o = run.options
    max_file_seconds, num_workers, npy, audio_column = o.max_file_seconds, o.num_workers, o.npy, o.audio_column
    max_batch_items, sort_buffer, progress, bandwidth = o.max_batch_items, o.sort_buffer, o.progress, o.bandwidth
    retry_failed = o.retry_failed

    shard_size = settings["shard_size"]
    num_shards = math.ceil(len(items) / shard_size)
    mine = [k for k in range(num_shards) if k % world_size == rank]

    def warn(shard: int, why: str) -> None:
        if shard % world_size == rank:  # each rank speaks of its own shards
            _say(f"warning: {why}")

    done = completed_shards(output_dir, num_shards, warn=warn)
    # Finished shards with failures: with --retry-failed only their failed items are encoded again,
    # and the shard is rewritten (atomically) with the old rows plus the retried ones, in item order.
    retry = {k: {e["id"] for e in done[k]["errors"]} for k in mine if k in done and done[k]["failed"]} if retry_failed else {}
    todo = [k for k in mine if k not in done or k in retry]
    if retry:
        # They would describe the shards before the rewrite; rank 0 writes both again at the end.
        for name in ("index.json", "errors.jsonl"):
            (output_dir / name).unlink(missing_ok=True)
    skipped = sum(min(shard_size, len(items) - k * shard_size) - len(retry.get(k, ())) for k in mine if k in done)
    (output_dir / "shards").mkdir(exist_ok=True)
    journal = Journal(output_dir, rank)
    npy_tmp = output_dir / ".tmp-npy"
    # From the whole frozen item list: every rank and resume names an id's file alike.
    npy_paths = unique_relpaths([i.id for i in items], ".npy") if npy else {}
    # Temp files of a killed run: remove this rank's (other ranks may be writing theirs right now).
    for tmp in [*(output_dir / "shards").glob(".shard-*.parquet.tmp-*"), *npy_tmp.glob("*.npy.tmp")]:
        if int(tmp.name.lstrip(".").split("-")[1 if tmp.name.startswith(".shard") else 0]) % world_size == rank:
            tmp.unlink(missing_ok=True)

    ranges = {k: range(k * shard_size, min((k + 1) * shard_size, len(items))) for k in todo}
    pending = [_Pending(items[i], k) for k in todo for i in ranges[k] if k not in retry or items[i].id in retry[k]]
    shard_left = {k: len(retry[k]) if k in retry else len(ranges[k]) for k in todo}
    shard_meta_base = {key: settings[key] for key in ("model", "bandwidth", "num_quantizers", "sample_rate", "frame_rate",
                                                      "hop_length", "codebook_size", "window_samples", "context_frames", "keep_json",
                                                      "weights_sha256", "version", "model_config")}
    sr, hop = settings["sample_rate"], settings["hop_length"]
    encoder = BatchEncoder(model, bandwidth, int(batch_seconds * sr) // hop * hop, max_batch_items,
                           window_samples=window, context_frames=settings["context_frames"], cuda_graphs=o.cuda_graphs)
    if encoder.batching != settings["runtime"]["batching"]:
        raise RuntimeError(f"internal error: batching {encoder.batching} differs from the recorded "
                           f"{settings['runtime']['batching']}")
    loader = ItemLoader(sr, audio_column, max_file_seconds)
    if num_workers is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        num_workers = max(1, min(8, (os.cpu_count() or 2) // local - 1))

    stats = {"ok": 0, "failed": 0, "audio_seconds": 0.0, "shards": 0}
    bar = tqdm(total=len(pending), unit="item", disable=not progress, desc=f"rank {rank}" if world_size > 1 else "tokenize",
               position=rank if world_size > 1 else None, dynamic_ncols=True, smoothing=0.05)
    wall_start = time.perf_counter()

    def finish_item(p: _Pending) -> None:
        bar.update(1)
        if p.error is None:
            stats["ok"] += 1
            stats["audio_seconds"] += p.num_samples / sr
        else:
            stats["failed"] += 1
        elapsed = max(time.perf_counter() - wall_start, 1e-9)
        bar.set_postfix_str(f"{stats['audio_seconds'] / 3600:.2f} h audio, {stats['audio_seconds'] / elapsed:.0f}x RT, "
                            f"{stats['failed']} failed", refresh=False)
        shard_left[p.shard] -= 1
        if shard_left[p.shard] == 0:
            write_finished_shard(p.shard)

    def write_finished_shard(k: int) -> None:
        members = pending[positions[k][0] : positions[k][1]]
        rows, errors = [], []
        for p in members:
            if p.error is not None:
                errors.append({"id": p.item.id, "source": p.item.source, "row": p.item.row, "reason": p.error})
                continue
            codes = p.codes
            rows.append({"id": p.item.id, "source": p.item.source, "row": p.item.row, "duration": p.num_samples / sr,
                         "num_samples": p.num_samples, "num_frames": codes.shape[1],
                         "num_windows": window_encodes(codes.shape[1], window // hop) if p.num_samples > window else 1,
                         "json": p.item.sidecar, "codes": codes})
            p.codes = None
        if k in retry:
            order = {items[i].id: i for i in ranges[k]}
            rows = sorted(_shard_rows(output_dir / "shards" / done[k]["file"]) + rows, key=lambda r: order[r["id"]])
        if npy:  # after the merge: a retried shard's old rows need their files too (earlier runs maybe had no --npy)
            for r in rows:
                write_npy(output_dir / "npy" / npy_paths[r["id"]], r["codes"],
                          npy_tmp / f"{k:05d}-{os.getpid()}.npy.tmp")
        name = shard_name(k, num_shards)
        write_shard(output_dir / "shards" / name, rows, {**shard_meta_base, "shard": k, "num_shards": num_shards})
        digests = shard_digests(output_dir / "shards" / name)  # what a resume checks it against
        journal.append({"shard": k, "file": name, "rows": len(rows), "failed": len(errors), "errors": errors, **digests,
                        "audio_seconds": sum(r["duration"] for r in rows), "num_frames": sum(r["num_frames"] for r in rows)})
        stats["shards"] += 1
        for p in members:
            p.codes = None
        for e in errors:
            bar.write(f"failed: {e['id']}: {e['reason']}", file=sys.stderr)

    positions, start = {}, 0
    for k in todo:
        positions[k] = (start, start + shard_left[k])
        start += shard_left[k]

    buffer: list[Segment] = []
    buffered = 0
    flush_at = sort_buffer * encoder.budget

    def flush(final: bool) -> None:
        nonlocal buffer, buffered
        batches, held = encoder.pack_ready(buffer, final)
        for batch in batches:
            for seg, out in zip(batch, encoder.encode(batch)):
                p = pending[seg.key]
                if isinstance(out, str):
                    p.error = out
                else:
                    p.codes = out
                finish_item(p)
        buffer, buffered = held, 0  # the next flush comes after flush_at samples more

    load_wait = 0.0
    t_wait = time.perf_counter()
    for position, audio, error in _decoded_stream([p.item for p in pending], loader, num_workers, prefetch=4):
        load_wait += time.perf_counter() - t_wait
        p = pending[position]
        if error is not None:
            p.error = error
            finish_item(p)
        else:
            p.num_samples = len(audio)
            segment = Segment(position, 0, audio)
            buffer.append(segment)
            buffered += segment.length
            if buffered >= flush_at:
                flush(final=False)
        t_wait = time.perf_counter()
    if buffer:
        flush(final=True)
    bar.close()
    leftover = [k for k, n in shard_left.items() if n]
    if leftover:
        raise RuntimeError(f"internal error: shards {leftover[:5]} did not finish")
    if npy:
        # Shards finished by earlier runs (perhaps without --npy): their items' files too.
        for k in (k for k in mine if k in done and k not in todo):
            path = output_dir / "shards" / done[k]["file"]
            for row in _shard_rows(path):
                target = output_dir / "npy" / npy_paths[row["id"]]
                if not target.exists():
                    write_npy(target, row["codes"], npy_tmp / f"{k:05d}-{os.getpid()}.npy.tmp")

    wall = time.perf_counter() - wall_start
    audio_s = stats["audio_seconds"]
    summary = {
        "rank": rank,
        "world_size": world_size,
        "items_this_run": len(pending),
        "ok": stats["ok"],
        "failed": stats["failed"],
        "skipped_already_done": skipped,
        "shards_written": stats["shards"],
        "audio_hours": audio_s / 3600,
        "wall_seconds": wall,
        "realtime_factor": audio_s / wall if wall > 0 else 0.0,
        "audio_hours_per_hour": audio_s / wall if wall > 0 else 0.0,
        "model_busy_seconds": encoder.busy_seconds,
        "model_busy_fraction": encoder.busy_seconds / wall if wall > 0 else 0.0,
        "waiting_for_decode_seconds": load_wait,
        "model_calls": encoder.calls,
        # share of the model's input that was padding or fill (what bucketing costs)
        "padding_fraction": 1 - encoder.audio_samples / encoder.computed_samples if encoder.computed_samples else 0.0,
        "oom_splits": encoder.oom_splits,
        "batching": encoder.batching,
        "cuda_graphs": ({"graphs": len(encoder.fixed_shape.graphs), "shapes": sorted(encoder.fixed_shape.graphs),
                         "memory_bytes": encoder.fixed_shape.graph_memory_bytes}
                        if encoder.bucketed and encoder.fixed_shape.use_graphs else None),
        "num_workers": num_workers,
        "device": str(model.device),
        "cpu_malloc": cpu_malloc.mode(),  # speed only; codes do not depend on it
        "retried": sum(len(v) for v in retry.values()),
        "runtime": settings["runtime"],
    }
    logs = output_dir / "logs"
    logs.mkdir(exist_ok=True)
    atomic_write_json(logs / f"summary-rank-{rank:05d}.json", summary)
    _say(
        f"[rank {rank}/{world_size}] ok {summary['ok']}, failed {summary['failed']}, skipped (already done) {skipped}; "
        f"{audio_s / 3600:.3f} h audio in {wall:.1f} s wall = {summary['realtime_factor']:.1f}x real time; "
        f"model busy {encoder.busy_seconds:.1f} s ({100 * summary['model_busy_fraction']:.0f}% of wall), "
        f"waiting for decode {load_wait:.1f} s; {encoder.calls} model calls "
        f"({100 * summary['padding_fraction']:.0f}% of their input padding), {encoder.oom_splits} OOM splits"
        + (f"; {summary['cuda_graphs']['graphs']} CUDA graphs, "
           f"{summary['cuda_graphs']['memory_bytes'] / 2**20:.0f} MiB" if summary["cuda_graphs"] else "")
    )
    return summary


def _shard_rows(path: Path) -> list[dict]:
    """A written shard's rows in ``write_shard``'s form (codes as (n_q, T) arrays), to rewrite it."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    rows = table.drop_columns(["codes"]).to_pylist()
    for row, codes in zip(rows, read_codes(table)):
        row["codes"] = codes
    return rows


def merge(output_dir) -> dict:
    """Write index.json and errors.jsonl for a finished output directory (what rank 0 does at the
    end; run it by hand when ranks were launched separately)."""
    output_dir = Path(output_dir)
    settings_path = output_dir / "tokenize.json"
    if not settings_path.exists():
        raise FileNotFoundError(f"{output_dir} has no tokenize.json: not a tokenize output directory")
    try:
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
        num_shards = math.ceil(settings["num_items"] / settings["shard_size"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise SettingsMismatch(f"{settings_path} is damaged ({short_error(exc)}); it cannot be merged: rerun the "
                               "tokenize command into a new --output-dir, or with --overwrite") from None
    return write_index(output_dir, settings, num_shards, completed_shards(output_dir, num_shards))
