"""Packing items into length-bucketed batches under a sample budget, and the long-file policy.

Long-file policy: audio longer than the window (``--max-seconds``, rounded down to a multiple of
the hop, 320 samples) is encoded alone by ``XcodecModel.encode(chunk_frames=window / 320,
context_frames=...)``: its acoustic codes equal a whole-file encode exactly, and its semantic
attention sees ``context_frames`` frames beyond each window's edges (the run's metadata records
both). Files up to the window length are encoded whole, in padded batches.

Bucketed batches (``--cuda-graphs``): every batch has one of a few fixed shapes, so one CUDA graph
per shape serves the whole corpus. A segment's padded length is rounded up to the next bucket
length (a geometric grid, at most ``BUCKET_STEP`` - 1 longer, capped at the window), and each
bucket's batches hold a fixed item count (the budget over the bucket length); a partial batch waits
for the next flush (``BatchEncoder.pack_ready``), and at the end of the run it is filled with
silent items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Neighbouring bucket lengths differ by this factor: at most 19% padding, about 9% on average.
BUCKET_STEP = 2 ** 0.25


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


def bucket_length(length: int, hop_length: int, window: int | None = None) -> int:
    """Samples of the bucket a segment of ``length`` samples is padded to: the smallest
    ``ceil(BUCKET_STEP ** k)`` frames holding it, capped at ``window`` (a multiple of the hop)."""
    frames = max(1, -(-length // hop_length))  # an empty segment (reported as too short) packs too
    k = max(0, math.floor(math.log(frames, BUCKET_STEP)) - 1)  # a step below, then up: float-safe
    while math.ceil(BUCKET_STEP ** k) < frames:
        k += 1
    samples = math.ceil(BUCKET_STEP ** k) * hop_length
    return min(samples, window) if window is not None and length <= window else samples


def bucket_batch_size(num_samples: int, budget: int, max_items: int | None = None) -> int:
    """Items per batch of one bucket: as many as the budget holds (at least one)."""
    items = max(1, budget // num_samples)
    return min(items, max_items) if max_items else items


def pack_buckets(segments: list[Segment], budget: int, hop_length: int, window: int | None = None,
                 max_items: int | None = None) -> list[list[Segment]]:
    """Batches of segments from one bucket each, ``bucket_batch_size`` items (the last of a bucket
    may hold fewer). Longest bucket first; within one, longest first with ties by (key, index)."""
    buckets: dict[int, list[Segment]] = {}
    for seg in sorted(segments, key=lambda s: (-s.length, s.key, s.index)):
        buckets.setdefault(bucket_length(seg.length, hop_length, window), []).append(seg)
    batches = []
    for samples in sorted(buckets, reverse=True):
        members, size = buckets[samples], bucket_batch_size(samples, budget, max_items)
        batches += [members[i : i + size] for i in range(0, len(members), size)]
    return batches


def collate(segments: list[Segment], hop_length: int, num_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(B, 1, N) zero-padded float32 audio and (B, N) int64 padding mask, N a multiple of the hop
    (``num_samples`` when given: a bucket's length)."""
    n = padded_length(max(s.length for s in segments), hop_length) if num_samples is None else num_samples
    if n < max(s.length for s in segments):
        raise ValueError(f"num_samples {n} is shorter than the longest segment ({max(s.length for s in segments)})")
    audio = np.zeros((len(segments), 1, n), dtype=np.float32)
    mask = np.zeros((len(segments), n), dtype=np.int64)
    for b, seg in enumerate(segments):
        audio[b, 0, : seg.length] = seg.audio
        mask[b, : seg.length] = 1
    return audio, mask
