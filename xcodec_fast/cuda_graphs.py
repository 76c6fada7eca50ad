"""CUDA-graph replay of ``XcodecModel`` encode / decode for one fixed batch shape.

A graph records every kernel launch of one call once and replays them with a single launch, which
removes the per-op CPU overhead (hundreds of small kernels per call for short clips). It is only
valid for the shapes, dtype, bandwidth, backend and weights it was captured with, so
:class:`CudaGraphCodec` is built for one ``(batch_size, num_samples)`` and rejects anything else.
The model's ops are capturable: the Triton kernels are ``torch.library`` custom ops, the semantic
model is plain torch, and the ops skip their value checks (a device sync) while a graph captures;
this class runs the model's own input checks before each replay instead.

Not covered: padded batches (``padding_mask``; their per-item paths sync on lengths) and weight
changes after capture (``model.to(...)``, ``refresh_derived``): the graph keeps reading the old
buffers, so build a new codec after those.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["CudaGraphCodec", "GraphedFunction"]

# What a model must offer (XcodecModel's public core).
_MODEL_CORE = ("check_length", "code_frames", "check_audio", "check_codes", "running", "encode_latent", "quantize",
               "dequantize", "decode_latent")
WARMUP_CALLS = 3  # Triton compiles and autotunes on the first call; cuBLAS picks its algorithms


def _check_shape(name: str, t, expected: tuple[int, ...]) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but this CUDA graph was built for {expected}; "
            "build another one with model.cuda_graph(...) for other shapes"
        )


class GraphedFunction:
    """One captured function ``out = fn(static_input)``: capture on first call, replay after."""

    def __init__(self, fn, static_input: Tensor):
        self.fn = fn
        self.static_input = static_input
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_output: Tensor | None = None

    def _capture(self) -> None:
        # Warm up on a side stream, as torch.cuda.graphs recommends: lazy initialisation (Triton
        # compilation, cuBLAS workspaces, allocator growth) must not happen inside the capture.
        side = torch.cuda.Stream(device=self.static_input.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_output = self.fn(self.static_input)
        self.graph = graph

    def __call__(self, value: Tensor) -> Tensor:
        self.static_input.copy_(value)
        if self.graph is None:
            # Capture records on the current device's stream: make that the model's device.
            with torch.cuda.device(self.static_input.device):
                self._capture()
        self.graph.replay()
        # The next replay overwrites static_output; hand the caller its own copy.
        return self.static_output.clone()


class CudaGraphCodec:
    """Fixed-shape ``encode`` / ``decode`` for a CUDA model, each captured as a CUDA graph on its
    first call and replayed afterwards.

    ``encode(x)``: x (batch_size, 1, num_samples) float, on any device -> codes
    (batch_size, n_q, num_frames) int64 on the model's device, n_q from ``bandwidth``.
    ``decode(codes)``: codes (batch_size, n_q, num_frames) integer -> audio
    (batch_size, 1, hop_length * num_frames) in the model's dtype.

    Outputs equal ``model.encode(x, bandwidth, return_dict=False)`` and
    ``model.decode(codes, return_dict=False)``. The backend is the model's (or the global one) at
    the time of each graph's capture. ``check_inputs=False`` skips the per-call NaN/inf and code
    range checks (each a device sync); out-of-range codes then read out of bounds.
    """

    def __init__(
        self, model, batch_size: int, num_samples: int, bandwidth: float | None = None, check_inputs: bool = True
    ):
        # Duck-typed on the model's public core, so this module needs no import of the model's.
        if not all(callable(getattr(model, name, None)) for name in _MODEL_CORE):
            raise TypeError(f"model must be an XcodecModel, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise ValueError(f"num_samples must be an int, got {num_samples!r}")
        model.check_length(num_samples)
        self.num_quantizers = model.config.num_quantizers_for_bandwidth(bandwidth)
        if model.device.type != "cuda":
            raise ValueError(
                f"CUDA graphs need a model on a CUDA device, this one is on {model.device}; "
                "move it first (model.to('cuda')) or call model.encode / model.decode directly"
            )
        self.model = model
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.num_frames = model.code_frames(num_samples)
        self.check_inputs = check_inputs
        device = model.device
        audio = torch.zeros(batch_size, 1, num_samples, device=device, dtype=model.dtype)
        self._encode = GraphedFunction(self._encode_body, audio)
        codes = torch.zeros(batch_size, self.num_quantizers, self.num_frames, device=device, dtype=torch.long)
        self._decode = GraphedFunction(self._decode_body, codes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.batch_size, 1, self.num_samples)

    @property
    def codes_shape(self) -> tuple[int, int, int]:
        return (self.batch_size, self.num_quantizers, self.num_frames)

    # The model's unchecked core: its input checks sync, so they run before the copy.
    def _encode_body(self, audio: Tensor) -> Tensor:
        with self.model.running():
            return self.model.quantize(self.model.encode_latent(audio), self.num_quantizers)

    def _decode_body(self, codes: Tensor) -> Tensor:
        with self.model.running():
            return self.model.decode_latent(self.model.dequantize(codes))

    def encode(self, input_values: Tensor) -> Tensor:
        _check_shape("input_values", input_values, self.input_shape)
        if self.check_inputs:
            self.model.check_audio(input_values)
        elif not input_values.is_floating_point():
            raise TypeError(f"input_values must be floating point audio in [-1, 1], got dtype {input_values.dtype}")
        with torch.inference_mode():
            return self._encode(input_values)

    def decode(self, audio_codes: Tensor) -> Tensor:
        _check_shape("audio_codes", audio_codes, self.codes_shape)
        if self.check_inputs:
            self.model.check_codes(audio_codes)
        elif audio_codes.is_floating_point():
            raise TypeError(f"audio_codes must be an integer tensor, got dtype {audio_codes.dtype}")
        with torch.inference_mode():
            return self._decode(audio_codes)

    def __repr__(self) -> str:
        return (
            f"CudaGraphCodec(batch_size={self.batch_size}, num_samples={self.num_samples}, "
            f"num_quantizers={self.num_quantizers}, num_frames={self.num_frames})"
        )
