"""Large-scale tokenization: audio datasets -> Parquet shards of X-Codec codes, and back.

Library::

    from xcodec_fast.tokenize import tokenize, detokenize
    tokenize(["data/wavs"], "out/tokens", model="hf-audio/xcodec-hubert-librispeech")

Command line (also ``xcodec-fast tokenize``)::

    python -m xcodec_fast.tokenize data/wavs -o out/tokens [--model ID] [--batch-seconds 20]
    torchrun --nnodes N --nproc-per-node G -m xcodec_fast.tokenize data/wavs -o out/tokens
    python -m xcodec_fast.tokenize merge out/tokens
    python -m xcodec_fast.tokenize detokenize out/tokens -o out/audio [--ids a.wav b.wav]

Rerunning a command resumes it (on the same device, dtype, backend, --threads and torch, or with
``--force-resume``); ``--retry-failed`` also encodes the items in errors.jsonl again. Layout and shard schema: ``writer``; inputs: ``sources``;
long files: ``batching``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import cpu_malloc
from ..checkpoints import CheckpointError
from ..errors import short_error
from ..loading import DEFAULT_MODEL, load_model, weights_fingerprint
from ..ops.backend import BackendUnavailableError
from .engine import BatchEncoder, ModelFailing, OutputInUse, RuntimeMismatch, SettingsMismatch, TokenizeOptions, merge, tokenize
from .sources import InputError, Item, list_items
from .writer import atomic_write_json, read_codes, unique_relpaths

__all__ = [
    "tokenize",
    "TokenizeOptions",
    "detokenize",
    "merge",
    "load_model",
    "list_items",
    "read_codes",
    "Item",
    "BatchEncoder",
    "InputError",
    "SettingsMismatch",
    "RuntimeMismatch",
    "build_parser",
    "add_arguments",
    "add_detokenize_arguments",
    "run",
    "run_detokenize",
    "main",
]


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help=f"hub id or local directory (default {DEFAULT_MODEL}); 'random' / 'random-tiny': random weights")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK when available)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--backend", default=None, choices=["auto", "eager", "triton", "native"])


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``tokenize`` arguments, for ``xcodec-fast tokenize`` and ``python -m xcodec_fast.tokenize``."""
    p.add_argument("inputs", nargs="+", help="audio files, directories, manifests (.txt/.jsonl), tables (.parquet/.arrow)")
    p.add_argument("-o", "--output-dir", required=True, help="where shards, index.json and errors.jsonl go")
    _add_model_arguments(p)
    p.add_argument("--bandwidth", type=float, default=None, help="kbps (0.5, 1, 1.5, 2, 4); default: the highest")
    p.add_argument("--batch-seconds", type=float, default=None,
                   help="audio per model call, padding included (default: 120 on a GPU, 20 on a CPU); a longer item is encoded alone")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="longer files are encoded alone in windows of this length, with attention context (default 60)")
    p.add_argument("--context-seconds", type=float, default=None,
                   help="semantic attention context each side of a long file's window (default 5)")
    p.add_argument("--max-file-seconds", type=float, default=4 * 3600.0,
                   help="longer files are reported in errors.jsonl instead of encoded (default 14400)")
    p.add_argument("--max-batch-items", type=int, default=None, help="cap on items per model call")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="GPU only: batch by length buckets of fixed shapes and replay one CUDA graph per shape "
                   "(up to 19%% more padding, no per-kernel launch cost)")
    p.add_argument("--sort-buffer", type=int, default=8,
                   help="batches' worth of audio gathered before sorting by length into batches (default 8)")
    p.add_argument("--shard-size", type=int, default=1000, help="items per Parquet shard (default 1000)")
    p.add_argument("--num-workers", type=int, default=None, help="decode worker processes (0: decode in-process)")
    p.add_argument("--audio-column", default="audio", help="audio column of Parquet/Arrow inputs (default 'audio')")
    p.add_argument("--keep-json", action="store_true", help="keep WebDataset samples' .json sidecars in a 'json' column")
    p.add_argument("--id-column", default=None, help="id column of Parquet/Arrow inputs (default: '<file>#<row>')")
    p.add_argument("--npy", action="store_true", help="also write npy/<id>.npy (quantizers x frames, int16) per item")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --output-dir instead of resuming")
    p.add_argument("--retry-failed", action="store_true",
                   help="on resume, encode the items in errors.jsonl again (e.g. fixed files); their shards are rewritten")
    p.add_argument("--force-resume", action="store_true",
                   help="resume although device, dtype, backend, --threads, --cuda-graphs or torch differ from the recorded run "
                   "(shards written before and after may differ at float near-ties), or the weights do")
    p.add_argument("--json-summary", default=None, metavar="PATH",
                   help="also write this run's summary (throughput, model busy vs wall, runtime) to PATH; "
                   "ranks other than 0 write PATH with -rank-<r> before the suffix")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the model (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def add_detokenize_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("tokens", nargs="+", help="a tokenize output directory, or shard .parquet files")
    p.add_argument("-o", "--output-dir", required=True, help="where the .wav files go (<id>, plus .wav unless it ends so)")
    _add_model_arguments(p)
    p.add_argument("--ids", nargs="*", default=None, help="only these item ids")
    p.add_argument("--limit", type=int, default=None, help="at most this many items")
    p.add_argument("--overwrite", action="store_true", help="replace files that already exist in the output directory")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="decode shards that were encoded with other weights than the model's")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xcodec_fast.tokenize",
        description="Tokenize audio datasets into Parquet shards of X-Codec codes (resumable, torchrun-shardable). "
        "Subcommands 'merge DIR' and 'detokenize ...' are also accepted as the first argument.",
    )
    return add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        cpu_malloc.apply_from_environment()  # the command line keeps freed memory mapped (cpu_malloc.py)
        summary = tokenize(
            args.inputs,
            args.output_dir,
            model=args.model,
            bandwidth=args.bandwidth,
            batch_seconds=args.batch_seconds,
            max_seconds=args.max_seconds,
            context_seconds=args.context_seconds,
            keep_json=args.keep_json,
            max_file_seconds=args.max_file_seconds,
            shard_size=args.shard_size,
            num_workers=args.num_workers,
            npy=args.npy,
            audio_column=args.audio_column,
            id_column=args.id_column,
            device=args.device,
            dtype=args.dtype,
            backend=args.backend,
            max_batch_items=args.max_batch_items,
            cuda_graphs=args.cuda_graphs,
            sort_buffer=args.sort_buffer,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            threads=args.threads,
            retry_failed=args.retry_failed,
            force_resume=args.force_resume,
        )
    except (InputError, SettingsMismatch, ValueError, OSError, CheckpointError, OutputInUse, BackendUnavailableError,
            ModelFailing) as exc:
        # OSError: a model that cannot be had (not cached while offline, no such repo) among others.
        # Other RuntimeErrors are internal errors and keep their traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json_summary:
        path = Path(args.json_summary)
        if summary["rank"]:
            path = path.with_name(f"{path.stem}-rank-{summary['rank']:05d}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, summary)
    if summary.get("index"):
        index = json.loads(Path(summary["index"]).read_text())
        print(f"done: {index['num_ok']} items encoded, {index['num_failed']} failed (see "
              f"{Path(args.output_dir) / index['errors_file']}), {index['audio_hours']:.3f} h audio in "
              f"{index['num_shards']} shards -> {summary['index']}", file=sys.stderr)
    return 0


def detokenize(tokens, output_dir, model=None, ids=None, limit=None, device=None, dtype=None, backend=None,
               overwrite: bool = False, allow_other_weights: bool = False) -> list[Path]:
    """Decode tokenized items back to ``output_dir/<id>.wav``, exactly ``num_samples`` long (the
    decoder's last frame may stop short of it: zero-padded). Each item's codes are decoded as one
    stream (in exact windows: ``XcodecModel.decode``'s chunking). Ids that would share a file name get distinct names
    (see ``writer.unique_relpaths``); an id found twice is written once. Existing files are never
    replaced unless ``overwrite`` (checked for every target before anything is decoded: the output
    directory may be the source audio's). Shards record the weights they were encoded with
    (``weights_sha256``); decoding them with other weights is refused unless ``allow_other_weights``.
    An id of ``ids`` found in no shard is an error (a misspelt id would write nothing).
    Returns the files written."""
    import pyarrow.parquet as pq
    import torch

    from ..audio import write_wav
    from .writer import shard_metadata

    if limit is not None and limit < 0:
        raise ValueError(f"--limit must be 0 or more, got {limit}")
    tokens = [Path(t) for t in ([tokens] if isinstance(tokens, (str, Path)) else tokens)]
    shards = []
    for t in tokens:
        if t.is_dir():
            index = t / "index.json"
            if index.exists():
                try:
                    shards += [t / s["file"] for s in json.loads(index.read_text(encoding="utf-8"))["shards"]]
                except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
                    raise InputError(f"{index} is damaged ({short_error(exc)}); rewrite it with: python -m "
                                     f"xcodec_fast.tokenize merge {t}, or pass the shard .parquet files") from None
            else:
                shards += sorted((t / "shards").glob("shard-*.parquet")) or sorted(t.glob("*.parquet"))
        elif t.exists():
            shards.append(t)
        else:
            raise FileNotFoundError(f"{t} does not exist")
    if not shards:
        raise FileNotFoundError(f"no token shards found in {', '.join(map(str, tokens))}")
    shards = list(dict.fromkeys(s.resolve() for s in shards))  # a directory and one of its shards: read once
    # Names from every id in the shards, not only the wanted ones: a subset gets the same names.
    all_ids = [i for shard_ids in _shard_ids(shards) for i in shard_ids]
    # "a/b.wav" -> a/b.wav; other ids get ".wav" appended ("a/b.flac" -> a/b.flac.wav).
    names = unique_relpaths(all_ids, ".wav", keep_own_suffix=True)
    wanted = None if ids is None else set(ids)
    unknown = [] if ids is None else [i for i in dict.fromkeys(ids) if i not in names]
    if unknown:  # a misspelt id would otherwise write nothing, silently
        raise InputError(f"--ids: {len(unknown)} of {len(set(ids))} ids are in none of the shards (e.g. {unknown[0]!r}); "
                         "ids are the shards' 'id' column (the path relative to the input directory, or the manifest's id)")
    out_dir, written, planned = Path(output_dir), [], {}
    for shard, shard_ids in zip(shards, _shard_ids(shards)):
        for ident in shard_ids:
            if (wanted is None or ident in wanted) and ident not in planned and (limit is None or len(planned) < limit):
                planned[ident] = shard
    existing = [out_dir / names[i] for i in planned if (out_dir / names[i]).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} of the {len(planned)} files to write do); "
                              "choose another output directory or pass --overwrite")
    model, model_id = load_model(model, device=device, dtype=dtype, backend=backend)
    fingerprint = weights_fingerprint(model)
    for shard in shards:
        recorded = shard_metadata(shard).get("weights_sha256")
        if recorded is not None and recorded != fingerprint and not allow_other_weights:
            raise ValueError(f"{shard} was encoded with other weights than {model_id}'s (weights_sha256 "
                             f"{recorded[:12]}... vs {fingerprint[:12]}...): its codes mean nothing to this model; pass "
                             "the model that encoded it, or --allow-other-weights")
    try:  # now, not at the first write: after the decoding of an item
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --output-dir {out_dir}: {exc.filename or out_dir}: {exc.strerror}; "
                         "pass a directory you can write") from None
    for shard in shards:
        meta = shard_metadata(shard)
        table = pq.read_table(shard)
        for row, codes in zip(table.select(["id", "num_samples"]).to_pylist(), read_codes(table)):
            if planned.get(row["id"]) != shard:
                continue
            planned.pop(row["id"])
            if codes.shape[0] > model.num_quantizers:
                raise ValueError(f"{shard}: item {row['id']} has {codes.shape[0]} quantizers; the model has {model.num_quantizers}")
            stream = torch.from_numpy(codes.astype("int64"))[None].to(model.device)
            audio = model.decode(stream).audio_values[0, 0].float().cpu()[: row["num_samples"]]
            audio = torch.nn.functional.pad(audio, (0, row["num_samples"] - len(audio)))
            target = out_dir / names[row["id"]]
            write_wav(target, audio.numpy(), meta["sample_rate"])
            written.append(target)
    return written


