"""The layouts the Triton conv kernels read their weights in (packed once: ``ops.packing``)."""

from __future__ import annotations

import torch

from ..packing import STATS, packed  # noqa: F401  (STATS: the counter, re-exported)


def taps_first(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, K) -> (K, C_out, C_in): each tap's (C_out, C_in) tile is a dense row-major load."""
    return packed(weight, "taps_first", lambda w: w.permute(2, 0, 1).contiguous())


def matrix(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 1) -> contiguous (C_out, C_in)."""
    return packed(weight, "matrix", lambda w: w.reshape(w.shape[0], -1).contiguous())
