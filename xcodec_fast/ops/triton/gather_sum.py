"""RVQ decode (sum of each stage's codeword) and dequantize + project (sum of each stage's
projected codeword, plus bias): one gather-sum kernel (custom ops
``torch.ops.xcodec_fast_triton.rvq_decode`` / ``.dequantize_project``).

Per-config figures (registers, stack, spills, shared memory, tensor-core instructions) for sm_80
and sm_90 under Triton 3.6 and 3.9: bench/results/triton-sass-3.6.json / -3.9.json (all spill-free).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import register
from ._compile import kernel_config
from ._launch import frame_chunks

# out[b, :, t] = (bias) + sum_q table[q, codes[b, q, t], :]. A (BLOCK_C channels x BLOCK_T frames)
# output tile per program; the gathers read codeword rows (contiguous in C), the store is
# contiguous in T, the compiler converts between.


@triton.jit
def _gather_sum_kernel(
    codes_ptr, table_ptr, bias_ptr, out_ptr,
    NQ, K, C, T, n_tblocks,
    HAS_BIAS: tl.constexpr, ROUND_EACH: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // n_tblocks
    t = (pid % n_tblocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tmask = t < T
    cmask = c < C
    mask = cmask[:, None] & tmask[None, :]
    acc = tl.zeros([BLOCK_C, BLOCK_T], tl.float32)
    K64 = K.to(tl.int64)
    for q in range(NQ):
        code = tl.load(codes_ptr + (b * NQ + q).to(tl.int64) * T + t, mask=tmask, other=0)
        row = q * K64 + code
        v = tl.load(table_ptr + row[None, :] * C + c[:, None], mask=mask, other=0.0)
        acc += v.to(tl.float32)
        if ROUND_EACH:  # eager sums in the tensor dtype, rounding after every add
            acc = acc.to(out_ptr.dtype.element_ty).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)[:, None]
    off = b.to(tl.int64) * C * T + c[:, None] * T + t[None, :]
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=mask)


GATHER_BLOCK_C, GATHER_BLOCK_T, GATHER_WARPS = 64, 64, 8  # 4 warps spilled once on sm_80 (fp16)


def _gather_sum(codes: torch.Tensor, table: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype,
                round_each: bool) -> torch.Tensor:
    chunks = frame_chunks(codes.shape[2], table.shape[2])
    if len(chunks) > 1:
        return torch.cat([_gather_sum(codes[..., a:b], table, bias, out_dtype, round_each) for a, b in chunks], dim=2)
    codes = codes.contiguous()
    table = table.contiguous()
    batch, nq, frames = codes.shape
    channels = table.shape[2]
    out = torch.empty(batch, channels, frames, dtype=out_dtype, device=table.device)
    if out.numel() == 0:
        return out
    n_tblocks = triton.cdiv(frames, GATHER_BLOCK_T)
    grid = (batch * n_tblocks, triton.cdiv(channels, GATHER_BLOCK_C))
    _gather_sum_kernel[grid](
        codes, table, bias.contiguous() if bias is not None else table, out,
        nq, table.shape[1], channels, frames, n_tblocks,
        HAS_BIAS=bias is not None, ROUND_EACH=round_each and out_dtype != torch.float32,
        BLOCK_C=GATHER_BLOCK_C, BLOCK_T=GATHER_BLOCK_T, num_warps=GATHER_WARPS, enable_fp_fusion=False,
    )
    return out


def _decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    return _gather_sum(codes, codebooks, None, codebooks.dtype, round_each=True)


def _dequantize_project(codes, codebooks, proj_weight, proj_bias, projected_codebooks):
    if projected_codebooks is None:
        # (Q, K, D) @ (D, D_out) once per call; callers that decode often pass it precomputed.
        projected_codebooks = torch.matmul(codebooks.float(), proj_weight.float().t())
    return _gather_sum(codes, projected_codebooks, proj_bias, codebooks.dtype, round_each=False)


@torch.library.custom_op("xcodec_fast_triton::rvq_decode", mutates_args=())
def rvq_decode_op(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    return _decode(codes, codebooks)


@rvq_decode_op.register_fake
def _(codes, codebooks):
    return codebooks.new_empty(codes.shape[0], codebooks.shape[2], codes.shape[2])


@torch.library.custom_op("xcodec_fast_triton::dequantize_project", mutates_args=())
def dequantize_project_op(codes: torch.Tensor, codebooks: torch.Tensor, proj_weight: torch.Tensor,
                          proj_bias: torch.Tensor | None, projected_codebooks: torch.Tensor | None) -> torch.Tensor:
    return _dequantize_project(codes, codebooks, proj_weight, proj_bias, projected_codebooks)


@dequantize_project_op.register_fake
def _(codes, codebooks, proj_weight, proj_bias, projected_codebooks):
    return codebooks.new_empty(codes.shape[0], proj_weight.shape[0], codes.shape[2])


@register("rvq_decode", "triton")
def rvq_decode(codes, codebooks):
    return rvq_decode_op(codes, codebooks)


@register("dequantize_project", "triton")
def dequantize_project(codes, codebooks, proj_weight, proj_bias, projected_codebooks=None):
    return dequantize_project_op(codes, codebooks, proj_weight, proj_bias, projected_codebooks)


_HALF = (torch.float16, torch.bfloat16)
_DTYPES = (torch.float32,) + _HALF


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


COMPILE_CONFIGS = [
    kernel_config(
        f"gather_sum[{_name(table)}->{_name(out)}{',bias' if has_bias else ''}{',round_each' if round_each else ''}]",
        _gather_sum_kernel,
        {"codes_ptr": torch.int64, "table_ptr": table, "bias_ptr": out if has_bias else table, "out_ptr": out,
         "NQ": "i32", "K": "i32", "C": "i32", "T": "i32", "n_tblocks": "i32"},
        {"HAS_BIAS": has_bias, "ROUND_EACH": round_each, "BLOCK_C": GATHER_BLOCK_C, "BLOCK_T": GATHER_BLOCK_T},
        num_warps=GATHER_WARPS,
        multiple_of_16=("K", "C"),  # K = 1024, C = 1024 (decode) or 256 (projected) in the real model
    )
    # rvq_decode: table = codebooks, rounding like eager in half; dequantize_project: table =
    # projected codebooks in fp32 (the launcher's fallback) or as the caller gives them, bias or not
    for has_bias, round_each, table, out in sorted(
        {(False, dt != torch.float32, dt, dt) for dt in _DTYPES}
        | {(bias, False, table, dt) for dt in _DTYPES for table in {torch.float32, dt} for bias in (False, True)},
        key=str,
    )
]
