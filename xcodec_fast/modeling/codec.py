"""XcodecModel: transformers-compatible X-Codec, inference only, with variable-length batches.

Same parameter names, outputs and error messages as transformers' ``XcodecModel``; the hot compute
goes through :mod:`xcodec_fast.ops`. Beyond transformers, ``encode`` takes a ``padding_mask`` and
gives every item exactly the codes it gives alone, and ``decode`` takes ``audio_code_lengths``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from ..cuda_graphs import CudaGraphCodec
from ..config import XcodecConfig
from ..lengths import truncating_conv_output_length
from .acoustic import DacDecoder, DacEncoder, zero_beyond
from .adapter import SemanticDecoder, SemanticEncoder
from .layers import Linear
from .chunking import DecodeStream, Window, frame_count, plan_windows
from .outputs import XcodecDecoderOutput, XcodecEncoderOutput, XcodecOutput
from .quantizer import ResidualVectorQuantizer
from .semantic import SemanticModel


__all__ = ["XcodecModel", "XcodecOutput", "XcodecEncoderOutput", "XcodecDecoderOutput", "DECODE_CHUNK_FRAMES", "ENCODE_CHUNK_FRAMES", "ENCODE_CONTEXT_FRAMES"]

# Code frames per window when decode chunks a long stream by itself (see decode's chunk_frames).
# From the chunk sweep in bench/results/long-*.json: 150-500 frames decode as fast as the whole
# stream or faster (cache-sized activations), 50 pays 40% for context; memory grows with the chunk.
DECODE_CHUNK_FRAMES = 500
# Encode windows (code frames) and the semantic attention context each side of one; see
# encode_windows and the agreement figures in bench/results/long-*.json.
ENCODE_CHUNK_FRAMES = 3000
ENCODE_CONTEXT_FRAMES = 250


def _chunk_size(chunk_frames, total_frames: int, default: int) -> int:
    """Frames per window: the caller's, or ``default`` for streams longer than it, or all."""
    if chunk_frames is None:
        return total_frames if total_frames <= default else default
    return min(frame_count("chunk_frames", chunk_frames), total_frames)


