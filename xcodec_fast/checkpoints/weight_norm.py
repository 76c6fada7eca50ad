"""Weight norm folded into a plain weight at load, and unfolded where transformers keeps it."""

from __future__ import annotations

import torch
from torch import Tensor

from .files import CheckpointError

# (magnitude, direction) names of a weight-normed tensor, old and new torch spelling.
WEIGHT_NORM_SPELLINGS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def norm_dim(magnitude_shape: torch.Size) -> int:
    """The dim weight_norm kept: the one axis where the magnitude is not 1. An all-singleton
    magnitude (a conv with one output channel, as the decoder's last) is dim 0, as weight_norm's
    default that X-Codec and transformers use: the same norm as over the whole tensor, but torch
    rounds the two differently. -1 (whole-tensor norm) only for a 0-dim magnitude."""
    dims = [d for d, size in enumerate(magnitude_shape) if size != 1]
    if len(dims) > 1:
        raise CheckpointError(f"weight-norm magnitude of shape {tuple(magnitude_shape)} has more than one axis")
    if dims:
        return dims[0]
    return 0 if len(magnitude_shape) else -1


def fold_weight_norm(magnitude: Tensor, direction: Tensor) -> Tensor:
    # torch._weight_norm is what both torch weight-norm implementations compute: identical numbers.
    wide = torch.float32 if magnitude.dtype in (torch.float16, torch.bfloat16) else magnitude.dtype
    return torch._weight_norm(direction.to(wide), magnitude.to(wide), norm_dim(magnitude.shape)).to(direction.dtype)


def unfold_weight_norm(weight: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """A plain weight as (magnitude, direction) with magnitude = ‖weight‖ over all axes but ``dim``."""
    axes = [d for d in range(weight.dim()) if d != dim]
    return weight.norm(dim=axes, keepdim=True), weight
