"""Audio input: the X-Codec feature extractor and file helpers (load, resample, downmix, write).

``XcodecFeatureExtractor`` behaves like transformers' ``DacFeatureExtractor`` as the X-Codec
checkpoints configure it (``hop_length`` 320, 16 kHz, mono): inputs are right-padded with zeros to
the longest item rounded up to a multiple of ``hop_length``, and ``padding_mask`` marks the real
samples. It reads and writes the same ``preprocessor_config.json``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from .errors import short_error

logger = logging.getLogger(__name__)

PREPROCESSOR_CONFIG = "preprocessor_config.json"
AudioSource = Union[str, os.PathLike, bytes, BinaryIO]


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, truncated, non-finite or too long."""


# ---------------------------------------------------------------------------------------------
# feature extractor
# ---------------------------------------------------------------------------------------------
class BatchFeature(dict):
    """The feature extractor's result: a dict with attribute access and ``.to(device)``, like
    transformers' ``BatchFeature``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchFeature has no field {name!r}; it has {list(self)}") from None

    def to(self, *args, **kwargs) -> "BatchFeature":
        import torch

        return BatchFeature({k: (v.to(*args, **kwargs) if isinstance(v, torch.Tensor) else v) for k, v in self.items()})

    def convert_to_tensors(self, tensor_type: str | None) -> "BatchFeature":
        if tensor_type is None:
            return self
        tensor_type = str(getattr(tensor_type, "value", tensor_type))
        if tensor_type not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {tensor_type!r}")
        for key, value in list(self.items()):
            if isinstance(value, list):
                shapes = {np.shape(v) for v in value}
                if len(shapes) > 1:
                    raise ValueError(
                        f"cannot make one tensor of {key!r}: items have different shapes {sorted(shapes)}; "
                        "pass padding=True (or 'longest'/'max_length') to pad them to one length"
                    )
                value = np.stack(value) if value else np.zeros((0,), dtype=np.float32)
            if tensor_type == "pt":
                import torch

                value = torch.from_numpy(np.ascontiguousarray(value))
            self[key] = value
        return self


_PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")


class XcodecFeatureExtractor:
    """Raw audio -> ``input_values`` (B, 1, N) float32 and ``padding_mask`` (B, N).

    Args:
        feature_size: channels the model takes; X-Codec takes 1 (mono).
        sampling_rate: the rate the model was trained at (16000).
        padding_value: the value padded samples get.
        hop_length: padded lengths are rounded up to a multiple of this (the model's frame hop).
    """

    model_input_names = ["input_values", "n_quantizers"]
    # What transformers writes for this extractor, so that a saved config loads there too.
    feature_extractor_type = "DacFeatureExtractor"

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        hop_length: int = 320,
        padding_side: str = "right",
        return_attention_mask: bool = True,
        **kwargs,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if int(hop_length) <= 0:
            raise ValueError(f"hop_length must be a positive integer, got {hop_length!r}")
        self.feature_size = int(feature_size)
        self.sampling_rate = int(sampling_rate)
        self.padding_value = padding_value
        self.hop_length = int(hop_length)
        self.padding_side = padding_side
        self.return_attention_mask = bool(return_attention_mask)
        kwargs.pop("feature_extractor_type", None)
        # Keys we do not use (e.g. processor_class) are kept so that save_pretrained round-trips.
        self.extra = kwargs

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), sort_keys=True)}"

    # ---- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "feature_extractor_type": self.feature_extractor_type,
            "feature_size": self.feature_size,
            "hop_length": self.hop_length,
            "padding_side": self.padding_side,
            "padding_value": self.padding_value,
            "return_attention_mask": self.return_attention_mask,
            "sampling_rate": self.sampling_rate,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "XcodecFeatureExtractor":
        return cls(**data)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        directory = Path(save_directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"save_pretrained needs a directory; {directory} is a file")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PREPROCESSOR_CONFIG
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2, sort_keys=True)
            fh.write("\n")
        return str(path)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **overrides,
    ) -> "XcodecFeatureExtractor":
        """Read ``preprocessor_config.json`` from a local directory (offline) or a hub repository."""
        source = Path(pretrained_model_name_or_path)
        if source.is_dir():
            path = source / PREPROCESSOR_CONFIG
            if not path.is_file():
                raise FileNotFoundError(f"{source} has no {PREPROCESSOR_CONFIG}")
        elif source.is_file():
            path = source
        else:
            from huggingface_hub import hf_hub_download

            path = Path(
                hf_hub_download(
                    str(pretrained_model_name_or_path),
                    PREPROCESSOR_CONFIG,
                    revision=revision,
                    cache_dir=cache_dir,
                    local_files_only=local_files_only,
                )
            )
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        kind = data.get("feature_extractor_type", cls.feature_extractor_type)
        if kind not in (cls.feature_extractor_type, cls.__name__):
            raise ValueError(
                f"{path} describes a {kind}; X-Codec checkpoints use {cls.feature_extractor_type}"
            )
        return cls.from_dict({**data, **overrides})

    # ---- featurisation --------------------------------------------------------------------
    def __call__(
        self,
        raw_audio,
        padding: bool | str | None = None,
        truncation: bool | None = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        sampling_rate: int | None = None,
    ) -> BatchFeature:
        """Featurise one clip (1-D array or list of floats) or a batch (list of them).

        ``padding``: True/'longest' (default) pads to the longest item, 'max_length' to
        ``max_length``, False/'do_not_pad' returns the items unpadded (and no ``padding_mask``).
        Padded lengths are rounded up to a multiple of ``hop_length``. ``truncation`` (with
        ``max_length``) cuts longer items. ``return_tensors``: 'pt', 'np' or None (lists of arrays).
        """
        if sampling_rate is not None:
            if sampling_rate != self.sampling_rate:
                raise ValueError(
                    f"The model corresponding to this feature extractor: {self} was trained using a sampling rate of"
                    f" {self.sampling_rate}. Please make sure that the provided audio input was sampled with"
                    f" {self.sampling_rate} and not {sampling_rate}."
                )
        else:
            logger.warning(
                "It is strongly recommended to pass the `sampling_rate` argument to %s(). Failing to do so can "
                "result in silent errors that might be hard to debug.",
                type(self).__name__,
            )
        if padding and truncation:
            raise ValueError("Both padding and truncation were set. Make sure you only set one.")
        if padding is None:
            padding = True
        strategy = self._padding_strategy(padding, max_length)
        if truncation and max_length is None:
            raise ValueError("When setting truncation=True, make sure that max_length is defined.")

        examples = self._as_examples(raw_audio)
        for idx, example in enumerate(examples):
            if example.ndim > 2:
                raise ValueError(f"Expected input shape (channels, length) but got shape {example.shape} (item {idx})")
            if self.feature_size == 1 and example.ndim != 1:
                raise ValueError(
                    f"Expected mono audio but item {idx} has shape {example.T.shape} (channels, samples); "
                    "downmix it first, e.g. with xcodec_fast.audio.downmix"
                )
            if self.feature_size == 2:
                raise ValueError("Stereo audio isn't supported for now")

        target = None if max_length is None else self._round_up(max_length)
        if truncation:
            examples = [e[:target] for e in examples]
        if strategy == "longest":
            target = self._round_up(max(len(e) for e in examples))
        pad = strategy != "do_not_pad"

        values, masks = [], []
        for example in examples:
            mask = np.ones(len(example), dtype=np.int32)
            missing = (target - len(example)) if pad else 0
            if missing > 0:
                widths = (0, missing) if self.padding_side == "right" else (missing, 0)
                example = np.pad(example, widths, constant_values=self.padding_value)
                mask = np.pad(mask, widths)
            values.append(example.astype(np.float32, copy=False))
            masks.append(mask)

        out = BatchFeature()
        if pad:
            # Padded items share one length: one (B, N) block, then a channel axis.
            out["padding_mask"] = np.stack(masks)
            out["input_values"] = np.stack(values)[:, None, :]
            if return_tensors is None:  # as transformers: a list of (1, N) arrays and a (B, N) mask
                out["input_values"] = list(out["input_values"])
        else:
            out["input_values"] = [v[None, :] for v in values]
        return out.convert_to_tensors(return_tensors)

    def _round_up(self, length: int) -> int:
        return -(-int(length) // self.hop_length) * self.hop_length

    @staticmethod
    def _padding_strategy(padding, max_length) -> str:
        padding = getattr(padding, "value", padding)  # transformers' PaddingStrategy enum
        if padding is True:
            strategy = "longest"
        elif padding is False:
            strategy = "do_not_pad"
        elif padding in _PADDING_STRATEGIES:
            strategy = padding
        else:
            raise ValueError(f"padding must be True, False or one of {_PADDING_STRATEGIES}, got {padding!r}")
        if strategy == "max_length" and max_length is None:
            raise ValueError("When setting padding='max_length', make sure that max_length is defined")
        return strategy

    @staticmethod
    def _as_examples(raw_audio) -> list[np.ndarray]:
        try:
            import torch

            def to_numpy(x):
                return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        except ImportError:  # pragma: no cover - torch is a dependency

            def to_numpy(x):
                return x

        raw_audio = to_numpy(raw_audio)
        if isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("raw_audio is an empty list: pass at least one clip")
            first = to_numpy(raw_audio[0])
            batched = isinstance(first, (np.ndarray, list, tuple))
        else:
            batched = False
        # Transformers' layout: (channels, samples) in, (samples, channels) inside.
        items = [to_numpy(a) for a in raw_audio] if batched else [raw_audio]
        examples = []
        for idx, item in enumerate(items):
            array = np.asarray(item)
            if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
                raise ValueError(f"item {idx} of raw_audio is not numeric audio (dtype {array.dtype})")
            if array.ndim == 0:
                raise ValueError(f"item {idx} of raw_audio is a scalar; expected a 1-D array of samples")
            if array.shape[-1] == 0 if array.ndim == 1 else array.size == 0:
                raise ValueError(f"item {idx} of raw_audio is empty (shape {array.shape})")
            examples.append(array.astype(np.float32, copy=False).T)
        return examples


# ---------------------------------------------------------------------------------------------
# file helpers
# ---------------------------------------------------------------------------------------------
def downmix(audio: np.ndarray, channel_axis: int = 0) -> np.ndarray:
    """Mean over channels: (channels, samples) -> (samples,). 1-D input is returned as is."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        return audio.astype(np.float32, copy=False)
    if audio.ndim != 2:
        raise ValueError(f"downmix expects (channels, samples) or (samples,), got shape {audio.shape}")
    return audio.mean(axis=channel_axis, dtype=np.float32)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """soxr high-quality resampling of (samples,) or (channels, samples) float audio."""
    if orig_sr <= 0 or target_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    audio = np.asarray(audio, dtype=np.float32)
    if orig_sr == target_sr:
        return audio
    import soxr

    if audio.ndim == 1:
        return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    if audio.ndim != 2:
        raise ValueError(f"resample expects (samples,) or (channels, samples), got shape {audio.shape}")
    return np.ascontiguousarray(soxr.resample(audio.T, orig_sr, target_sr, quality="HQ").T, dtype=np.float32)


def _name_of(source: AudioSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or f"<{type(source).__name__} audio>"


def _riff_truncation(fh: BinaryIO) -> str | None:
    """libsndfile silently reads a cut-off WAV as a shorter one; the RIFF 'data' chunk size tells."""
    start = fh.tell()
    try:
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
            if cid == b"data":
                if size in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                    return None
                body = fh.tell()
                end = fh.seek(0, io.SEEK_END)
                if end - body < size:
                    return f"truncated: the WAV header declares {size} data bytes, the file holds {end - body}"
                return None
            fh.seek(size + (size & 1), io.SEEK_CUR)
    finally:
        fh.seek(start)


def load_audio(
    source: AudioSource,
    target_sr: int | None = 16000,
    mono: bool = True,
    max_seconds: float | None = None,
    name: str | None = None,
    block_seconds: float = 30.0,
    offset: float = 0.0,
    duration: float | None = None,
    channel: int | None = None,
) -> tuple[np.ndarray, int]:
    """Decode ``source`` (path, bytes or binary file) to float32 at ``target_sr`` (None: keep the
    file's rate). ``mono``: mean over channels -> (samples,); else (channels, samples).
    ``offset`` / ``duration`` (seconds, rounded to the file's samples): read only that span, seeking
    to it where the format allows; ``channel``: that channel alone instead of the downmix.

    Decodes, downmixes and resamples in blocks, so memory stays at the output size; the result is
    identical to ``resample(downmix(whole file))``. Raises ``AudioError`` naming the file for
    unreadable, truncated, empty, non-finite (NaN/Inf) audio, and for audio longer than
    ``max_seconds`` (checked from the header before decoding).
    """
    import soundfile as sf
    import soxr

    label = _name_of(source, name)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"{label}: no such audio file")
        if os.path.isdir(source):
            raise AudioError(f"{label}: is a directory, not an audio file")
        if os.path.getsize(source) == 0:
            raise AudioError(f"{label}: empty file (0 bytes)")
        fh: BinaryIO = open(source, "rb")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError(f"{label}: empty audio (0 bytes)")
        fh = io.BytesIO(bytes(source))
    else:
        fh = source
    try:
        truncated = _riff_truncation(fh) if fh.seekable() else None
        if truncated:
            raise AudioError(f"{label}: {truncated}")
        try:
            reader = sf.SoundFile(fh)
        except Exception as exc:
            raise AudioError(f"{label}: cannot decode audio ({short_error(exc, with_type=False)})") from None
        with reader:
            sr, channels, frames = reader.samplerate, reader.channels, reader.frames
            if sr <= 0 or channels <= 0:
                raise AudioError(f"{label}: invalid header (sample rate {sr}, channels {channels})")
            first, wanted = round(offset * sr), None if duration is None else round(duration * sr)
            if offset or duration is not None:
                if offset < 0 or (wanted is not None and wanted <= 0):
                    raise AudioError(f"{label}: invalid span (offset {offset} s, duration {duration} s)")
                if frames > 0 and first + (wanted or 1) > frames:
                    raise AudioError(f"{label}: the span {offset:.3f} s + {duration} s runs past the file's "
                                     f"{frames / sr:.3f} s")
                label = f"{label} [{offset:.3f} s{'' if duration is None else f' + {duration:.3f} s'}]"
            if channel is not None and not 0 <= channel < channels:
                raise AudioError(f"{label}: has {channels} channel(s), no channel {channel}")
            span_frames = (frames - first if wanted is None else wanted) if frames > 0 else 0
            if max_seconds is not None and span_frames > 0 and span_frames / sr > max_seconds:
                raise AudioError(f"{label}: too long: {span_frames / sr:.1f} s > the {max_seconds:g} s limit")
            if first:
                reader.seek(first)
            out_sr = sr if target_sr is None else int(target_sr)
            out_channels = 1 if mono or channel is not None else channels
            stream = None if out_sr == sr else soxr.ResampleStream(sr, out_sr, out_channels, dtype="float32", quality="HQ")
            block = max(1, int(block_seconds * sr))
            pieces, total = [], 0
            while True:
                size = block if wanted is None else min(block, wanted - total)
                try:
                    data = reader.read(size, dtype="float32", always_2d=True)
                except Exception as exc:
                    raise AudioError(f"{label}: cannot decode audio after {total} frames ({short_error(exc, with_type=False)})") from None
                last = len(data) < block or (wanted is not None and total + len(data) >= wanted)
                if not np.isfinite(data).all():
                    bad = int(np.count_nonzero(~np.isfinite(data)))
                    raise AudioError(f"{label}: contains non-finite samples (NaN/Inf: {bad} near frame {total})")
                total += len(data)
                if max_seconds is not None and total / sr > max_seconds:
                    raise AudioError(f"{label}: too long: more than the {max_seconds:g} s limit")
                if channel is not None:
                    data = data[:, channel] if mono else data[:, channel : channel + 1]
                elif mono:
                    data = data.mean(axis=1, dtype=np.float32)
                if stream is not None:
                    data = stream.resample_chunk(data, last=last)
                pieces.append(data)
                if last:
                    break
    finally:
        if fh is not source:
            fh.close()
    if total == 0:
        raise AudioError(f"{label}: no audio samples (0 frames)")
    if wanted is not None and total < wanted:
        raise AudioError(f"{label}: the span needs {wanted} frames, the file ends after {total}")
    audio = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    audio = np.ascontiguousarray(audio if mono else audio.T, dtype=np.float32)
    if audio.shape[-1] == 0:
        raise AudioError(f"{label}: too short to resample ({total} frames at {sr} Hz)")
    return audio, out_sr


def write_wav(path: str | os.PathLike, audio, sr: int = 16000, subtype: str = "PCM_16") -> None:
    """Write (samples,) or (channels, samples) float audio, clipped to [-1, 1], as a WAV file."""
    import soundfile as sf

    try:
        import torch

        if isinstance(audio, torch.Tensor):
            audio = audio.detach().float().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.T
    elif audio.ndim != 1:
        raise ValueError(f"write_wav expects (samples,) or (channels, samples), got shape {audio.shape} for {path}")
    if not np.isfinite(audio).all():
        raise ValueError(f"refusing to write {path}: audio contains NaN/Inf")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0), int(sr), subtype=subtype)


