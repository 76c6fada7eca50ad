"""Snake activation ``x + sin(αx)² / (α + 1e-9)`` and residual-add + snake, one memory pass each.

Computes in fp32 in eager's op order (reciprocal rounded to nearest, no FMA contraction) so fp32
results match ops.eager to the last bit or an ulp; half inputs are rounded once on store.

SASS, measured with ``python -m xcodec_fast.ops.triton._compile --filter snake`` on 2026-11-25
(Triton 3.9, the launch configs below; same for fp32 / fp16 / bf16): no spills, no stack, no shared
memory, sin is libdevice's precise sinf (no MUFU.SIN).
    BLOCK_T=256, 2 warps:  snake 29 regs (sm_90) / 32 (sm_80); add_snake 32 / 32
    BLOCK_T=1024, 8 warps: snake 29 regs (sm_90) / 31 (sm_80); add_snake 32 / 32
(8 elements per thread instead of 4 cost 40-60 registers and spilled once on sm_90.)
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import register
from ._compile import kernel_config

MAX_GRID_Y = 65535  # CUDA's limit on grid axis 1


@triton.jit
def _snake_kernel(
    x_ptr, h_ptr, alpha_ptr, y_ptr, out_ptr,
    C, T, n_tblocks,
    HAS_H: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # axis 0: one (batch, channel) row (unbounded); axis 1: T blocks, strided so that very long
    # rows fit in the 65535 limit of grid axis 1.
    row = tl.program_id(0)
    a = tl.load(alpha_ptr + row % C).to(tl.float32)
    # eager: (α + 1e-9).reciprocal(), correctly rounded; plain "/" would be approximate on GPU.
    inv = tl.math.div_rn(1.0, a + 1e-9)
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
        s = tl.sin(a * xf)
        out = xf + inv * (s * s)
        tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


BLOCKS = (256, 1024)


def _block(frames: int) -> tuple[int, int]:
    """(BLOCK_T, num_warps): a small block for the short rows near the bottleneck so that few
    lanes idle, a large one elsewhere. 4 elements per thread: 8 per thread costs ~40-60 registers
    (sinf's slow path) and spilled once on sm_90."""
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
        HAS_H=h is not None, BLOCK_T=block, num_warps=warps, enable_fp_fusion=False,
    )
    return y, out


@torch.library.custom_op("xcodec_fast::triton_snake", mutates_args=())
def snake_op(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return _launch(x, None, alpha)[1]


@snake_op.register_fake
def _(x, alpha):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("xcodec_fast::triton_add_snake", mutates_args=())
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
        {"HAS_H": has_h, "BLOCK_T": block},
        num_warps=_block(block)[1],
    )
    for dtype in (torch.float32, torch.float16, torch.bfloat16)
    for has_h in (False, True)
    for block in BLOCKS
]
