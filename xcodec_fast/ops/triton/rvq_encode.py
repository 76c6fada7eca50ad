"""RVQ encode: the nearest codeword per stage, with the residual update fused (custom op
``torch.ops.xcodec_fast_triton.rvq_encode``). Scores are IEEE fp32 always (never TF32), so codes
equal eager's except at verified float-rounding near ties.

Per-config figures (registers, stack, spills, shared memory, tensor-core instructions) for sm_80
and sm_90 under Triton 3.6 and 3.9: bench/results/triton-sass-3.6.json / -3.9.json (all spill-free).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..backend import register
from . import _math
from ._compile import kernel_config
from ._launch import frame_chunks

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
                acc = _math.dot(e, r, acc, _math.IEEE)
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


# dtype -> (BLOCK_K, BLOCK_D, {BLOCK_T: (num_warps, num_stages)}). fp32 runs the ieee FMA dot,
# whose operands sit in registers: small D chunks, one stage (Triton 3.6 spilled every 4-warp,
# 3-stage fp32 config on sm_90 and 3.9 spilled BLOCK_T=16 with 8 warps and 2 stages). Half dtypes
# feed tensor cores (mma.sync on sm_80, wgmma on sm_90, M = BLOCK_K = 128) in 64-deep steps;
# 8 warps: with 4, BLOCK_T = 32 spilled on sm_80 and BLOCK_T = 64 used 210+ registers.
_HALF_TILES = (128, 64, {16: (8, 3), 32: (8, 3), 64: (8, 3)})
ENCODE_TILES = {
    torch.float32: (64, 16, {16: (8, 1), 32: (4, 1), 64: (4, 1)}),
    torch.float16: _HALF_TILES,
    torch.bfloat16: _HALF_TILES,
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


def _encode(x: torch.Tensor, codebooks: torch.Tensor, norms: torch.Tensor, num_quantizers: int) -> torch.Tensor:
    chunks = frame_chunks(x.shape[2], x.shape[1], PAD_T)
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
    block_k, block_d, launches = ENCODE_TILES[x.dtype]
    block_t = _encode_block_t(x.device, tuple(launches), lambda bt: batch * triton.cdiv(frames, bt))
    warps, stages = launches[block_t]
    n_tblocks = triton.cdiv(frames, block_t)
    _rvq_encode_kernel[(batch * n_tblocks,)](
        residual, codebooks, norms, codes,
        dim, frames, frames_pad, codebooks.shape[1], num_quantizers, n_tblocks,
        BLOCK_T=block_t, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=warps, num_stages=stages,
        enable_fp_fusion=False,
    )
    return codes


@torch.library.custom_op("xcodec_fast_triton::rvq_encode", mutates_args=())
def rvq_encode_op(x: torch.Tensor, codebooks: torch.Tensor, codebook_sq_norms: torch.Tensor,
                  num_quantizers: int) -> torch.Tensor:
    return _encode(x, codebooks, codebook_sq_norms, num_quantizers)


@rvq_encode_op.register_fake
def _(x, codebooks, codebook_sq_norms, num_quantizers):
    return x.new_empty(x.shape[0], num_quantizers, x.shape[2], dtype=torch.long)


@register("rvq_encode", "triton")
def rvq_encode(x, codebooks, codebook_sq_norms, num_quantizers):
    return rvq_encode_op(x, codebooks, codebook_sq_norms, int(num_quantizers))


_HALF = (torch.float16, torch.bfloat16)
_DTYPES = (torch.float32,) + _HALF

COMPILE_CONFIGS = [
    kernel_config(
        f"rvq_encode[{str(dt)[6:]},BLOCK_T={bt},BLOCK_K={block_k},BLOCK_D={block_d}]",
        _rvq_encode_kernel,
        {"res_ptr": dt, "cb_ptr": dt, "norms_ptr": torch.float32, "codes_ptr": torch.int64,
         "D": "i32", "T": "i32", "T_pad": "i32", "K": "i32", "NQ": "i32", "n_tblocks": "i32"},
        {"BLOCK_T": bt, "BLOCK_K": block_k, "BLOCK_D": block_d},
        num_warps=warps,
        num_stages=stages,
        expect_tensor_cores=dt in _HALF,
        multiple_of_16=("D", "K", "T_pad"),  # D = K = 1024 in the real model (32 / 1024 in tiny)
    )
    for dt in _DTYPES
    for block_k, block_d, launches in [ENCODE_TILES[dt]]
    for bt, (warps, stages) in launches.items()
]
