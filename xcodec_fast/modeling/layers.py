"""Layers whose math goes through the dispatch point, so that a backend can run it faster."""

from __future__ import annotations

from torch import Tensor, nn

from .. import ops


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) computed by :func:`ops.linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.linear(x, self.weight, self.bias)
