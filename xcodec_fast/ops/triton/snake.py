"""Snake activation ``x + sin(αx)² / (α + 1e-9)`` and residual-add + snake, one memory pass each.

Computes in fp32 in eager's op order (reciprocal rounded to nearest, no FMA contraction) with the
backend's shared Snake (``_math.snake``: polynomial sin², MUFU.SIN for half inputs on a GPU), so
fp32 results are within a few ulp of ops.eager; half inputs are rounded once on store.

Per-config figures (registers, stack, spills, shared memory, tensor-core instructions) for sm_80
and sm_90 under Triton 3.6 and 3.9: bench/results/triton-sass-3.6.json / -3.9.json (all spill-free).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import register
from . import _math
from ._compile import kernel_config

MAX_GRID_Y = 65535  # CUDA's limit on grid axis 1


@triton.jit
def _snake_kernel(
    x_ptr, h_ptr, alpha_ptr, y_ptr, out_ptr,
    C, T, n_tblocks,
    HAS_H: tl.constexpr, BLOCK_T: tl.constexpr, FAST_SIN: tl.constexpr,
):
    # axis 0: one (batch, channel) row (unbounded); axis 1: T blocks, strided so that very long
    # rows fit in the 65535 limit of grid axis 1.
    row = tl.program_id(0)
    a = tl.load(alpha_ptr + row % C).to(tl.float32)
    inv = _math.inverse_alpha(a)
    base = row.to(tl.int64) * T
    for tb in range(tl.program_id(1), n_tblocks, tl.num_programs(1)):
        offs = tb * BLOCK_T + tl.arange(0, BLOCK_T)
        mask = offs < T
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0)
        if HAS_H:
            h = tl.load(h_ptr + base + offs, mask=mask, other=0.0)
            # eager rounds y = x + h to the tensor dtype before the snake: so do we.
            yv = (x.to(tl.float32) + h.to(tl.float32)).to(y_ptr.dtype.element_ty)
            tl.store(y_ptr + base + offs, yv, mask=mask)
            xf = yv.to(tl.float32)
        else:
            xf = x.to(tl.float32)
        out = _math.snake(xf, a, inv, FAST_SIN)
        tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


BLOCKS = (256, 1024)


def _block(frames: int) -> tuple[int, int]:
    """(BLOCK_T, num_warps): a small block for the short rows near the bottleneck so that few
    lanes idle, a large one elsewhere. 4 elements per thread."""
    block = BLOCKS[0] if frames <= BLOCKS[0] else BLOCKS[1]
    return block, block // 128


def _launch(x: torch.Tensor, h: torch.Tensor | None, alpha: torch.Tensor):
    x = x.contiguous()
    h = h.contiguous() if h is not None else None
    alpha = alpha.reshape(-1).contiguous()
    batch, channels, frames = x.shape
    out = torch.empty_like(x)
    y = torch.empty_like(x) if h is not None else None
    if out.numel() == 0:
        return y, out
    block, warps = _block(frames)
    n_tblocks = triton.cdiv(frames, block)
    grid = (batch * channels, min(n_tblocks, MAX_GRID_Y))
    _snake_kernel[grid](
        x, h if h is not None else x, alpha, y if y is not None else out, out,
        channels, frames, n_tblocks,
        HAS_H=h is not None, BLOCK_T=block, FAST_SIN=_math.fast_sin(x), num_warps=warps, enable_fp_fusion=False,
    )
    return y, out


@torch.library.custom_op("xcodec_fast_triton::snake", mutates_args=())
def snake_op(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return _launch(x, None, alpha)[1]


@snake_op.register_fake
def _(x, alpha):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("xcodec_fast_triton::add_snake", mutates_args=())
def add_snake_op(x: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(x, h, alpha)


@add_snake_op.register_fake
def _(x, h, alpha):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


@register("snake", "triton")
def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return snake_op(x, alpha)


@register("add_snake", "triton")
def add_snake(x: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return add_snake_op(x, h, alpha)


COMPILE_CONFIGS = [
    kernel_config(
        f"{'add_snake' if has_h else 'snake'}[{str(dtype)[6:]},BLOCK_T={block}]",
        _snake_kernel,
        {"x_ptr": dtype, "h_ptr": dtype, "alpha_ptr": dtype, "y_ptr": dtype, "out_ptr": dtype,
         "C": "i32", "T": "i32", "n_tblocks": "i32"},
        {"HAS_H": has_h, "BLOCK_T": block, "FAST_SIN": dtype != torch.float32},
        num_warps=_block(block)[1],
    )
    for dtype in (torch.float32, torch.float16, torch.bfloat16)
    for has_h in (False, True)
    for block in BLOCKS
]
