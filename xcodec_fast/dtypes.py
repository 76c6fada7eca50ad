"""The one parser of dtype names: the model, the command line and the benchmark read dtypes here."""

from __future__ import annotations

import torch

# The dtypes the model and its kernels run in, by the names users and config files write.
BY_NAME = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ALIASES = {"float": torch.float32, "half": torch.float16}
SUPPORTED = tuple(BY_NAME.values())


def parse_dtype(value, where: str = "dtype") -> torch.dtype:
    """A torch.dtype from a dtype or a name ('float32', 'torch.bfloat16', 'half'); ValueError naming
    ``where`` for anything the model cannot run in."""
    if isinstance(value, torch.dtype):
        dtype = value
    elif isinstance(value, str) and value.removeprefix("torch.") in {**BY_NAME, **ALIASES}:
        dtype = {**BY_NAME, **ALIASES}[value.removeprefix("torch.")]
    else:
        raise ValueError(f"{where}: unsupported dtype {value!r}; use float32, float16, bfloat16 or 'auto'")
    if dtype not in SUPPORTED:
        raise ValueError(f"{where}: unsupported dtype {dtype}; use float32, float16 or bfloat16")
    return dtype
