"""Exact decoding of long or growing code streams, window by window.

The decoder (dequantize + fc2, then the DAC decoder) is convolutional, so an output frame depends
only on the latent frames within :meth:`DacDecoder.context` of it. A window of codes with that
much context on each side, decoded alone, reproduces the whole-stream output at its centre; where
a window meets the stream's edge, the convolutions' own zero padding (or the decoder's frame mask,
which is the same thing) stands in for what lies beyond, as in the whole decode.

:func:`plan_windows` plans a chunked decode; :class:`DecodeStream` decodes codes as they arrive.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import torch
from torch import Tensor

from ..cuda_graphs import GraphedFunction

__all__ = ["Window", "plan_windows", "on_grid", "frame_count", "DecodeStream"]


class Window(NamedTuple):
    """Decode code frames ``[low, high)``; keep the output of frames ``[start, end)``."""

    low: int
    start: int
    end: int
    high: int


def plan_windows(total: int, chunk: int, left: int, right: int, grid: int = 1) -> Iterator[Window]:
    """Windows that cover frames ``[0, total)`` in chunks of ``chunk`` frames with ``left``/``right``
    frames of context, clipped at the stream's edges; each starts on a multiple of ``grid`` (the
    decoder's :meth:`~xcodec_fast.XcodecModel.decoder_grid`), taking up to ``grid - 1`` frames more context."""
    if chunk < 1:
        raise ValueError(f"chunk_frames must be at least 1, got {chunk}")
    if grid < 1:
        raise ValueError(f"grid must be at least 1 frame, got {grid}")
    for start in range(0, total, chunk):
        end = min(total, start + chunk)
        yield Window(on_grid(max(0, start - left), grid), start, end, min(total, end + right))


def on_grid(frame: int, grid: int) -> int:
    """The last multiple of ``grid`` at or before ``frame``."""
    return frame // grid * grid


