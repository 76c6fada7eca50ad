"""Residual vector quantization: encode (nearest codeword per stage, fused residual update),
decode (gather-sum of codewords) and dequantize + project (gather-sum of projected codewords).

SASS, measured with ``python -m xcodec_fast.ops.triton._compile --filter rvq`` (and gather_sum)
on 2026-11-25, Triton 3.9, at the launch configs of this file (D, K, padded T multiples of 16 as
in the real model). No config spills (no LDL/STL, stack 0).
    rvq_encode fp32 (ieee FMA dot, BLOCK_K=64, BLOCK_D=16, 4 warps), regs sm_90 / sm_80:
        BLOCK_T=16: 72 / 96, BLOCK_T=32: 141 / 128, BLOCK_T=64: 192 / 255; no tensor cores (exact fp32)
    rvq_encode fp16 / bf16 (BLOCK_K=128, BLOCK_D=64, 8 warps), regs sm_90 / sm_80, smem sm_90:
        BLOCK_T=16: 71 / 126, 51 KB; BLOCK_T=32: 100 / 128, 53 KB; BLOCK_T=64: 147 / 176, 57 KB
        tensor cores: 4 HGMMA (wgmma) in the D loop on sm_90, 8-32 HMMA (mma.sync) on sm_80
    gather_sum (decode / dequantize_project, 64 channels x 64 frames, 8 warps): 38-56 regs
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..backend import register
from ._compile import kernel_config

# ---------------------------------------------------------------------------------------------
# rvq_encode
#
# One launch for all stages. Each program owns BLOCK_T frames of one batch item and walks the
# stages: scores (BLOCK_K codewords x BLOCK_T frames) = E_tile @ R_tile accumulated over D in
# BLOCK_D chunks, so frames x K is never materialised; a running (max, index) per frame crosses
# the K tiles. Then R -= E[idx] is written back in place to the residual buffer (input dtype,
# like eager), whose columns only this program touches. One launch instead of Q saves Q-1
# launches and their tails; the price is a CTA barrier on each side of the residual update
# (other threads of the CTA read what this thread wrote): negligible next to K*D*BLOCK_T FMAs.
# The codebook of a stage (K*D, 4 MB fp32 at full size) stays L2-resident across programs.
# ---------------------------------------------------------------------------------------------


@triton.jit
def _rvq_encode_kernel(
    res_ptr, cb_ptr, norms_ptr, codes_ptr,
    D, T, T_pad, K, NQ, n_tblocks,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // n_tblocks
    t = (pid % n_tblocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = t < T
    base = b.to(tl.int64) * D * T_pad
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    stage_size = K.to(tl.int64) * D
    for q in range(NQ):
        cb = cb_ptr + q * stage_size
        best = tl.full([BLOCK_T], float("-inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_T], tl.int32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            kmask = k < K
            acc = tl.zeros([BLOCK_K, BLOCK_T], tl.float32)
            for d0 in range(0, D, BLOCK_D):
                d = d0 + offs_d
                dmask = d < D
                e = tl.load(cb + k[:, None] * D + d[None, :], mask=kmask[:, None] & dmask[None, :], other=0.0)
                r = tl.load(res_ptr + base + d[:, None] * T_pad + t[None, :],
                            mask=dmask[:, None] & tmask[None, :], other=0.0)
                # fp32: exact-fp32 FMAs (no TF32); fp16/bf16: tensor cores, fp32 accumulate.
                acc = tl.dot(e, r, acc, input_precision="ieee")
            norm = tl.load(norms_ptr + q * K + k, mask=kmask, other=0.0).to(tl.float32)
            # argmax_k -|r - e_k|^2 = argmax_k 2 r.e_k - |e_k|^2  (|r|^2 is the same for every k)
            score = tl.where(kmask[:, None], 2.0 * acc - norm[:, None], float("-inf"))
            tile_best = tl.max(score, axis=0)
            tile_idx = tl.argmax(score, axis=0, tie_break_left=True)  # first maximal index in the tile
            better = tile_best > best  # strict: an equal score in a later tile keeps the earlier index
            best = tl.where(better, tile_best, best)
            best_idx = tl.where(better, tile_idx + k0, best_idx)
        tl.store(codes_ptr + (b * NQ + q).to(tl.int64) * T + t, best_idx.to(tl.int64), mask=tmask)
        if q + 1 < NQ:
            tl.debug_barrier()  # every thread is done reading the residual before anyone overwrites it
            for d0 in range(0, D, BLOCK_D):
                d = d0 + offs_d
                m = (d < D)[:, None] & tmask[None, :]
                off = base + d[:, None] * T_pad + t[None, :]
                r = tl.load(res_ptr + off, mask=m, other=0.0)
                e = tl.load(cb + best_idx[None, :].to(tl.int64) * D + d[:, None], mask=m, other=0.0)
                # eager: residual - quantized in the tensor dtype, one rounding
                tl.store(res_ptr + off, (r.to(tl.float32) - e.to(tl.float32)).to(res_ptr.dtype.element_ty), mask=m)
            tl.debug_barrier()  # the new residual is visible to every thread of the CTA


# dtype -> (BLOCK_T choices, BLOCK_K, BLOCK_D, num_warps). fp32 runs the ieee FMA dot, whose
# operands sit in registers: small D chunks. Half dtypes feed tensor cores (mma.sync on sm_80,
# wgmma on sm_90, M = BLOCK_K = 128) in 64-deep steps; 8 warps: with 4, BLOCK_T = 32 spilled on
# sm_80 and BLOCK_T = 64 used 210+ registers.
ENCODE_TILES = {
    torch.float32: ((16, 32, 64), 64, 16, 4),
    torch.float16: ((16, 32, 64), 128, 64, 8),
    torch.bfloat16: ((16, 32, 64), 128, 64, 8),
}
PAD_T = 16  # the residual scratch has rows of T rounded up to this: aligned, vectorized loads


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _encode_block_t(device: torch.device, choices: tuple, programs) -> int:
    """Largest frame tile that still gives every SM a program (each program streams the whole
    codebook per stage, so bigger tiles mean less L2 traffic, smaller ones more parallelism).
    ``programs(bt)`` is the number of programs for a tile of bt frames."""
    if device.type != "cuda":  # interpreter: fewer, bigger programs run faster
        return choices[-1]
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    for bt in reversed(choices):
        if programs(bt) >= sms:
            return bt
    return choices[0]


MAX_ROW_OFFSET = 2**31  # the kernels index one batch item's (channels, frames) plane in int32


def _frame_chunks(frames: int, channels: int) -> list[tuple[int, int]]:
    """Frames are independent in every op here: split inputs whose channels x frames plane would
    overflow int32 offsets (a batch item of ~11 h of audio at D = 1024) rather than pay 64-bit
    index math in every kernel."""
    step = max(PAD_T, (MAX_ROW_OFFSET // max(channels, 1) - PAD_T) // PAD_T * PAD_T)
    return [(s, min(s + step, frames)) for s in range(0, frames, step)] or [(0, 0)]


def _encode(x: torch.Tensor, codebooks: torch.Tensor, norms: torch.Tensor, num_quantizers: int) -> torch.Tensor:
    chunks = _frame_chunks(x.shape[2], x.shape[1])
    if len(chunks) > 1:
        return torch.cat([_encode(x[..., a:b], codebooks, norms, num_quantizers) for a, b in chunks], dim=2)
    codebooks = codebooks.contiguous()
    norms = norms.to(torch.float32).contiguous()
    batch, dim, frames = x.shape
    codes = torch.empty(batch, num_quantizers, frames, dtype=torch.long, device=x.device)
    if codes.numel() == 0:
        return codes
    # The kernel updates the residual in place: start it as a padded copy of x (also makes x's
    # layout irrelevant). One extra copy of B*D*T, small next to Q*K*D*T multiply-adds.
    frames_pad = triton.cdiv(frames, PAD_T) * PAD_T
    residual = torch.empty(batch, dim, frames_pad, dtype=x.dtype, device=x.device)
    residual[..., :frames].copy_(x)
    block_ts, block_k, block_d, warps = ENCODE_TILES[x.dtype]
    block_t = _encode_block_t(x.device, block_ts, lambda bt: batch * triton.cdiv(frames, bt))
    n_tblocks = triton.cdiv(frames, block_t)
    _rvq_encode_kernel[(batch * n_tblocks,)](
        residual, codebooks, norms, codes,
        dim, frames, frames_pad, codebooks.shape[1], num_quantizers, n_tblocks,
        BLOCK_T=block_t, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=warps, enable_fp_fusion=False,
    )
    return codes


# ---------------------------------------------------------------------------------------------
# rvq_decode / dequantize_project: out[b, :, t] = (bias) + sum_q table[q, codes[b, q, t], :]
# One kernel: a (BLOCK_C channels x BLOCK_T frames) output tile per program; the gathers read
# codeword rows (contiguous in C), the store is contiguous in T, the compiler converts between.
# ---------------------------------------------------------------------------------------------


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
    chunks = _frame_chunks(codes.shape[2], table.shape[2])
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


# ---------------------------------------------------------------------------------------------
# custom ops (torch.compile / CUDA graphs see one opaque node each) and backend registration
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("xcodec_fast::triton_rvq_encode", mutates_args=())
def rvq_encode_op(x: torch.Tensor, codebooks: torch.Tensor, codebook_sq_norms: torch.Tensor,
                  num_quantizers: int) -> torch.Tensor:
    return _encode(x, codebooks, codebook_sq_norms, num_quantizers)


@rvq_encode_op.register_fake
def _(x, codebooks, codebook_sq_norms, num_quantizers):
    return x.new_empty(x.shape[0], num_quantizers, x.shape[2], dtype=torch.long)


@torch.library.custom_op("xcodec_fast::triton_rvq_decode", mutates_args=())
def rvq_decode_op(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    return _decode(codes, codebooks)


@rvq_decode_op.register_fake
def _(codes, codebooks):
    return codebooks.new_empty(codes.shape[0], codebooks.shape[2], codes.shape[2])


@torch.library.custom_op("xcodec_fast::triton_dequantize_project", mutates_args=())
def dequantize_project_op(codes: torch.Tensor, codebooks: torch.Tensor, proj_weight: torch.Tensor,
                          proj_bias: torch.Tensor | None, projected_codebooks: torch.Tensor | None) -> torch.Tensor:
    return _dequantize_project(codes, codebooks, proj_weight, proj_bias, projected_codebooks)


@dequantize_project_op.register_fake
def _(codes, codebooks, proj_weight, proj_bias, projected_codebooks):
    return codebooks.new_empty(codes.shape[0], proj_weight.shape[0], codes.shape[2])


@register("rvq_encode", "triton")
def rvq_encode(x, codebooks, codebook_sq_norms, num_quantizers):
    return rvq_encode_op(x, codebooks, codebook_sq_norms, int(num_quantizers))


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
        f"rvq_encode[{_name(dt)},BLOCK_T={bt},BLOCK_K={ENCODE_TILES[dt][1]},BLOCK_D={ENCODE_TILES[dt][2]}]",
        _rvq_encode_kernel,
        {"res_ptr": dt, "cb_ptr": dt, "norms_ptr": torch.float32, "codes_ptr": torch.int64,
         "D": "i32", "T": "i32", "T_pad": "i32", "K": "i32", "NQ": "i32", "n_tblocks": "i32"},
        {"BLOCK_T": bt, "BLOCK_K": ENCODE_TILES[dt][1], "BLOCK_D": ENCODE_TILES[dt][2]},
        num_warps=ENCODE_TILES[dt][3],
        expect_tensor_cores=dt in _HALF,
        multiple_of_16=("D", "K", "T_pad"),  # D = K = 1024 in the real model (32 / 1024 in tiny)
    )
    for dt in _DTYPES
    for bt in ENCODE_TILES[dt][0]
] + [
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
