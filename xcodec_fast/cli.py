"""Command line: ``xcodec-fast demo | encode | decode | info | tokenize | detokenize | bench``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .loading import DEFAULT_MODEL
from .ops.backend import BackendUnavailableError



def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(args, random_fallback: bool = False):
    from .loading import load_model

    return load_model(args.model, args.device, args.dtype, args.backend, random_fallback=random_fallback)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"hub id or local directory (default: {DEFAULT_MODEL}); 'random' / 'random-tiny': random weights")
    p.add_argument("--backend", default=None, choices=["auto", "eager", "triton", "native"], help="kernel backend")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "auto"])


def _frames(seconds: float | None, model, default: int, what: str, minimum: int = 1) -> int:
    if seconds is None:
        return default
    frames = int(round(seconds * model.config.frame_rate))
    if frames < minimum:
        raise ValueError(f"{what} {seconds} is under {minimum} frame(s) of {1 / model.config.frame_rate:.3f} s")
    return frames


def _output_file(path: str) -> Path:
    """``-o`` with its folder made, checked before the work so a long run cannot end in a write error."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc.filename or out.parent}: {exc.strerror}; "
                         "pass -o a path in a writable directory") from None
    if out.is_dir():
        raise ValueError(f"-o {out} is a directory; pass a file path")
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"cannot write {out}: {out.parent} is not writable; pass -o a path in a writable directory")
    return out


def _check_output_dir(path, option: str = "-o", shown=None) -> Path:
    """A folder that can be made and written, checked before the model loads (nothing is created):
    a path under a regular file or on a read-only file system is then one line, not a late error.
    ``shown``: the path the user gave, when ``path`` is its folder."""
    out = Path(path)
    if shown is None and out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file; pass a directory")
    shown = out if shown is None else shown
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"cannot use {option} {shown}: {existing} is a file, not a directory; "
                         f"pass {option} a path in a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot use {option} {shown}: {existing} is not writable; "
                         f"pass {option} a path in a writable directory")
    return out


