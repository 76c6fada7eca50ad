"""linear on the Triton backend: torch's linear, i.e. cuBLAS (or its Lt epilogue with the bias) on
a GPU. A plain GEMM with a bias is what cuBLAS is tuned for; a Triton GEMM would only match it.
Registered so that the semantic model's layers count as this backend's, not as a fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import register


@register("linear", "triton")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)
