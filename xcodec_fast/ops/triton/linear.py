"""linear and conv1d on the Triton backend: torch's, i.e. cuBLAS (or its Lt epilogue with the bias)
and cuDNN on a GPU. A plain GEMM with a bias, and the semantic feature encoder's plain convs (no
Snake to fuse), are what those libraries are tuned for; a Triton kernel would only match them.
Registered so that the semantic model's layers count as this backend's, not as a fallback."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import register


@register("linear", "triton")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)


@register("conv1d", "triton")
def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int) -> torch.Tensor:
    return F.conv1d(x, weight, bias, stride=stride, padding=padding)