def _shard_ids(shards):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for shard in shards:
        try:
            yield pq.read_table(shard, columns=["id"]).column("id").to_pylist()
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise InputError(f"{shard} is not a token shard ({short_error(exc, with_type=False)}); pass a tokenize "
                             "output directory or its shards/*.parquet files") from None


def run_detokenize(args: argparse.Namespace) -> int:
    try:
        cpu_malloc.apply_from_environment()
        written = detokenize(args.tokens, args.output_dir, model=args.model, ids=args.ids, limit=args.limit,
                             device=args.device, dtype=args.dtype, backend=args.backend, overwrite=args.overwrite,
                             allow_other_weights=args.allow_other_weights)
    except (InputError, ValueError, OSError, CheckpointError, BackendUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files under {args.output_dir}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "merge":
        p = argparse.ArgumentParser(prog="python -m xcodec_fast.tokenize merge",
                                    description="write index.json + errors.jsonl of a finished tokenize output")
        p.add_argument("output_dir")
        args = p.parse_args(argv[1:])
        try:
            index = merge(args.output_dir)
        except (FileNotFoundError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"index: {index['num_shards']} shards, {index['num_ok']} ok, {index['num_failed']} failed", file=sys.stderr)
        return 0
    if argv and argv[0] == "detokenize":
        p = add_detokenize_arguments(argparse.ArgumentParser(prog="python -m xcodec_fast.tokenize detokenize"))
        return run_detokenize(p.parse_args(argv[1:]))
    if argv and argv[0] == "tokenize":
        argv = argv[1:]
    return run(build_parser().parse_args(argv))