class WavWriter:
    """Write mono float audio to a WAV file piece by piece (for audio longer than memory should
    hold); the same clipping, checks and format as :func:`write_wav`. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, sr: int = 16000, subtype: str = "PCM_16"):
        import soundfile as sf

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.samples = 0
        self._file = sf.SoundFile(str(self.path), "w", samplerate=int(sr), channels=1, subtype=subtype)

    def write(self, audio) -> None:
        if hasattr(audio, "detach"):
            audio = audio.detach().float().cpu().numpy()
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if not np.isfinite(audio).all():
            raise ValueError(f"refusing to write {self.path}: audio contains NaN/Inf near sample {self.samples}")
        self._file.write(np.clip(audio, -1.0, 1.0))
        self.samples += len(audio)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "WavWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


DEMO_CLIP = "demo_speechlike_16k.wav"


def demo_clip() -> tuple[np.ndarray, int]:
    """The bundled 3 s, 16 kHz mono demo clip (a synthetic speech-like signal) as (audio, 16000)."""
    with resources.files("xcodec_fast.assets").joinpath(DEMO_CLIP).open("rb") as fh:
        return load_audio(fh, target_sr=None, name=f"xcodec_fast/assets/{DEMO_CLIP}")


def make_demo_signal(seconds: float = 3.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """The demo clip's signal: voiced syllables (a harmonic series on a gliding pitch, shaped by
    formant-like resonances) separated by short noise bursts. Deterministic for a given seed."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t) + 25 * t  # gliding intonation, Hz
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    formants = ((700, 130), (1200, 90), (2600, 160))
    voiced = np.zeros(n)
    for k in range(1, 30):
        freq = k * pitch
        gain = sum(np.exp(-(((freq - f) / (bw * 2)) ** 2)) for f, bw in formants) / k**0.5
        voiced += gain * np.sin(k * phase) * (freq < sr / 2)
    syllable = np.clip(np.sin(2 * np.pi * 3.2 * t), 0, None) ** 0.6  # ~3 syllables per second
    noise = rng.standard_normal(n) * (1 - syllable) ** 4 * 0.15  # fricative-like gaps
    signal = voiced / np.abs(voiced).max() * syllable * 0.6 + noise
    fade = np.minimum(1, np.minimum(t, t[-1] - t) / 0.02)
    return (signal * fade / np.abs(signal).max() * 0.8).astype(np.float32)
