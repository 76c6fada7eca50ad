"""Weights in the layout a kernel reads, packed once per weight tensor instead of on every call
(the Triton and native backends both use it).

The packed copy hangs on the weight tensor itself, keyed by what makes it stale: the storage
(``module.to()`` swaps ``param.data`` in place of the same Parameter), dtype, device, shape and
the in-place version counter (``load_state_dict`` copies into the same storage). A new weight
tensor starts with no packed copy, and the old copy goes with the old tensor. Inference tensors
(made under ``torch.inference_mode``) keep no version counter, so they are packed afresh each call.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

_ATTR = "_xcodec_fast_packed"


class PackStats:
    """How often weights were packed and how long it took (the benchmark reports it)."""

    def __init__(self) -> None:
        self.packs = 0
        self.seconds = 0.0

    def reset(self) -> None:
        self.packs, self.seconds = 0, 0.0


STATS = PackStats()


def packed(weight: torch.Tensor, layout: str, pack: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``pack(weight)``, computed once per (weight storage, dtype, device, shape, version, layout)."""
    # inference tensors (made under torch.inference_mode) have no version counter: an in-place
    # change could not be told from the packed copy, so they are packed on every call
    if torch.compiler.is_compiling() or weight.requires_grad and torch.is_grad_enabled() or weight.is_inference():
        return pack(weight)
    key = (weight.data_ptr(), weight.dtype, weight.device, tuple(weight.shape), weight.stride(), weight._version)
    cache = getattr(weight, _ATTR, None)
    if cache is None:
        cache = {}
        try:
            setattr(weight, _ATTR, cache)
        except (AttributeError, RuntimeError):  # tensor subclasses that refuse attributes
            return pack(weight)
    hit = cache.get(layout)
    if hit is not None and hit[0] == key:
        return hit[1]
    start = time.perf_counter()
    with torch.no_grad():
        result = pack(weight)
    STATS.packs += 1
    STATS.seconds += time.perf_counter() - start
    cache[layout] = (key, result)
    return result
