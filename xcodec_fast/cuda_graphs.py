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

__all__ = ["CudaGraphCodec", "FixedShapeEncoder", "GraphedFunction"]

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
    """One captured function ``out = fn(*static_inputs)``: capture on first call, replay after.
    ``out`` is a tensor or a tuple of tensors; each call returns the caller's own copies. ``pool``
    (a ``torch.cuda.graph_pool_handle()``) lets several graphs share memory. PyTorch documents that
    as safe for graphs replayed in capture order; these replay in any order, which is safe only as
    used here: one stream, static inputs outside the pool, and every output copied before another
    graph of the pool replays (a later graph's output or scratch may lie in an earlier one's
    scratch, so ``static_output`` is only valid until another graph of the pool replays)."""

    def __init__(self, fn, *static_inputs: Tensor, pool=None):
        if not static_inputs:
            raise ValueError("GraphedFunction needs at least one static input")
        self.fn = fn
        self.static_inputs = static_inputs
        self.pool = pool
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_output = None

    @property
    def static_input(self) -> Tensor:
        return self.static_inputs[0]

    def _capture(self) -> None:
        # Warm up on a side stream, as torch.cuda.graphs recommends: lazy initialisation (Triton
        # compilation, cuBLAS workspaces, allocator growth) must not happen inside the capture.
        side = torch.cuda.Stream(device=self.static_input.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            self.static_output = self.fn(*self.static_inputs)
        self.graph = graph

    def __call__(self, *values: Tensor):
        if len(values) != len(self.static_inputs):
            raise TypeError(f"this graph takes {len(self.static_inputs)} inputs, got {len(values)}")
        for static, value in zip(self.static_inputs, values):
            static.copy_(value)
        if self.graph is None:
            # Capture records on the current device's stream: make that the model's device.
            with torch.cuda.device(self.static_input.device):
                self._capture()
        self.graph.replay()
        # The next replay overwrites static_output; hand the caller its own copy.
        if isinstance(self.static_output, tuple):
            return tuple(t.clone() for t in self.static_output)
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


class FixedShapeEncoder:
    """Padded-batch encode at fixed batch shapes, for corpora bucketed by length.

    ``encode(audio, lengths, batch_size)``: audio (b, 1, N) right-padded, host ``lengths`` (b,)
    valid samples per item -> (codes (b, n_q, code_frames(N)) int64 zero past each item's frames,
    code_lengths (b,)), both on the model's device. The batch is filled to ``batch_size`` items with
    silent full-length ones (dropped from the output), so every call of one (batch_size, N) has one
    shape. It runs ``model.encode_fixed_shape``: every shape follows from the batch shape, and no
    value comes to the host after the entry checks. With ``graphs=True`` (CUDA models) each shape
    is captured as a CUDA graph on its first call and replayed after; the graphs share one memory
    pool (they replay one at a time). Graph replay runs the same kernels on the same shapes, so its
    codes equal ``graphs=False``'s for the same batch. Not covered: weight changes after a capture
    (``model.to(...)``, ``refresh_derived``): build a new encoder after those.
    """

    def __init__(self, model, bandwidth: float | None = None, graphs: bool = False, check_inputs: bool = True):
        if not all(callable(getattr(model, name, None)) for name in (*_MODEL_CORE, "encode_fixed_shape",
                                                                      "fixed_shape_lengths")):
            raise TypeError(f"model must be an XcodecModel, got {type(model).__name__}")
        if graphs and model.device.type != "cuda":
            raise ValueError(
                f"CUDA graphs need a model on a CUDA device, this one is on {model.device}; "
                "move it first (model.to('cuda')) or build the encoder with graphs=False"
            )
        self.model = model
        self.num_quantizers = model.config.num_quantizers_for_bandwidth(bandwidth)
        self.use_graphs = bool(graphs)
        self.check_inputs = check_inputs
        self.graphs: dict[tuple[int, int], GraphedFunction] = {}
        # Device memory the graphs' shared pool grew by over all captures (the caching allocator's
        # reserved bytes, measured with its cache emptied before each capture).
        self.graph_memory_bytes = 0
        self._pool = torch.cuda.graph_pool_handle() if self.use_graphs else None

    def _body(self, audio: Tensor, lengths: Tensor, padded: Tensor) -> tuple[Tensor, Tensor]:
        with self.model.running():
            return self.model.encode_fixed_shape(audio, lengths, padded, self.num_quantizers)

    def encode(self, audio: Tensor, lengths, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
        if not isinstance(audio, Tensor) or audio.dim() != 3 or audio.shape[1] != 1:
            shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
            raise ValueError(f"audio must have shape (batch, 1, samples), got {shape}")
        items, num_samples = audio.shape[0], audio.shape[-1]
        batch_size = items if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < items:
            raise ValueError(f"batch_size must be an int of at least the {items} items given, got {batch_size!r}")
        host_lengths, padded = self.model.fixed_shape_lengths(lengths, num_samples)
        if host_lengths.shape != (items,):
            raise ValueError(f"lengths must hold one value per item ({items}), got {tuple(host_lengths.shape)}")
        model = self.model
        if self.check_inputs:
            audio = model.check_audio(audio)
        elif not audio.is_floating_point():
            raise TypeError(f"audio must be floating point audio in [-1, 1], got dtype {audio.dtype}")
        audio = audio.to(device=model.device, dtype=model.dtype)
        fill = batch_size - items
        if fill:
            audio = torch.cat([audio, audio.new_zeros(fill, 1, num_samples)])
            host_lengths = torch.cat([host_lengths, torch.full((fill,), num_samples, dtype=torch.long)])
            padded = torch.cat([padded, torch.full((fill,), model.acoustic_needs_padding(num_samples))])
        lengths_on_device = host_lengths.to(model.device, non_blocking=True)
        padded_on_device = padded.to(model.device, non_blocking=True)
        with torch.inference_mode():
            if not self.use_graphs:
                codes, code_lengths = self._body(audio, lengths_on_device, padded_on_device)
            else:
                codes, code_lengths = self._replay(audio, lengths_on_device, padded_on_device)
        return codes[:items], code_lengths[:items]

    def _replay(self, audio: Tensor, lengths: Tensor, padded: Tensor) -> tuple[Tensor, Tensor]:
        key = (audio.shape[0], audio.shape[-1])
        graph = self.graphs.get(key)
        if graph is not None:
            return graph(audio, lengths, padded)
        graph = GraphedFunction(self._body, audio.clone(), lengths.clone(), padded.clone(), pool=self._pool)
        # torch.cuda.graph empties the allocator's cache before it captures: do it first, or the
        # difference would lose what was cached before (and could even be negative).
        torch.cuda.synchronize(self.model.device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_reserved(self.model.device)
        out = graph(audio, lengths, padded)
        self.graph_memory_bytes += torch.cuda.memory_reserved(self.model.device) - before
        self.graphs[key] = graph
        return out

    def release_graphs(self) -> None:
        """Drop the captured graphs, so their memory pool can go back to the device (on out of
        memory); later calls capture again. ``graph_memory_bytes`` keeps counting."""
        self.graphs.clear()
        if self.use_graphs:
            self._pool = torch.cuda.graph_pool_handle()

    def __repr__(self) -> str:
        return (f"FixedShapeEncoder(num_quantizers={self.num_quantizers}, graphs={self.use_graphs}, "
                f"shapes={sorted(self.graphs)})")
