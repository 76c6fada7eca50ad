"""Packing items into length-bucketed batches under a sample budget, and the long-file policy.

Long-file policy: audio longer than the window (``--max-seconds``, rounded down to a multiple of
the hop, 320 samples) is encoded alone by ``XcodecModel.encode(chunk_frames=window / 320,
context_frames=...)``: its acoustic codes equal a whole-file encode exactly, and its semantic
attention sees ``context_frames`` frames beyond each window's edges (the run's metadata records
both). Files up to the window length are encoded whole, in padded batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Segment:
    """One item's audio (``index`` 0: items are never cut; long ones are encoded in windows)."""

    key: int
    index: int
    audio: np.ndarray

    @property
    def length(self) -> int:
        return len(self.audio)


def window_samples(max_seconds: float, sample_rate: int, hop_length: int) -> int:
    samples = int(max_seconds * sample_rate) // hop_length * hop_length
    if samples < hop_length:
        raise ValueError(f"--max-seconds {max_seconds} is shorter than one frame ({hop_length / sample_rate} s)")
    return samples


def window_encodes(num_frames: int, window_frames: int) -> int:
    """Windows an item of ``num_frames`` code frames is encoded in."""
    return max(1, -(-num_frames // window_frames))


def padded_length(length: int, hop_length: int) -> int:
    return -(-length // hop_length) * hop_length


def pack_batches(segments: list[Segment], budget: int, hop_length: int, max_items: int | None = None) -> list[list[Segment]]:
    """Group segments into batches whose padded size (items x longest, rounded up to the hop) stays
    within ``budget`` samples. Longest first, so each batch holds similar lengths (little padding).
    Ties break by (key, index): the batches depend only on the segments, not on arrival order."""
    order = sorted(segments, key=lambda s: (-s.length, s.key, s.index))
    batches: list[list[Segment]] = []
    current: list[Segment] = []
    current_len = 0
    for seg in order:
        length = padded_length(seg.length, hop_length)
        if current and ((len(current) + 1) * current_len > budget or (max_items and len(current) >= max_items)):
            batches.append(current)
            current = []
        if not current:
            current_len = length  # sorted longest first: the first segment sets the padded length
        current.append(seg)
    if current:
        batches.append(current)
    return batches


def collate(segments: list[Segment], hop_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1, N) zero-padded float32 audio and (B, N) int64 padding mask, N a multiple of the hop."""
    n = padded_length(max(s.length for s in segments), hop_length)
    audio = np.zeros((len(segments), 1, n), dtype=np.float32)
    mask = np.zeros((len(segments), n), dtype=np.int64)
    for b, seg in enumerate(segments):
        audio[b, 0, : seg.length] = seg.audio
        mask[b, : seg.length] = 1
    return audio, mask
