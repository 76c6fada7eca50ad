"""ONNX export of the eager reference, and ONNX Runtime as a peer runner.

``export_onnx(model, directory)`` writes ``encoder.onnx`` (audio (B, 1, N) float32 -> codes
(B, n_q, N / hop_length) int64) and ``decoder.onnx`` (codes (B, n_q, T) int64 -> audio (B, 1,
hop_length * T) float32), with dynamic batch and length, plus ``xcodec_onnx.json`` saying what they
accept. The graphs come from ``torch.export`` of the eager ops (no native or Triton kernels inside),
translated by ``torch.onnx`` (dynamo exporter, opset :data:`OPSET`).

The encoder graph takes lengths that are a multiple of ``hop_length`` (what the feature extractor
pads to): for those, transformers' length-dependent choice of padding the acoustic encoder's input
is the same at every length, so one graph holds for all of them; export checks that on the config
for every length up to ``max_frames``. Padded batches (``padding_mask``) are not part of the graph:
run items of different lengths one per call or batch equal lengths.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn

OPSET = 18
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
METADATA_FILE = "xcodec_onnx.json"
DEFAULT_MAX_FRAMES = 1 << 16  # about 22 minutes at 50 Hz: the longest input the padding check covers


class ExportError(ValueError):
    """A model or setting that cannot be exported, or an export directory that cannot be used."""


class _EncoderGraph(nn.Module):
    def __init__(self, model, num_quantizers: int):
        super().__init__()
        self.model = model
        self.num_quantizers = num_quantizers

    def forward(self, audio: Tensor) -> Tensor:
        latent = self.model.encode_latent(audio, acoustic_padding=False)
        return self.model.quantize(latent, self.num_quantizers)


class _DecoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, codes: Tensor) -> Tensor:
        return self.model.decode_latent(self.model.dequantize(codes))


def _check_padding_is_length_independent(model, max_frames: int) -> int:
    """The first frame count the encoder graph accepts; raises if, for some multiple of hop_length up
    to ``max_frames`` frames, transformers would pad the acoustic input (the graph never does)."""
    hop = model.config.hop_length
    first = max(1, -(-model.min_input_length() // hop))
    for frames in range(first, max_frames + 1):
        if model.acoustic_needs_padding(frames * hop) or model.code_frames(frames * hop) != frames:
            raise ExportError(
                f"this config pads the acoustic encoder's input at {frames * hop} samples but not at others: "
                "one ONNX encoder graph cannot hold for every length"
            )
    return first


def export_onnx(model, directory, num_quantizers: int | None = None, opset: int = OPSET,
                max_frames: int = DEFAULT_MAX_FRAMES, overwrite: bool = False, log=None) -> dict:
    """Write the encoder and decoder graphs of ``model`` (float32, CPU) into ``directory``;
    returns the metadata also written to ``xcodec_onnx.json``."""
    try:
        import onnx  # noqa: F401  (torch.onnx needs it; say so before a long trace)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'xcodec-fast[onnx]'") from exc
    from . import __version__
    from .loading import weights_fingerprint
    from .ops import use_backend

    if model.dtype != torch.float32 or model.device.type != "cpu":
        raise ExportError(f"ONNX export takes a float32 CPU model, got {model.dtype} on {model.device}")
    num_quantizers = model.num_quantizers if num_quantizers is None else int(num_quantizers)
    if not 1 <= num_quantizers <= model.num_quantizers:
        raise ExportError(f"num_quantizers must lie in [1, {model.num_quantizers}], got {num_quantizers}")
    out = Path(directory)
    targets = [out / ENCODER_FILE, out / DECODER_FILE, out / METADATA_FILE]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"{', '.join(existing)} already exist; pass overwrite=True (--overwrite) to replace them")
    out.mkdir(parents=True, exist_ok=True)
    first_frames = _check_padding_is_length_independent(model, max_frames)
    hop = model.config.hop_length

    batch = torch.export.Dim("batch", min=1, max=4096)
    frames = torch.export.Dim("frames", min=first_frames, max=max_frames)
    example_frames = max(first_frames, 3)
    audio = torch.randn(2, 1, hop * example_frames, generator=torch.Generator().manual_seed(0)) * 0.1
    codes = torch.randint(0, model.config.codebook_size, (2, num_quantizers, example_frames),
                          generator=torch.Generator().manual_seed(0))
    timings = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), use_backend("eager"):
            for name, graph, example, dims, path in (
                ("encoder", _EncoderGraph(model, num_quantizers), audio, {0: batch, 2: hop * frames}, targets[0]),
                ("decoder", _DecoderGraph(model), codes, {0: batch, 2: frames}, targets[1]),
            ):
                started = time.perf_counter()
                program = torch.export.export(graph, (example,), dynamic_shapes=[dims])
                input_name = "audio" if name == "encoder" else "codes"
                output_name = "codes" if name == "encoder" else "audio"
                torch.onnx.export(program, (example,), str(path), dynamo=True, opset_version=opset,
                                  input_names=[input_name], output_names=[output_name], verbose=False)
                timings[name] = round(time.perf_counter() - started, 2)
                if log is not None:
                    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, {timings[name]:.1f} s)")
    finally:
        model.train(was_training)
    metadata = {
        "format": "xcodec-onnx",
        "xcodec_fast_version": __version__,
        "torch_version": torch.__version__,
        "opset": opset,
        "sample_rate": model.config.sample_rate,
        "hop_length": hop,
        "num_quantizers": num_quantizers,
        "codebook_size": model.config.codebook_size,
        "min_frames": first_frames,
        "max_frames_checked": max_frames,
        "weights_fingerprint": weights_fingerprint(model),
        "encoder": {"file": ENCODER_FILE, "input": "audio (batch, 1, hop_length * frames) float32",
                    "output": "codes (batch, num_quantizers, frames) int64"},
        "decoder": {"file": DECODER_FILE, "input": "codes (batch, num_quantizers, frames) int64",
                    "output": "audio (batch, 1, hop_length * frames) float32"},
        "export_seconds": timings,
    }
    targets[2].write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


class OnnxCodec:
    """The exported graphs run in ONNX Runtime, with the same input checks as the model's."""

    def __init__(self, directory, threads: int | None = None, providers=None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError("running the ONNX graphs needs onnxruntime: pip install 'xcodec-fast[onnx]'") from exc
        folder = Path(directory)
        meta_path = folder / METADATA_FILE
        try:
            self.metadata = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise ExportError(f"{folder} has no {METADATA_FILE}: not an xcodec_fast ONNX export") from None
        except json.JSONDecodeError as exc:
            raise ExportError(f"{meta_path} is not valid JSON ({exc})") from None
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        providers = providers or ["CPUExecutionProvider"]
        self.sessions = {}
        for part in ("encoder", "decoder"):
            path = folder / self.metadata[part]["file"]
            if not path.is_file():
                raise ExportError(f"{path} is missing")
            self.sessions[part] = ort.InferenceSession(str(path), options, providers=providers)
        self.hop_length = int(self.metadata["hop_length"])
        self.num_quantizers = int(self.metadata["num_quantizers"])

    def encode(self, audio) -> Tensor:
        """Audio (B, 1, N) (tensor or array), N a multiple of hop_length -> codes (B, n_q, N / hop)."""
        array = torch.as_tensor(audio).detach().cpu()
        if array.dim() != 3 or array.shape[1] != 1:
            raise ValueError(f"audio must have shape (batch, 1, samples), got {tuple(array.shape)}")
        if not array.is_floating_point():
            raise TypeError(f"audio must be floating point, got dtype {array.dtype}")
        samples = array.shape[-1]
        if samples % self.hop_length or samples // self.hop_length < self.metadata["min_frames"]:
            raise ValueError(
                f"the ONNX encoder takes a multiple of {self.hop_length} samples, at least "
                f"{self.metadata['min_frames'] * self.hop_length}; got {samples} (pad with the feature extractor)"
            )
        if not torch.isfinite(array).all():
            raise ValueError("audio contains NaN or Inf")
        result = self.sessions["encoder"].run(None, {"audio": array.float().contiguous().numpy()})[0]
        return torch.from_numpy(result)

    def decode(self, codes) -> Tensor:
        """Codes (B, n_q, T) -> audio (B, 1, hop_length * T) float32."""
        codes = torch.as_tensor(codes).detach().cpu()
        if codes.dim() != 3 or codes.shape[1] != self.num_quantizers or codes.shape[-1] < 1:
            raise ValueError(f"codes must have shape (batch, {self.num_quantizers}, frames >= 1), "
                             f"got {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.dtype == torch.bool:
            raise TypeError(f"codes must be integers, got dtype {codes.dtype}")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.metadata["codebook_size"]:
            raise ValueError(f"codes must lie in [0, {self.metadata['codebook_size']}), got [{low}, {high}]")
        result = self.sessions["decoder"].run(None, {"codes": codes.long().contiguous().numpy()})[0]
        return torch.from_numpy(result)
