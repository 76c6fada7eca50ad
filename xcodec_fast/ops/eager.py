"""The torch reference of every op: the oracle that every other backend is tested against.

Each function computes exactly what transformers' XcodecModel computes, in the same order of
floating-point operations, so that the eager model reproduces it bit for bit.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .backend import register


def _per_channel(alpha: torch.Tensor) -> torch.Tensor:
    return alpha.reshape(1, -1, 1)


@register("snake", "eager")
def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    alpha = _per_channel(alpha)
    return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


@register("add_snake", "eager")
def add_snake(x: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = x + h
    return y, snake(y, alpha)


@register("residual_unit", "eager")
def residual_unit(
    x: torch.Tensor,
    alpha1: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor,
    dilation: int,
    alpha2: torch.Tensor,
    weight2: torch.Tensor,
    bias2: torch.Tensor,
) -> torch.Tensor:
    padding = (weight1.shape[-1] - 1) * dilation // 2
    h = F.conv1d(snake(x, alpha1), weight1, bias1, padding=padding, dilation=dilation)
    h = F.conv1d(snake(h, alpha2), weight2, bias2)
    trim = (x.shape[-1] - h.shape[-1]) // 2
    if trim > 0:
        x = x[..., trim:-trim]
    return x + h


@register("snake_conv1d", "eager")
def snake_conv1d(
    x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    return F.conv1d(snake(x, alpha), weight, bias, stride=stride, padding=padding)


@register("conv1d", "eager")
def conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int) -> torch.Tensor:
    return F.conv1d(x, weight, bias, stride=stride, padding=padding)


@register("conv1d_time_major", "eager")
def conv1d_time_major(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                      padding: int = 0, groups: int = 1) -> torch.Tensor:
    return F.conv1d(x.transpose(1, 2), weight, bias, stride=stride, padding=padding, groups=groups).transpose(1, 2)


@register("snake_conv_transpose1d", "eager")
def snake_conv_transpose1d(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           stride: int, padding: int, output_padding: int) -> torch.Tensor:
    return F.conv_transpose1d(snake(x, alpha), weight, bias, stride=stride, padding=padding, output_padding=output_padding)


@register("rvq_encode", "eager")
def rvq_encode(x: torch.Tensor, codebooks: torch.Tensor, codebook_sq_norms: torch.Tensor, num_quantizers: int) -> torch.Tensor:
    """x (B, D, T), codebooks (Q, K, D), codebook_sq_norms (Q, K) -> codes (B, num_quantizers, T) int64.

    Scores and tie-breaking are transformers': argmax of -(|x|² - 2·x·e + |e|²), first index wins.
    ``codebook_sq_norms`` is accepted for a uniform signature; the reference recomputes |e|² as
    transformers does so that its rounding is identical.
    """
    return nearest_codes(x, codebooks, num_quantizers,
                         products=lambda flat, q: flat @ codebooks[q].t(),
                         sq_norms=lambda q: codebooks[q].t().pow(2).sum(0, keepdim=True))


def nearest_codes(x: torch.Tensor, codebooks: torch.Tensor, num_quantizers: int,
                  products: Callable[[torch.Tensor, int], torch.Tensor],
                  sq_norms: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """The residual VQ loop with the reference's scores and tie-breaking, taking the products
    ``products(flat, q)`` = flat (B·T, D) @ codebooks[q]ᵀ and ``sq_norms(q)`` = |e|² (1, K) from
    the caller, so that a backend can compute them faster and keep everything else."""
    batch, dim, frames = x.shape
    residual = x
    codes = []
    for q in range(num_quantizers):
        flat = residual.permute(0, 2, 1).reshape(-1, dim)
        scaled = flat.pow(2).sum(1, keepdim=True)
        dist = -(scaled - 2 * products(flat, q) + sq_norms(q))
        indices = dist.max(dim=-1).indices.view(batch, frames)
        quantized = F.embedding(indices, codebooks[q]).permute(0, 2, 1)
        residual = residual - quantized
        codes.append(indices)
    return torch.stack(codes, dim=1)


@register("rvq_decode", "eager")
def rvq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """codes (B, Q, T) -> Σ_q codebooks[q][codes[:, q]] as (B, D, T), summed in quantizer order."""
    total = torch.full((), 0.0, device=codes.device)
    for q in range(codes.shape[1]):
        total = total + F.embedding(codes[:, q], codebooks[q]).permute(0, 2, 1)
    return total


@register("dequantize_project", "eager")
def dequantize_project(
    codes: torch.Tensor,
    codebooks: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    projected_codebooks: torch.Tensor | None = None,
) -> torch.Tensor:
    """codes (B, Q, T) -> Linear(proj_weight, proj_bias)(Σ_q codeword) as (B, D_out, T).

    The reference sums the codewords first and then projects, as transformers does; fast backends
    may gather from ``projected_codebooks`` (Q, K, D_out) = codebooks @ proj_weightᵀ instead.
    """
    quantized = rvq_decode(codes, codebooks)
    return F.linear(quantized.transpose(1, 2), proj_weight, proj_bias).transpose(1, 2)


@register("linear", "eager")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)
