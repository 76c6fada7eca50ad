"""Deterministic random weights, for tests, benchmarks and the offline fallback model."""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor, nn


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic random weights at scales that keep activations O(1): every conv/linear weight
    ~ N(0, 1/fan_in) (residual branches' last conv 10x smaller), small biases, Snake α ~ U(0.5, 1.5),
    norms ≈ identity, codebooks ~ N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)

    def normal(shape, std: float) -> Tensor:
        return torch.randn(shape, generator=generator) * std

    done: set[int] = set()
    for name, module in sorted(model.named_modules(), key=lambda item: item[0]):
        params = dict(module.named_parameters(recurse=False))
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)) and "weight" in params:
            weight = module.weight
            if isinstance(module, nn.ConvTranspose1d):
                fan_in = weight.shape[0] * weight.shape[2] / module.stride[0]
            else:
                fan_in = weight[0].numel()
            # Residual branches start small (as in trained codecs), else variance doubles per unit.
            gain = 0.1 if re.search(r"res_units?\.?\d+\.conv2$", name) else 1.0
            weight.copy_(normal(weight.shape, gain / math.sqrt(fan_in)))
            done.add(id(weight))
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and "weight" in params:
            module.weight.copy_(1 + normal(module.weight.shape, 0.1))
            done.add(id(module.weight))
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if id(param) in done:
            continue
        if name.endswith("alpha"):
            param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
        elif param.dim() == 1 or name.endswith("bias"):
            param.copy_(normal(param.shape, 0.02))
        else:
            param.copy_(normal(param.shape, 1.0 / math.sqrt(param[0].numel())))
    for name, buffer in sorted(model.named_buffers(), key=lambda item: item[0]):
        if name.endswith("codebook.embed"):
            buffer.copy_(normal(buffer.shape, 1.0))
    model.refresh_derived()
    return model