class XcodecModel(nn.Module):
    """X-Codec: audio (B, 1, N) at 16 kHz <-> codes (B, n_q, N / 320) in [0, codebook_size)."""

    main_input_name = "input_values"

    def __init__(self, config: XcodecConfig, backend: str | None = None):
        super().__init__()
        if not isinstance(config, XcodecConfig):
            raise TypeError(f"config must be an xcodec_fast XcodecConfig, got {type(config).__name__}")
        self.config = config
        self.backend = backend
        self.pad = config.hop_length // 2
        self.acoustic_encoder = DacEncoder(config.acoustic_model_config)
        self.acoustic_decoder = DacDecoder(config.acoustic_model_config)
        self.encoder_semantic = SemanticEncoder(config)
        self.decoder_semantic = SemanticDecoder(config)
        self.semantic_model = SemanticModel(config.semantic_model_config)
        self.fc = Linear(config.hidden_size, config.hidden_size)
        self.fc1 = Linear(config.hidden_size, config.semantic_hidden_size)
        self.fc2 = nn.Linear(config.hidden_size, config.acoustic_model_config.hidden_size)
        self.quantizer = ResidualVectorQuantizer(config)
        self.requires_grad_(False)
        self.eval()
        if self.fc2.weight.device.type != "meta":
            self.refresh_derived()

    # ---- settings --------------------------------------------------------------------------
    @property
    def backend(self) -> str | None:
        """Kernel backend used inside encode/decode ('eager', 'triton', 'native', 'auto'), or None
        to follow the global :func:`xcodec_fast.use_backend` setting."""
        return self._backend

    @backend.setter
    def backend(self, name: str | None) -> None:
        if name is not None and (not isinstance(name, str) or name.lower() not in ops.CHOICES):
            raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(ops.CHOICES)} or None")
        self._backend = None if name is None else name.lower()

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    @property
    def num_quantizers(self) -> int:
        return self.quantizer.num_quantizers

    def refresh_derived(self) -> None:
        """Recompute the non-persistent buffers (stacked codebooks, their norms, fc2-projected
        codebooks). Call after changing codebooks or fc2 by hand; the loaders call it."""
        self.quantizer.refresh(self.fc2.weight)

    # ---- the public core: unchecked building blocks that encode/decode, CUDA graphs and the
    # streaming decoder all call. Validate inputs with check_audio / check_codes first, and run them
    # inside ``with model.running():``.
    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Inference mode with this model's backend selected: the context every core call runs in.
        Off the CPU the ops skip their value checks (each a device sync): the entry checks of
        encode / decode have validated the inputs, so the core runs without host synchronisation."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.device.type != "cpu":
                stack.enter_context(ops.skip_value_checks())
            if self._backend is not None:
                stack.enter_context(ops.use_backend(self._backend))
            yield

    def _return_dict(self, return_dict: bool | None) -> bool:
        return bool(self.config.extra.get("return_dict", True)) if return_dict is None else bool(return_dict)

    # ---- lengths ---------------------------------------------------------------------------
    def acoustic_needs_padding(self, num_samples: int) -> bool:
        """Whether the acoustic encoder runs on ``num_samples`` samples padded by hop/2 per side, as
        transformers does when its (truncating) conv arithmetic on the raw length misses the semantic
        frame count (:func:`xcodec_fast.lengths.truncating_conv_output_length`). Host arithmetic only:
        decided without running anything; encode, the export wrappers and batches all follow it."""
        return self._acoustic_frames(num_samples) != self.code_frames(num_samples)

    def _acoustic_frames(self, num_samples: int) -> int:
        """Frames the acoustic encoder makes from ``num_samples`` samples, in transformers' arithmetic."""
        length = num_samples
        for conv in self.acoustic_encoder.conv_layers():
            length = truncating_conv_output_length(length, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                                                   conv.dilation[0])
        return length

    def code_frames(self, num_samples: int) -> int:
        """Code frames for ``num_samples`` samples of audio (the semantic branch's frame count);
        host arithmetic only, no device work."""
        frames = self.semantic_model.frame_count(num_samples + 2 * self.pad)
        return self.encoder_semantic.output_length(frames)

    def min_input_length(self) -> int:
        """Fewest samples encode accepts."""
        return max(1, self.semantic_model.min_input_length - 2 * self.pad)

    # ---- input checks ----------------------------------------------------------------------
    def check_audio(self, input_values) -> Tensor:
        """Validate audio (B, 1, N) floating point, finite; return it on the model's device and dtype."""
        if not isinstance(input_values, Tensor):
            raise TypeError(
                f"input_values must be a torch.Tensor of shape (batch, 1, samples), got {type(input_values).__name__}"
            )
        if input_values.dim() != 3:
            raise ValueError(
                f"input_values must have shape (batch, channels, samples), got {tuple(input_values.shape)}; "
                "for a mono clip x of shape (samples,) pass x[None, None]"
            )
        channels = input_values.shape[1]
        if channels != 1:
            raise ValueError(f"Audio must be mono, but got {channels}")
        if not input_values.is_floating_point():
            raise TypeError(
                f"input_values must be floating point audio in [-1, 1], got dtype {input_values.dtype}; "
                "convert integer PCM first (e.g. x.float() / 32768)"
            )
        if input_values.shape[0] == 0 or input_values.shape[-1] == 0:
            raise ValueError(f"input_values is empty (shape {tuple(input_values.shape)})")
        if not torch.isfinite(input_values).all():
            raise ValueError("input_values contains NaN or infinite samples")
        return input_values.to(device=self.device, dtype=self.dtype)

    def _check_padding_mask(self, padding_mask, audio: Tensor) -> Tensor | None:
        if padding_mask is None:
            return None
        batch, _, num_samples = audio.shape
        if not isinstance(padding_mask, Tensor):
            raise TypeError(f"padding_mask must be a torch.Tensor, got {type(padding_mask).__name__}")
        if padding_mask.shape == (batch, 1, num_samples):
            padding_mask = padding_mask[:, 0]
        if padding_mask.shape != (batch, num_samples):
            raise ValueError(
                f"padding_mask must have shape (batch, samples) = {(batch, num_samples)}, "
                f"got {tuple(padding_mask.shape)}"
            )
        mask = padding_mask.to(audio.device)
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("padding_mask must hold only 0 (padding) and 1 (valid sample)")
        mask = mask.bool()
        lengths = mask.sum(-1)
        prefix = torch.arange(num_samples, device=mask.device)[None, :] < lengths[:, None]
        if not torch.equal(prefix, mask):
            bad = int((prefix != mask).any(-1).nonzero()[0])
            raise ValueError(
                f"padding_mask item {bad} is not right-padded: valid samples must come first, then only padding"
            )
        # The entry check's one sync: from here on lengths live on the host, so every padding
        # decision is made there and the device never waits for the host.
        return lengths.long().cpu()

    def check_length(self, num_samples: int) -> None:
        """Raise ValueError when ``num_samples`` is too short to encode."""
        minimum = self.min_input_length()
        if num_samples < minimum:
            raise ValueError(f"audio of {num_samples} samples is too short: encode needs at least {minimum}")

    # ---- encode ----------------------------------------------------------------------------
    def encode(
        self,
        input_values: Tensor,
        bandwidth: float | None = None,
        return_dict: bool | None = None,
        padding_mask: Tensor | None = None,
        chunk_frames: int | None = None,
        context_frames: int | None = None,
    ) -> Tensor | XcodecEncoderOutput:
        """Audio (B, 1, N) float -> codes (B, n_q, T) int64, n_q from ``bandwidth`` (kbps, one of
        ``config.target_bandwidths``; None: the highest).

        ``padding_mask`` (B, N) of 1 (valid) / 0 (padding), valid samples first: item b then gets
        exactly the codes of ``input_values[b, :, :L_b]`` alone (L_b = its valid samples), in its first
        ``audio_code_lengths[b]`` frames; later frames are 0. ``return_dict=False`` returns the codes
        tensor only (as transformers does).

        ``chunk_frames``: encode in windows of this many code frames, so that memory follows the
        window, not the recording (see :meth:`encode_windows`); None: recordings longer than
        ``ENCODE_CHUNK_FRAMES`` frames are windowed at that size. ``context_frames``: semantic
        context each side of a window (default ``ENCODE_CONTEXT_FRAMES``)."""
        return_dict = self._return_dict(return_dict)
        audio = self.check_audio(input_values)
        num_quantizers = self.config.num_quantizers_for_bandwidth(bandwidth)
        lengths = self._check_padding_mask(padding_mask, audio)
        if chunk_frames is not None and lengths is not None:
            raise ValueError("chunk_frames applies to unpadded input; encode long recordings one per call")
        with self.running():
            if lengths is None:
                self.check_length(audio.shape[-1])
                total = self.code_frames(audio.shape[-1])
                chunk = _chunk_size(chunk_frames, total, ENCODE_CHUNK_FRAMES)
                context = ENCODE_CONTEXT_FRAMES if context_frames is None else frame_count("context_frames", context_frames, 0)
                if chunk >= total:
                    codes = self.quantize(self.encode_latent(audio), num_quantizers)
                else:
                    codes = self.encode_windows(audio, num_quantizers, chunk, context)
                code_lengths = None
            else:
                codes, code_lengths = self._encode_padded(audio, lengths, num_quantizers)
        if not return_dict:
            return codes
        return XcodecEncoderOutput(audio_codes=codes, audio_code_lengths=code_lengths)

    def encode_windows(
        self, audio: Tensor, num_quantizers: int, chunk_frames: int, context_frames: int, on_window=None
    ) -> Tensor:
        """Core: checked audio (B, 1, N) -> codes, ``chunk_frames`` code frames at a time.

        The acoustic branch is convolutional: each window reads the audio its receptive field
        covers (:meth:`DacEncoder.context`) and equals the whole encode. The semantic model is not:
        its first GroupNorm's statistics are taken over the whole recording in a first pass (exact),
        and attention runs over the window plus ``context_frames`` frames each side, of which the
        centre is kept. Codes therefore agree with a whole-file encode except near windows' seams
        where attention would have looked further (figures in the README). ``on_window(frames)``
        is called after each window with the frames it added (a progress bar's update)."""
        if self.encoder_semantic.output_length(1000) != 1000:
            raise ValueError("windowed encode needs a semantic encoder without striding (every X-Codec checkpoint's)")
        num_samples = audio.shape[-1]
        total = self.code_frames(num_samples)
        hop = self.config.hop_length
        semantic_input = F.pad(audio[:, 0], (self.pad, self.pad))
        field = self.semantic_model.min_input_length
        statistics = self.semantic_model.feature_extractor.group_norm_statistics(semantic_input)
        acoustic_input = F.pad(audio, (self.pad, self.pad)) if self.acoustic_needs_padding(num_samples) else audio
        before, after = (math.ceil(samples / hop) for samples in self.acoustic_encoder.context())
        codes = torch.empty(audio.shape[0], num_quantizers, total, dtype=torch.long, device=audio.device)
        for window in plan_windows(total, chunk_frames, context_frames, context_frames):
            segment = semantic_input[:, window.low * hop : (window.high - 1) * hop + field]
            features = self.semantic_model(segment, norm_statistics=statistics)
            e_semantic, _ = self.encoder_semantic(features.transpose(1, 2))
            keep = slice(window.start - window.low, window.end - window.low)
            low, high = max(0, window.start - before), min(total, window.end + after)
            stop = acoustic_input.shape[-1] if high == total else high * hop
            e_acoustic, _ = self.acoustic_encoder(acoustic_input[..., low * hop : stop])
            acoustic_keep = slice(window.start - low, window.end - low)
            embeddings = self._join(e_acoustic[..., acoustic_keep], e_semantic[..., keep])
            codes[..., window.start : window.end] = self.quantize(embeddings, num_quantizers)
            if on_window is not None:
                on_window(window.end - window.start)
        return codes

    def encode_latent(self, audio: Tensor, acoustic_padding: bool | None = None) -> Tensor:
        """Core: checked audio (B, 1, N), every item N samples long -> the embeddings the quantizer
        reads, (B, hidden_size, code_frames(N)). No input checks. ``acoustic_padding``: whether the
        acoustic encoder reads the audio padded by hop/2 per side (None: decided from N, as
        transformers does; an exported graph fixes it for the lengths it accepts)."""
        num_samples = audio.shape[-1]
        features = self.semantic_model(F.pad(audio[:, 0], (self.pad, self.pad)))
        e_semantic, _ = self.encoder_semantic(features.transpose(1, 2))
        if acoustic_padding is None:
            acoustic_padding = self.acoustic_needs_padding(num_samples)
        acoustic_input = F.pad(audio, (self.pad, self.pad)) if acoustic_padding else audio
        e_acoustic, _ = self.acoustic_encoder(acoustic_input)
        if e_acoustic.shape[-1] != e_semantic.shape[-1]:
            raise RuntimeError(
                f"audio of {num_samples} samples gives {e_acoustic.shape[-1]} acoustic but {e_semantic.shape[-1]} "
                "semantic frames; this config's acoustic and semantic strides do not line up"
            )
        return self._join(e_acoustic, e_semantic)

    def _join(self, e_acoustic: Tensor, e_semantic: Tensor) -> Tensor:
        embeddings = torch.cat([e_acoustic, e_semantic], dim=1)
        return self.fc(embeddings.transpose(1, 2)).transpose(1, 2)

    def quantize(self, embeddings: Tensor, num_quantizers: int) -> Tensor:
        """Core: embeddings (B, hidden_size, T) -> codes (B, num_quantizers, T) int64."""
        return self.quantizer.encode(embeddings, num_quantizers)

    def _encode_padded(self, audio: Tensor, lengths: Tensor, num_quantizers: int) -> tuple[Tensor, Tensor]:
        """Core: audio and host (CPU) ``lengths`` -> codes zeroed past each item's frames, and
        those frame counts (on the audio's device)."""
        lengths = lengths.cpu()
        for index, length in enumerate(lengths.tolist()):
            if length == 0:
                raise ValueError(f"padding_mask item {index} has no valid samples")
            self.check_length(length)
        total_frames = self.code_frames(audio.shape[-1])
        longest = int(lengths.max())
        audio = zero_beyond(audio[..., :longest], lengths)
        if bool((lengths == longest).all()):
            # Every item fills the (trimmed) batch: the plain path, bit-identical to transformers.
            codes = self.quantize(self.encode_latent(audio), num_quantizers)
            code_lengths = torch.full_like(lengths, codes.shape[-1])
        else:
            codes, code_lengths = self._encode_masked(audio, lengths, num_quantizers)
        codes = zero_beyond(codes, code_lengths)
        return F.pad(codes, (0, total_frames - codes.shape[-1])), code_lengths.to(audio.device, non_blocking=True)

    def _encode_masked(self, audio: Tensor, lengths: Tensor, num_quantizers: int) -> tuple[Tensor, Tensor]:
        pad = self.pad
        semantic_lengths = lengths + 2 * pad
        features = self.semantic_model(F.pad(audio[:, 0], (pad, pad)), semantic_lengths)
        frames = self.semantic_model.frame_lengths(semantic_lengths)
        e_semantic, code_lengths = self.encoder_semantic(features.transpose(1, 2), frames)
        acoustic_size = self.config.acoustic_model_config.hidden_size
        e_acoustic = e_semantic.new_zeros(audio.shape[0], acoustic_size, e_semantic.shape[-1])
        # Items may differ in transformers' pad decision: run the acoustic encoder per decision.
        decisions = [self.acoustic_needs_padding(n) for n in lengths.tolist()]
        for padded in (False, True):
            items = torch.tensor([i for i, d in enumerate(decisions) if d == padded], dtype=torch.long)
            if items.numel() == 0:
                continue
            on_device = items.to(audio.device, non_blocking=True)
            group_lengths = lengths[items]
            group = audio[on_device, :, : int(group_lengths.max())]
            if padded:
                group, group_lengths = F.pad(group, (pad, pad)), group_lengths + 2 * pad
            encoded, encoded_lengths = self.acoustic_encoder(group, group_lengths)
            if not torch.equal(encoded_lengths, code_lengths[items]):
                raise RuntimeError(
                    f"acoustic frames {encoded_lengths.tolist()} differ from semantic frames "
                    f"{code_lengths[items].tolist()}; this config's strides do not line up"
                )
            frames_kept = min(encoded.shape[-1], e_acoustic.shape[-1])
            e_acoustic[on_device, :, :frames_kept] = encoded[..., :frames_kept]
        return self.quantize(self._join(e_acoustic, e_semantic), num_quantizers), code_lengths

    def fixed_shape_lengths(self, lengths, num_samples: int) -> tuple[Tensor, Tensor]:
        """Host side of :meth:`encode_fixed_shape`: checks each item's valid samples against a batch
        of ``num_samples`` and returns (lengths, acoustic_padded), both CPU tensors (int64, bool),
        ``acoustic_padded[b]`` being transformers' pad decision for item b alone."""
        lengths = torch.as_tensor(lengths).cpu()
        if lengths.dim() != 1 or lengths.numel() == 0 or lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be a non-empty 1-D integer tensor, got {tuple(lengths.shape)} {lengths.dtype}")
        for index, length in enumerate(lengths.tolist()):
            if length > num_samples:
                raise ValueError(f"item {index} has {length} valid samples, more than the batch's {num_samples}")
            try:
                self.check_length(length)
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        decisions = []
        for index, n in enumerate(lengths.tolist()):
            decisions.append(self.acoustic_needs_padding(n))
            # encode_fixed_shape cannot check this on the device without a sync: check it here.
            acoustic = self._acoustic_frames(n + 2 * self.pad if decisions[-1] else n)
            if acoustic != self.code_frames(n):
                raise RuntimeError(f"item {index}: audio of {n} samples gives {acoustic} acoustic but "
                                   f"{self.code_frames(n)} semantic frames; this config's strides do not line up")
        return lengths.long(), torch.tensor(decisions, dtype=torch.bool)

    def encode_fixed_shape(self, audio: Tensor, lengths: Tensor, acoustic_padded: Tensor,
                           num_quantizers: int) -> tuple[Tensor, Tensor]:
        """Core: a right-padded batch (B, 1, N) with ``lengths`` and ``acoustic_padded`` (from
        :meth:`fixed_shape_lengths`) on the audio's device -> (codes (B, n_q, code_frames(N)) zero
        past each item's frames, those frame counts). Every shape follows from (B, N) alone and no
        value comes to the host, so one CUDA graph per batch shape serves any lengths. Each item's
        codes are the ones it gives alone (to float rounding: no trimming, one acoustic batch)."""
        pad = self.pad
        audio = zero_beyond(audio, lengths)
        features, frames = self.semantic_model.forward_fixed_shape(F.pad(audio[:, 0], (pad, pad)), lengths + 2 * pad)
        e_semantic, code_lengths = self.encoder_semantic(features.transpose(1, 2), frames)
        # Both of transformers' alignments in one static shape: shifted by pad where it pads, else not.
        acoustic_input = torch.where(acoustic_padded[:, None, None], F.pad(audio, (pad, pad)), F.pad(audio, (0, 2 * pad)))
        e_acoustic, _ = self.acoustic_encoder(acoustic_input, lengths + 2 * pad * acoustic_padded)
        total = e_semantic.shape[-1]
        e_acoustic = F.pad(e_acoustic[..., :total], (0, max(0, total - e_acoustic.shape[-1])))
        codes = self.quantize(self._join(e_acoustic, e_semantic), num_quantizers)
        return zero_beyond(codes, code_lengths), code_lengths

    # ---- decode ----------------------------------------------------------------------------
    def check_codes(self, audio_codes) -> Tensor:
        """Validate codes (B, n_q, T) integer in range; return them as int64 on the model's device."""
        if not isinstance(audio_codes, Tensor):
            raise TypeError(f"audio_codes must be a torch.Tensor, got {type(audio_codes).__name__}")
        if audio_codes.is_floating_point() or audio_codes.is_complex() or audio_codes.dtype == torch.bool:
            raise TypeError(f"audio_codes must be an integer tensor (as encode returns), got dtype {audio_codes.dtype}")
        if audio_codes.dim() != 3:
            raise ValueError(
                f"audio_codes must have shape (batch, num_quantizers, frames), got {tuple(audio_codes.shape)}"
            )
        batch, num_quantizers, frames = audio_codes.shape
        if not 1 <= num_quantizers <= self.num_quantizers:
            raise ValueError(
                f"audio_codes has {num_quantizers} quantizers (dim 1); this model has 1 to {self.num_quantizers}"
            )
        if batch == 0 or frames == 0:
            raise ValueError(f"audio_codes is empty (shape {tuple(audio_codes.shape)})")
        low, high = int(audio_codes.min()), int(audio_codes.max())
        size = self.quantizer.codebook_size
        if low < 0 or high >= size:
            raise ValueError(f"audio_codes must lie in [0, {size - 1}], got values in [{low}, {high}]")
        return audio_codes.to(device=self.device, dtype=torch.long)

    def _check_code_lengths(self, audio_code_lengths, codes: Tensor) -> Tensor | None:
        if audio_code_lengths is None:
            return None
        # host lengths (the entry check's one sync): windows and masks are planned on the host
        lengths = torch.as_tensor(audio_code_lengths).cpu()
        if lengths.shape != (codes.shape[0],) or lengths.is_floating_point():
            raise ValueError(
                f"audio_code_lengths must be {codes.shape[0]} integers (one per item), "
                f"got {tuple(lengths.shape)} {lengths.dtype}"
            )
        if (lengths < 1).any() or (lengths > codes.shape[-1]).any():
            raise ValueError(f"audio_code_lengths must lie in [1, {codes.shape[-1]}], got {lengths.tolist()}")
        return lengths.long()

    def decode(
        self,
        audio_codes: Tensor,
        return_dict: bool | None = None,
        audio_code_lengths: Tensor | None = None,
        chunk_frames: int | None = None,
    ) -> Tensor | XcodecDecoderOutput:
        """Codes (B, n_q, T) -> audio (B, 1, hop_length * T).

        With ``audio_code_lengths`` (B,) item b's audio equals decoding ``audio_codes[b, :, :len_b]``
        alone in its first ``hop_length * len_b`` samples; later samples are 0.

        ``chunk_frames``: decode in windows of this many frames, each with the decoder's receptive
        field (:meth:`decoder_context`) of context on both sides, so the audio equals the whole
        decode while peak memory follows the window, not the stream. None: streams longer than
        ``DECODE_CHUNK_FRAMES`` frames are chunked at that size."""
        return_dict = self._return_dict(return_dict)
        codes = self.check_codes(audio_codes)
        lengths = self._check_code_lengths(audio_code_lengths, codes)
        chunk = _chunk_size(chunk_frames, codes.shape[-1], DECODE_CHUNK_FRAMES)
        with self.running():
            audio_values = self._decode_windows(codes, lengths, chunk)
        if not return_dict:
            return audio_values
        return XcodecDecoderOutput(audio_values=audio_values)

    def _decode_windows(self, codes: Tensor, lengths: Tensor | None, chunk: int) -> Tensor:
        hop = self.config.hop_length
        audio = None
        for window, piece in self.decode_windows(codes, chunk, lengths):
            if window.start == 0 and window.end == codes.shape[-1]:
                return piece  # one window: the whole decode, no copy
            if audio is None:
                audio = piece.new_empty(codes.shape[0], 1, hop * codes.shape[-1])
            audio[..., window.start * hop : window.end * hop] = piece
        return audio

    def decode_windows(
        self, codes: Tensor, chunk_frames: int, lengths: Tensor | None = None
    ) -> Iterator[tuple[Window, Tensor]]:
        """Core: checked codes (B, n_q, T) -> (window, audio of frames [window.start, window.end))
        in order; concatenated they are ``decode``'s audio. For writing long audio as it is made."""
        total = codes.shape[-1]
        left, right = self.window_context()
        hop = self.config.hop_length
        for window in plan_windows(total, chunk_frames, left, right, self.window_grid()):
            local = None
            if lengths is not None:
                local = (lengths - window.low).clamp(0, window.high - window.low)
                if bool((local == window.high - window.low).all()):
                    local = None  # every item fills the window: the unmasked path
            piece = self.decode_latent(self.dequantize(codes[..., window.low : window.high]), local)
            yield window, piece[..., (window.start - window.low) * hop : (window.end - window.low) * hop]

    def decoder_context(self) -> tuple[int, int]:
        """Code frames (left, right) of context that determine a frame's decoded audio."""
        return self.acoustic_decoder.context()

    def window_context(self) -> tuple[int, int]:
        """The context decode windows take now: :meth:`decoder_context`, plus the reach of the
        Winograd tiles' rounding where the backend in force decodes on the grid (native), so that
        the kept frames are computed exactly as in the whole decode."""
        return self.acoustic_decoder.context(tiles=ops.decodes_on_grid(self.device))

    def window_grid(self) -> int:
        """The grid decode windows start on now: :meth:`decoder_grid` where the backend in force
        decodes on it (``ops.decodes_on_grid``: native), else 1 (no extra context)."""
        return self.decoder_grid() if ops.decodes_on_grid(self.device) else 1

    def decoder_grid(self) -> int:
        """Code frames on whose multiples a decode window must start to compute each of its frames
        with the same kernel calls as the whole decode (bit-equal where the kernels are
        length-invariant): the decoder's code-rate block, a multiple of its Winograd tile periods."""
        return self.acoustic_decoder.block_frames

    def decode_stream(self, chunk_frames: int | None = None, cuda_graph: bool = False) -> DecodeStream:
        """A :class:`~xcodec_fast.modeling.chunking.DecodeStream`: ``push(codes)`` returns the audio
        that is final so far, ``flush()`` the rest; together they equal ``decode`` of all codes."""
        return DecodeStream(self, chunk_frames=chunk_frames, cuda_graph=cuda_graph)

    def dequantize(self, codes: Tensor) -> Tensor:
        """Core: checked codes (B, n_q, T) -> the decoder's latent (B, acoustic hidden_size, T),
        fc2 applied. Per frame: a slice of codes gives the same slice of latent."""
        # check_codes validated the code range: the op need not reduce and sync over it again.
        with ops.skip_value_checks():
            return self.quantizer.decode_project(codes, self.fc2.weight, self.fc2.bias)

    def decode_latent(self, latent: Tensor, lengths: Tensor | None = None, starts: Tensor | None = None) -> Tensor:
        """Core: latent (B, C, T) -> audio (B, 1, hop_length * T). Frames of item b outside
        ``[starts[b], lengths[b])`` are treated as padding (zeroed before every convolution, as the
        stream's own edges are), and its audio there is 0."""
        return self.acoustic_decoder(latent, lengths, starts)[0]

    def forward(
        self,
        input_values: Tensor,
        audio_codes: Tensor | None = None,
        bandwidth: float | None = None,
        return_dict: bool | None = None,
        padding_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor] | XcodecOutput:
        """Encode (unless ``audio_codes`` are given) then decode, trimmed to the input length.
        With ``padding_mask``, each item's audio is zero past its valid samples."""
        return_dict = self._return_dict(return_dict)
        num_samples = input_values.shape[-1] if isinstance(input_values, Tensor) else None
        code_lengths = None
        sample_lengths = None
        if audio_codes is None:
            encoded = self.encode(input_values, bandwidth, return_dict=True, padding_mask=padding_mask)
            audio_codes, code_lengths = encoded.audio_codes, encoded.audio_code_lengths
        elif padding_mask is not None:
            raise ValueError("padding_mask only applies when forward encodes; pass audio_code_lengths to decode instead")
        if code_lengths is not None:
            sample_lengths = padding_mask.reshape(padding_mask.shape[0], -1).sum(-1)
        audio_values = self.decode(audio_codes, return_dict=True, audio_code_lengths=code_lengths).audio_values
        audio_values = zero_beyond(audio_values[..., :num_samples], sample_lengths)
        output = XcodecOutput(audio_codes=audio_codes, audio_values=audio_values)
        return output if return_dict else output.to_tuple()

    def cuda_graph(
        self, batch_size: int, num_samples: int, bandwidth: float | None = None, check_inputs: bool = True
    ) -> "CudaGraphCodec":
        """Fixed-shape ``encode(x)`` / ``decode(codes)`` replayed from CUDA graphs (captured on first
        use) for a model on a CUDA device: see :class:`xcodec_fast.cuda_graphs.CudaGraphCodec`."""
        return CudaGraphCodec(self, batch_size, num_samples, bandwidth=bandwidth, check_inputs=check_inputs)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool = False,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        backend: str | None = None,
    ) -> "XcodecModel":
        """Load a transformers X-Codec checkpoint (hub id or local directory; safetensors only)."""
        from ..checkpoints import load_pretrained

        return load_pretrained(
            cls,
            name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            dtype=dtype,
            device=device,
            backend=backend,
        )

    def save_pretrained(self, save_directory: str) -> None:
        """Write config.json + model.safetensors that transformers' XcodecModel.from_pretrained loads."""
        from ..checkpoints import save_pretrained

        save_pretrained(self, save_directory)

    @classmethod
    def from_original_checkpoint(
        cls, checkpoint_path: str, yaml_path: str | None = None, config: XcodecConfig | None = None, **kwargs
    ) -> "XcodecModel":
        """Load an original X-Codec ``.pth`` (weights only) with its ``.yaml`` config."""
        from ..checkpoints import load_original_checkpoint

        return load_original_checkpoint(cls, checkpoint_path, yaml_path, config=config, **kwargs)

    @classmethod
    def from_random(cls, config: XcodecConfig | None = None, seed: int = 0, backend: str | None = None) -> "XcodecModel":
        """Deterministic random weights at realistic scales (default: the full-size default config).
        Codes and audio are meaningless but numerically sane: for demos and tests."""
        from ..checkpoints import randomize_

        # Built on the meta device and then allocated: torch's default init would be overwritten anyway.
        with torch.device("meta"):
            model = cls(config if config is not None else XcodecConfig(), backend=backend)
        model.to_empty(device="cpu")
        with torch.no_grad():
            for buffer in model.buffers():
                buffer.zero_()
        randomize_(model, seed)
        return model

    def extra_repr(self) -> str:
        return f"backend={self._backend!r}, num_quantizers={self.num_quantizers}, hop_length={self.config.hop_length}"