def frame_count(name: str, value, minimum: int = 1) -> int:
    """A caller's frame-count argument (``chunk_frames``, ``context_frames``), checked."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind} or None, got {value!r}")
    return value


class DecodeStream:
    """Decode a code stream as it is generated: ``push(codes)`` returns the audio that is final
    so far, ``flush()`` the rest; their concatenation equals ``model.decode`` of all the codes.

    Audio for frame t is final once ``lookahead_frames`` later frames have arrived (the decoder's
    right context). Streams are batched (B items pushed together, frame-aligned).

    ``chunk_frames=None``: each push decodes every newly final frame in one window (lowest latency,
    window shapes vary). ``chunk_frames=N``: audio comes out in blocks of exactly N frames, each
    decoded from a window of exactly ``left + N + right`` frames (the stream's edges are masked, not
    cropped), so every window has one shape; with ``cuda_graph=True`` (CUDA models) the windows
    inside the stream replay one captured CUDA graph.
    """

    def __init__(self, model, chunk_frames: int | None = None, cuda_graph: bool = False):
        self.model = model
        self.chunk_frames = None if chunk_frames is None else frame_count("chunk_frames", chunk_frames)
        if cuda_graph and self.chunk_frames is None:
            raise ValueError("cuda_graph=True needs a fixed chunk_frames (one window shape to capture)")
        if cuda_graph and model.device.type != "cuda":
            raise ValueError(
                f"cuda_graph=True needs a model on a CUDA device, this one is on {model.device}; "
                "drop cuda_graph or move the model (model.to('cuda'))"
            )
        self.cuda_graph = cuda_graph
        # Windows start on the decoder's grid (plan_windows), with the Winograd tiles' context, where
        # the backend decodes on it (native); graph replays run on CUDA, where neither applies.
        self.left, self.right = model.window_context()
        self.grid = model.window_grid()
        self.hop_length = model.config.hop_length
        self._graph = None
        self._batch_size = 0
        self._codes: Tensor | None = None  # buffered codes, from global frame _buffer_start on
        self._buffer_start = 0
        self._received = 0
        self._emitted = 0
        self._closed = False

    @property
    def lookahead_frames(self) -> int:
        """Frames that must follow a frame before its audio is final (the decoder's right context)."""
        return self.right

    @property
    def window_frames(self) -> int | None:
        """Frames per decoded window in fixed-chunk mode (left + grid - 1 + chunk + right), else None."""
        if self.chunk_frames is None:
            return None
        # A window starts up to grid - 1 frames before its left context (on the grid).
        return self.left + self.grid - 1 + self.chunk_frames + self.right

    @property
    def frames_received(self) -> int:
        return self._received

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    # ---- input -----------------------------------------------------------------------------
    def _append(self, codes) -> None:
        if self._closed:
            raise RuntimeError("this stream was flushed; start a new one with model.decode_stream()")
        if isinstance(codes, Tensor) and codes.dim() == 3 and codes.shape[-1] == 0:
            self._batch_size = self._batch_size or codes.shape[0]
            return  # nothing new (a generator step that produced no frame)
        codes = self.model.check_codes(codes)
        if self._codes is not None and codes.shape[:2] != self._codes.shape[:2]:
            raise ValueError(
                f"pushed codes of shape {tuple(codes.shape)}, but this stream holds (batch, num_quantizers) = "
                f"{tuple(self._codes.shape[:2])}: every push must have the same batch and quantizers"
            )
        self._batch_size = codes.shape[0]
        self._codes = codes if self._codes is None else torch.cat([self._codes, codes], dim=-1)
        self._received += codes.shape[-1]

    def push(self, audio_codes: Tensor) -> Tensor:
        """Append codes (B, n_q, t) and return the audio (B, 1, hop_length * k) that is now final
        (k may be 0)."""
        self._append(audio_codes)
        final = self._received - self.right
        if self.chunk_frames is None:
            return self._emit_up_to(final, at_end=False)
        pieces = []
        while final - self._emitted >= self.chunk_frames:
            pieces.append(self._emit_fixed(at_end=False))
        return self._concat(pieces)

    def flush(self) -> Tensor:
        """Return the rest of the audio (the last ``lookahead_frames`` frames and any partial chunk)
        and close the stream."""
        if self._closed:
            raise RuntimeError("this stream was already flushed")
        if self._codes is None:
            raise ValueError("nothing was pushed to this stream")
        if self.chunk_frames is None:
            audio = self._emit_up_to(self._received, at_end=True)
        else:
            pieces = []
            while self._emitted < self._received:
                pieces.append(self._emit_fixed(at_end=True))
            audio = self._concat(pieces)
        self._closed = True
        self._codes = None
        return audio

    # ---- output ----------------------------------------------------------------------------
    def _empty(self) -> Tensor:
        return torch.zeros(self._batch_size or 1, 1, 0, dtype=self.model.dtype, device=self.model.device)

    def _concat(self, pieces: list[Tensor]) -> Tensor:
        if not pieces:
            return self._empty()
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)

    def _buffered(self, low: int, high: int) -> Tensor:
        return self._codes[..., low - self._buffer_start : high - self._buffer_start]

    def _forget_before(self, frame: int) -> None:
        """Drop buffered codes no later window needs (they start on the grid at or before ``left``
        frames before ``frame``)."""
        keep = max(self._buffer_start, on_grid(max(0, frame - self.left), self.grid))
        if keep > self._buffer_start:
            self._codes = self._codes[..., keep - self._buffer_start :]
            self._buffer_start = keep

    def _emit_up_to(self, end: int, at_end: bool) -> Tensor:
        start = self._emitted
        if end <= start:
            return self._empty()
        low = on_grid(max(0, start - self.left), self.grid)
        high = self._received if at_end else end + self.right
        with self.model.running():
            audio = self.model.decode_latent(self.model.dequantize(self._buffered(low, high)))
        hop = self.hop_length
        self._emitted = end
        self._forget_before(end)
        return audio[..., (start - low) * hop : (end - low) * hop]

    def _emit_fixed(self, at_end: bool) -> Tensor:
        """Decode the next chunk from a window of exactly ``window_frames`` frames."""
        start, chunk = self._emitted, self.chunk_frames
        low = on_grid(start - self.left, self.grid)  # may lie before frame 0: masked
        high = low + self.window_frames
        available_low, available_high = max(0, low), min(self._received, high)
        codes = self._buffered(available_low, available_high)
        before, after = available_low - low, high - available_high
        if before or after:
            codes = torch.nn.functional.pad(codes, (before, after))  # code 0; masked below
        batch = codes.shape[0]
        # Frames past what was pushed lie beyond the kept frames' right context, except at the end.
        masked = before > 0 or after > 0
        with self.model.running():
            if masked:
                starts = torch.full((batch,), before, dtype=torch.long, device=codes.device)
                lengths = torch.full((batch,), self.window_frames - after, dtype=torch.long, device=codes.device)
                audio = self.model.decode_latent(self.model.dequantize(codes), lengths, starts)
            else:
                audio = self._decode_window(codes)
        hop = self.hop_length
        end = min(start + chunk, self._received)
        self._emitted = end
        self._forget_before(end)
        return audio[..., (start - low) * hop : (end - low) * hop]

    def _decode_window(self, codes: Tensor) -> Tensor:
        if not self.cuda_graph:
            return self.model.decode_latent(self.model.dequantize(codes))
        if self._graph is None:
            model = self.model
            self._graph = GraphedFunction(lambda c: model.decode_latent(model.dequantize(c)), codes.clone())
        return self._graph(codes)
