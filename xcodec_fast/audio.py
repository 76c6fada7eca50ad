"""Audio files: load (any format soundfile reads, resampled and downmixed in blocks), write,
resample, downmix, and the bundled demo clip. The feature extractor: ``xcodec_fast.feature_extraction``.
"""

from __future__ import annotations

import io
import os
import struct
from importlib import resources
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from .errors import short_error

AudioSource = Union[str, os.PathLike, bytes, BinaryIO]


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, truncated, non-finite or too long."""


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