def _make_output_dir(path, option: str = "-o") -> Path:
    """``option``'s folder made now, before the model loads, or one line saying why it cannot be."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create {option} {out}: {exc.filename or out}: {exc.strerror}; "
                         f"pass {option} a directory you can write") from None
    return out


def _encode_file(model, path: str, bandwidth: float | None, chunk_frames: int, context_frames: int, progress: bool):
    """Codes (n_q, T) of one file; files longer than ``chunk_frames`` go window by window
    (bounded memory), with a progress bar."""
    import torch
    from tqdm import tqdm

    from .audio import load_audio

    audio, _ = load_audio(path, target_sr=model.config.sample_rate)
    x = model.check_audio(torch.from_numpy(audio)[None, None])
    model.check_length(x.shape[-1])
    num_quantizers = model.config.num_quantizers_for_bandwidth(bandwidth)
    total = model.code_frames(x.shape[-1])
    if total <= chunk_frames:
        return model.encode(x, bandwidth=bandwidth).audio_codes[0], len(audio)
    with tqdm(total=total, unit="frame", desc="encode", disable=not progress) as bar, model.running():
        codes = model.encode_windows(x, num_quantizers, chunk_frames, context_frames, on_window=bar.update)
    return codes[0], len(audio)


def cmd_encode(args) -> int:
    import numpy as np

    from .modeling.codec import ENCODE_CHUNK_FRAMES, ENCODE_CONTEXT_FRAMES

    out = _output_file(args.output)
    model, model_id = _load(args)
    chunk = _frames(args.chunk_seconds, model, ENCODE_CHUNK_FRAMES, "--chunk-seconds")
    context = _frames(args.context_seconds, model, ENCODE_CONTEXT_FRAMES, "--context-seconds", minimum=0)
    start = time.perf_counter()
    codes, n_samples = _encode_file(model, args.input, args.bandwidth, chunk, context, not args.quiet)
    elapsed = time.perf_counter() - start
    with open(out, "wb") as fh:  # np.save(path) would append .npy to any other name
        np.save(fh, codes.cpu().numpy().astype(np.int16))
    seconds = n_samples / model.config.sample_rate
    _say(
        f"{args.input}: {seconds:.2f} s -> codes {tuple(codes.shape)} (quantizers x frames) in {elapsed:.2f} s "
        f"[{model_id}] -> {out}"
    )
    return 0


def _read_codes(path: str):
    import numpy as np
    import torch

    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"cannot read codes from {path}: {exc or 'empty file'}") from None
    if not isinstance(codes, np.ndarray):  # an .npz archive
        codes.close()
        raise ValueError(f"{path} is an .npz archive; decode takes one array saved with np.save "
                         "(what 'xcodec-fast encode' writes)")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{path} holds {codes.dtype} values; codes must be integers")
    if codes.ndim == 2:
        codes = codes[None]
    if codes.ndim != 3:
        raise ValueError(f"{path} has shape {codes.shape}; expected (quantizers, frames) or (batch, quantizers, frames)")
    return torch.from_numpy(codes.astype(np.int64))


def _decode_to_wav(model, codes, out: Path, chunk_frames: int, push_frames: int | None, progress: bool) -> float | None:
    """Decode one item's codes (1, n_q, T) into ``out`` as the audio is made (bounded memory).
    ``push_frames``: feed a :class:`DecodeStream` that many frames at a time, as a generator
    would; returns the seconds until the first audio was written (None without streaming)."""
    from tqdm import tqdm

    from .audio import WavWriter

    total = codes.shape[-1]
    first_audio = None
    start = time.perf_counter()
    with WavWriter(out, model.config.sample_rate) as writer, model.running(), \
            tqdm(total=total, unit="frame", desc="decode", disable=not progress) as bar:
        if push_frames is None:
            for window, piece in model.decode_windows(codes, chunk_frames):
                writer.write(piece[0, 0])
                bar.update(window.end - window.start)
            return None
        stream = model.decode_stream()
        for begin in range(0, total, push_frames):
            piece = stream.push(codes[..., begin : begin + push_frames])
            if piece.shape[-1] and first_audio is None:
                first_audio = time.perf_counter() - start
            writer.write(piece[0, 0])
            bar.update(piece.shape[-1] // model.config.hop_length)
        writer.write(stream.flush()[0, 0])
        bar.update(total - bar.n)
    return first_audio if first_audio is not None else time.perf_counter() - start


def cmd_decode(args) -> int:
    from .audio import write_wav
    from .modeling.codec import DECODE_CHUNK_FRAMES

    model, model_id = _load(args)
    codes = model.check_codes(_read_codes(args.input))
    chunk = _frames(args.chunk_seconds, model, DECODE_CHUNK_FRAMES, "--chunk-seconds")
    if args.push_frames is not None and args.push_frames < 1:
        raise ValueError(f"--push-frames must be at least 1, got {args.push_frames}")
    out = Path(args.output)
    start = time.perf_counter()
    first_audio = None
    if codes.shape[0] == 1:
        push = (args.push_frames or 1) if args.stream else None
        first_audio = _decode_to_wav(model, codes, out, chunk, push, not args.quiet)
        written = [out]
    else:
        if args.stream:
            raise ValueError(f"--stream writes one file; {args.input} holds a batch of {codes.shape[0]}")
        audio = model.decode(codes, chunk_frames=chunk).audio_values
        written = []
        for i in range(audio.shape[0]):
            target = out.with_name(f"{out.stem}_{i}{out.suffix}")
            write_wav(target, audio[i, 0].float().cpu().numpy(), model.config.sample_rate)
            written.append(target)
    elapsed = time.perf_counter() - start
    seconds = codes.shape[-1] * model.config.hop_length / model.config.sample_rate
    latency = "" if first_audio is None else f", first audio after {first_audio:.3f} s"
    _say(f"{args.input}: codes {tuple(codes.shape)} -> {seconds:.2f} s audio in {elapsed:.2f} s{latency} "
         f"[{model_id}] -> {', '.join(map(str, written))}")
    return 0


def cmd_demo(args) -> int:
    """The main job offline or online: encode the bundled clip (or --input) and decode it back."""
    import numpy as np
    import torch

    from .audio import demo_clip, write_wav

    out = _make_output_dir(args.output_dir)
    model, model_id = _load(args, random_fallback=True)
    if args.input:
        from .audio import load_audio

        audio, _ = load_audio(args.input, target_sr=model.config.sample_rate)
        source = args.input
    else:
        audio, _ = demo_clip()
        source = "the bundled demo clip"
    param = next(model.parameters())
    x = torch.from_numpy(audio).to(device=param.device, dtype=param.dtype)[None, None]
    start = time.perf_counter()
    codes = model.encode(x, bandwidth=args.bandwidth).audio_codes
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    recon = model.decode(codes).audio_values[..., : x.shape[-1]]
    decode_s = time.perf_counter() - start
    np.save(out / "codes.npy", codes[0].cpu().numpy().astype(np.int16))
    write_wav(out / "reconstruction.wav", recon[0, 0].float().cpu().numpy(), model.config.sample_rate)
    seconds = x.shape[-1] / model.config.sample_rate
    err = recon.float() - x.float()
    snr = 10 * torch.log10(x.float().pow(2).sum() / err.pow(2).sum().clamp_min(1e-20)).item()
    from .ops import describe

    print(f"model: {model_id}  backend: {model.backend or 'auto'} ({describe(param.device)['auto']} chosen by auto)")
    print(f"input: {source}, {seconds:.2f} s at {model.config.sample_rate} Hz")
    print(f"codes: {tuple(codes.shape[1:])} (quantizers x frames) -> {out / 'codes.npy'}")
    print(f"encode {encode_s:.2f} s ({seconds / encode_s:.1f}x real time), decode {decode_s:.2f} s "
          f"({seconds / decode_s:.1f}x real time)")
    print(f"reconstruction: {out / 'reconstruction.wav'}  (SNR vs input {snr:.1f} dB"
          + (", meaningless for random weights)" if model_id == "random-weights" else ")"))
    return 0


def cmd_export_onnx(args) -> int:
    import torch

    from .export import OPSET, ExportError, OnnxCodec, export_onnx
    from .loading import load_model

    if args.opset < OPSET:
        # torch's exporter writes opset 18 graphs and converts them down, which fails for this model
        # (with a logged traceback) while the export still says it used the opset asked for.
        raise ValueError(f"--opset {args.opset} is below {OPSET}, the lowest opset torch's ONNX exporter writes; "
                         f"pass --opset {OPSET} or higher")
    _check_output_dir(args.output_dir)
    model, model_id = load_model(args.model, "cpu", "float32", "eager")
    num_quantizers = None if args.bandwidth is None else model.config.num_quantizers_for_bandwidth(args.bandwidth)
    _say(f"exporting {model_id} to {args.output_dir} (opset {args.opset}; tracing takes a minute)")
    try:
        meta = export_onnx(model, args.output_dir, num_quantizers=num_quantizers, opset=args.opset,
                           overwrite=args.overwrite, log=_say)
    except ExportError as exc:
        raise ValueError(str(exc)) from None
    if args.check:
        # one clip through both: the figures a user needs to trust the graphs
        from .audio import make_demo_signal

        hop = meta["hop_length"]
        clip = torch.from_numpy(make_demo_signal(2.0))[None, None]
        clip = clip[..., : clip.shape[-1] // hop * hop]
        runner = OnnxCodec(args.output_dir)
        with torch.inference_mode():
            codes = model.encode(clip, return_dict=False)[:, : meta["num_quantizers"]]
            audio = model.decode(codes, return_dict=False)
        equal = float((runner.encode(clip) == codes).double().mean())
        err = float((runner.decode(codes) - audio).abs().max() / audio.abs().max())
        _say(f"check: onnxruntime codes {100 * equal:.2f}% equal to eager, audio max error {err:.1e} of peak")
    return 0


def cmd_bench(args) -> int:
    """``benchmark.run`` after the checks of what it would only reach late (threads at the start,
    output paths after minutes of timing)."""
    from . import benchmark

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    if args.output is not None:
        if args.output.is_dir():
            raise ValueError(f"--output {args.output} is a directory; pass a .json file path")
        _check_output_dir(args.output.parent, "--output", shown=args.output)
    else:
        _check_output_dir(args.results_dir, "--results-dir")
    if not args.no_plots:
        _check_output_dir(args.plots_dir, "--plots-dir")
    return benchmark.run(args)


def cmd_info(args) -> int:
    import torch

    from . import __version__
    from .ops import describe

    print(f"xcodec_fast {__version__}, torch {torch.__version__}")
    from . import cpu_malloc

    choice = os.environ.get(cpu_malloc.ENV, "reuse")
    print(f"CPU malloc for demo/encode/decode/tokenize: {choice} ({cpu_malloc.ENV}; see xcodec_fast/cpu_malloc.py)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        report = describe(device)
        print(f"backends on {device} (auto -> {report.pop('auto')}, selected: {report.pop('selected')}):")
        for name, line in report.items():
            print(f"  {name:7s} {line}")
    from .ops import availability

    if availability("native", "cpu")[0]:
        from .ops import native

        for line in native.tuning.describe(native.source_digest()):
            print(line)
    if args.model is None:
        return 0
    from .loading import load_model

    model, model_id = load_model(args.model)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {model_id}")
    print(f"  semantic model: {cfg.semantic_model_config.model_type}, hidden {cfg.semantic_hidden_size}, "
          f"{cfg.semantic_model_config.num_hidden_layers} layers")
    print(f"  acoustic: DAC encoder {cfg.acoustic_model_config.encoder_hidden_size} -> "
          f"{cfg.acoustic_model_config.hidden_size}, decoder {cfg.acoustic_model_config.decoder_hidden_size}, "
          f"ratios {cfg.acoustic_model_config.downsampling_ratios}")
    print(f"  sample rate {cfg.sample_rate} Hz, hop {cfg.hop_length}, frame rate {cfg.frame_rate} Hz")
    print(f"  quantizers {cfg.num_quantizers} x {cfg.codebook_size} codewords of dim {cfg.codebook_dim}")
    bws = ", ".join(f"{bw} kbps -> {cfg.num_quantizers_for_bandwidth(bw)}" for bw in cfg.target_bandwidths)
    print(f"  bandwidths: {bws}")
    print(f"  parameters: {n_params / 1e6:.1f} M, dtype {next(model.parameters()).dtype}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xcodec-fast", description="X-Codec neural audio codec, exact and fast.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="encode + decode the bundled clip (works offline)")
    _add_model_args(p)
    p.add_argument("--input", default=None, help="audio file instead of the bundled clip")
    p.add_argument("--bandwidth", type=float, default=None)
    p.add_argument("-o", "--output-dir", default="xcodec_demo")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("encode", help="audio file -> codes .npy (quantizers x frames, int16)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--bandwidth", type=float, default=None, help="kbps: 0.5, 1, 1.5, 2 or 4 (default: highest)")
    p.add_argument("--chunk-seconds", type=float, default=None,
                   help="longer files are encoded in windows of this length, in bounded memory (default 60)")
    p.add_argument("--context-seconds", type=float, default=None,
                   help="semantic attention context each side of a window (default 5)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="codes .npy -> wav (written as it is decoded)")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--chunk-seconds", type=float, default=None,
                   help="decode window; the audio equals a whole decode (default 10)")
    p.add_argument("--stream", action="store_true",
                   help="feed the codes to a streaming decoder --push-frames at a time, as a generator would")
    p.add_argument("--push-frames", type=int, default=None, help="frames per push with --stream (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_model_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("export-onnx", help="encoder.onnx + decoder.onnx from the eager reference (dynamic batch "
                       "and length)")
    p.add_argument("-o", "--output-dir", required=True)
    p.add_argument("--model", default=None, help=f"hub id or local directory (default: {DEFAULT_MODEL}); "
                   "'random' / 'random-tiny': random weights")
    p.add_argument("--bandwidth", type=float, default=None, help="kbps: the quantizers the graphs use (default: all)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --output-dir")
    p.add_argument("--check", action="store_true", help="run a clip through ONNX Runtime and eager and compare")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("info", help="backends available here, and a model's configuration")
    p.add_argument("model", nargs="?", default=None)
    p.set_defaults(func=cmd_info)

    try:
        from . import tokenize as tokenize_mod

        p = sub.add_parser("tokenize", help="encode a dataset into Parquet shards (resumable, sharded)")
        tokenize_mod.add_arguments(p)
        p.set_defaults(func=tokenize_mod.run)
        if hasattr(tokenize_mod, "add_detokenize_arguments"):
            p = sub.add_parser("detokenize", help="turn tokenized shards back into audio files")
            tokenize_mod.add_detokenize_arguments(p)
            p.set_defaults(func=tokenize_mod.run_detokenize)
    except ImportError:
        pass
    try:
        from . import benchmark

        p = sub.add_parser("bench", help="kernel and end-to-end benchmarks")
        benchmark.add_arguments(p)
        p.set_defaults(func=cmd_bench)
    except ImportError:
        pass
    return parser


# Commands that run the model keep freed CPU memory mapped for reuse (xcodec_fast.cpu_malloc;
# XCODEC_FAST_CPU_MALLOC=default opts out). tokenize/detokenize do it in their own entry points
# (also reached as python -m xcodec_fast.tokenize); bench chooses its own modes (--cpu-malloc).
MODEL_COMMANDS = ("demo", "encode", "decode")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in MODEL_COMMANDS:
            from . import cpu_malloc

            cpu_malloc.apply_from_environment()
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, OSError, BackendUnavailableError) as exc:
        _say(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
