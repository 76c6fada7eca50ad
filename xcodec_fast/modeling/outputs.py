"""Model outputs that behave like transformers' ``ModelOutput``: attribute, index and key access.

``out.audio_codes``, ``out[0]`` and ``out["audio_codes"]`` all work; fields left at None are
skipped by indexing and ``to_tuple()``, as in transformers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


class _TupleLikeOutput:
    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{type(self).__name__} has no field {key!r}; it has {self.keys()}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __iter__(self):
        # Iterating yields the keys, like a dict (and like transformers' ModelOutput).
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class XcodecOutput(_TupleLikeOutput):
    """``forward`` result: codes (B, n_q, T) int64 and audio (B, 1, N) trimmed to the input length."""

    audio_codes: torch.Tensor | None = None
    audio_values: torch.Tensor | None = None


@dataclass
class XcodecEncoderOutput(_TupleLikeOutput):
    """``encode`` result: codes (B, n_q, T) int64.

    ``audio_code_lengths`` (B,) int64 is set when ``encode`` got a ``padding_mask``: item b's
    codes are ``audio_codes[b, :, :audio_code_lengths[b]]``; frames after that are 0.
    """

    audio_codes: torch.Tensor | None = None
    audio_code_lengths: torch.Tensor | None = None


@dataclass
class XcodecDecoderOutput(_TupleLikeOutput):
    """``decode`` result: audio (B, 1, 320 * T)."""

    audio_values: torch.Tensor | None = None
