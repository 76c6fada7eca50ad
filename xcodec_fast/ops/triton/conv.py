"""Fused DAC convolution blocks: Snake prologue, implicit-GEMM conv, fused epilogues.

Ops (registered for the ``triton`` backend, wrapped as ``torch.ops.xcodec_fast.*`` custom ops):

* ``residual_unit``: ``x + conv1x1(snake(conv7_dil(snake(x))))``. For C <= 64 one kernel
  (``_residual_unit_fused_kernel``) does all of it per (batch, T block): the conv7 output slice
  gets bias + Snake in registers and feeds the 1x1 conv's tl.dot directly. For C > 64 two
  launches of ``_snake_conv1d_kernel``: conv7 with the Snake prologue and bias + Snake epilogue
  (writes g = snake2(h)), then the 1x1 conv with bias + residual-add epilogue.
* ``snake_conv1d`` (encoder downsampling, k = 2s): the same generic kernel with a stride.
* ``snake_conv_transpose1d`` (decoder upsampling): Snake op + cuDNN's transposed conv, see below.

Snake in the prologue is applied to each x tile as it is loaded (padding loads 0, snake(0) = 0),
so it is recomputed once per tap and per C_out block. sin² comes from our own FMA-only
range-reduced polynomial (fp32, |err| < 2.3e-7) or MUFU.SIN after the reduction (fp16/bf16 on
GPU); tl.sin (libdevice sinf) was measured first and its Payne-Hanek branch alone pushed conv7
to 255 registers with a 48-byte stack and 124 LDL / 84 STL on sm_90.

Roofline per residual unit, per frame (C channels, fp16, H100: ~990 TFLOP/s dense, 3.35 TB/s,
ridge ~295 FLOP/B; FFMA 128/clk/SM, MUFU 16/clk/SM, DRAM ~14 B/clk/SM, MMA ~4096 FLOP/clk/SM):
  FLOPs = 2·7·C² + 2·C² = 16·C²  (C=64: 65.5k, 128: 262k, 256: 1.05M, 512: 4.2M)
  bytes, two kernels: x, g write, g read, x again, out = 10·C; fused: x, out (+x from L2) = 4..6·C
  intensity, two kernels: 1.6·C FLOP/B (C=64: 102, 128: 205, 256: 410, 512: 819)
  Snake prologue: 7·C·ceil(C/BLOCK_CO) sins per frame.
  C=64 (decoder top, T up to 160k; encoder bottom): per frame-channel, MMA 0.25 clk,
    two-kernel DRAM 0.72 clk, fused DRAM 0.3-0.43 clk, MUFU 7/16 = 0.44 clk -> fused wins (~1.6x).
  C=128: fused needs BLOCK_M=32 (C_PAD=128 rows of fp32 accumulator already in registers), so
    28 sins per element: MUFU 0.875 clk vs the two-kernel path's 0.72 clk DRAM + 0.44 clk MUFU
    overlapped -> not worth it; C >= 128 uses two kernels and is MMA/MUFU bound, not DRAM bound.
  fp32 (ieee FFMA dots, no tensor cores) is compute bound at every C; it is the exact path.

Transposed conv stays Snake + vendor conv: with k = 2s each output frame takes exactly 2 taps, so
it is a compute-bound GEMM (4·C_in·C_out FLOPs per output frame, C_out = 512..64 at
T_out = 400 Hz..16 kHz) whose only extra traffic from the separate Snake pass is 2 × the
*input* tensor (C_in·T_in = 2·C_out·T_out/s elements): s=8 -> +40% of the conv's own activation
bytes, s=2 -> +100%, but at intensities of 100s of FLOP/B the conv is not memory bound, and
cuDNN's polyphase deconv is already near the MMA roofline. A Triton polyphase version (s phase
convs of k=2 with strided stores) is possible with this kernel but would only save that pass.

sass (Triton 3.9, compiled host-side; python -m xcodec_fast.ops.triton._compile), regs / spills
(LDL/STL) / shared / tensor-core instructions; sm_90 | sm_80:
  fused residual C=64  fp32  M32 T64 8w:   178/0/16K/0 FFMA dot |  174/0/16K/0
  fused residual C=64  fp16  M64 T64 8w:   127/0/16K/6 HGMMA    |  170/0/16K/24 HMMA
  fused residual C=32  fp16  M32 T64 8w:    97/0/6K/8 HGMMA     |   93/0/6K/8 HMMA
  conv k7 snake in+out fp32 64x16x64 8w:   143/0/16K/0          |  128/0/16K/0
  conv k7 snake in+out fp16 128x32x128 8w: 179/0/32K/2 HGMMA    |  177/0/32K/32 HMMA (MUFU.SIN 80)
  conv k1 + residual   fp16 64x64x128 8w:  146/0/24K/4 HGMMA    |  224/0/24K/32 HMMA
  down s8 k16          fp16 128x32x128 8w: 162/0/32K/2 HGMMA    |  177/0/32K/32 HMMA
  bf16 equals fp16 within a few registers; every config in COMPILE_CONFIGS is spill-free.
Rejected on the way: conv k1 fp16 128x64x128 8w (255 regs, 16 LDL/STL), fp16 k7 64x32x128 4w
(242 regs), fp32 64x16x64 4w (255 regs, spills), fused fp16 C=64 4 warps (253 regs, 144 LDL on
sm_90), fused fp32 M64 (255 regs, 400 B stack).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ...lengths import conv_output_length, conv_transpose_output_length
from ..backend import register
from ._compile import kernel_config

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

@triton.jit
def _sin_squared(v, FAST_SIN: tl.constexpr):
    """sin(v)² in fp32 from FMAs only, |error| < 2e-7 for |v| < 1e5.

    tl.sin lowers to libdevice sinf, whose Payne-Hanek branch for huge arguments carries a local
    array: on sm_90 that alone took the conv7 kernel from 111 to 255 registers with a 48-byte
    stack and ~100 LDL/STL. sin² has period π, so one Cody-Waite reduction by π (3-part constant,
    k·PI_A exact for |k| < 2^17) and an odd Taylor polynomial on [-π/2, π/2] suffice; it also runs
    under the interpreter, which has no libdevice. FAST_SIN (half-precision operands on a GPU)
    swaps the polynomial for MUFU.SIN on the reduced argument (|error| ~ 5e-7, far below fp16/bf16
    rounding): the prologue recomputes Snake once per tap, and 1 MUFU beats ~7 dependent FFMAs.
    """
    k = tl.floor(v * 0.3183098861837907 + 0.5)
    r = v - k * 3.140625
    r = r - k * 9.67502593994140625e-4
    r = r - k * 1.509957990978376432e-7
    if FAST_SIN:
        s = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [r], dtype=tl.float32, is_pure=True, pack=1)
        return s * s
    r2 = r * r
    p = 1.6059043836821613e-10 * r2 - 2.505210838544172e-08
    p = p * r2 + 2.7557319223985893e-06
    p = p * r2 - 1.984126984126984e-04
    p = p * r2 + 8.333333333333333e-03
    p = p * r2 - 1.6666666666666666e-01
    s = r + r * r2 * p
    return s * s


@triton.jit
def _snake(v, alpha, inv_alpha, FAST_SIN: tl.constexpr):
    # Same order of operations as the eager oracle: v + (1/(α+1e-9)) · sin(αv)².
    return v + inv_alpha * _sin_squared(alpha * v, FAST_SIN)


@triton.jit
def _snake_conv1d_kernel(
    x_ptr, alpha_in_ptr, w_ptr, bias_ptr, alpha_out_ptr, res_ptr, out_ptr,
    C_in, C_out, T_in, T_out,
    conv_stride, dilation, padding,
    KSIZE: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_T: tl.constexpr,
    SNAKE_IN: tl.constexpr, HAS_BIAS: tl.constexpr, SNAKE_OUT: tl.constexpr, HAS_RES: tl.constexpr,
    IEEE: tl.constexpr, FAST_SIN: tl.constexpr,
):
    """out[b, co, t] = epilogue(Σ_{ci,k} W[k, co, ci] · snake(x[b, ci, t·stride + k·dilation − padding])).

    x (B, C_in, T_in), out/res (B, C_out, T_out) contiguous; W pre-packed to (KSIZE, C_out, C_in) so
    that each tap's (co, ci) tile is a dense row-major load. The reduction runs as one flat loop
    over (ci block, tap) so Triton can software-pipeline it, and taps are never unrolled (an
    unrolled k=7 loop with 64×64 tiles spills on sm_90).
    """
    pid_t = tl.program_id(0)
    pid_co = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    co_ok = co < C_out
    t_ok = t < T_out
    x_base = x_ptr + b * C_in * T_in
    t_in0 = t * conv_stride - padding

    acc = tl.zeros((BLOCK_CO, BLOCK_T), dtype=tl.float32)
    n_ci = tl.cdiv(C_in, BLOCK_CI)
    for kk in range(0, n_ci * KSIZE):
        ci = (kk // KSIZE) * BLOCK_CI + tl.arange(0, BLOCK_CI)
        k = kk % KSIZE
        ci_ok = ci < C_in
        pos = t_in0 + k * dilation
        # Masked (padding) positions load 0 and snake(0) = 0, so 'same'/zero padding stays exact.
        x_mask = ci_ok[:, None] & ((pos >= 0) & (pos < T_in))[None, :]
        xv = tl.load(x_base + ci[:, None] * T_in + pos[None, :], mask=x_mask, other=0.0)
        w = tl.load(w_ptr + (k * C_out + co[:, None]) * C_in + ci[None, :],
                    mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
        if SNAKE_IN:
            a = tl.load(alpha_in_ptr + ci, mask=ci_ok, other=1.0).to(tl.float32)
            xv = _snake(xv.to(tl.float32), a[:, None], (1.0 / (a + 1e-9))[:, None], FAST_SIN)
        if IEEE:
            acc = tl.dot(w, xv.to(w.dtype), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, xv.to(w.dtype), acc)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[:, None]
    if SNAKE_OUT:
        a = tl.load(alpha_out_ptr + co, mask=co_ok, other=1.0).to(tl.float32)
        acc = _snake(acc, a[:, None], (1.0 / (a + 1e-9))[:, None], FAST_SIN)
    out_off = b * C_out * T_out + co[:, None] * T_out + t[None, :]
    out_mask = co_ok[:, None] & t_ok[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out_off, mask=out_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _residual_unit_fused_kernel(
    x_ptr, alpha1_ptr, w1_ptr, bias1_ptr, alpha2_ptr, w2_ptr, bias2_ptr, out_ptr,
    C, C_mid, T, dilation, padding,
    KSIZE: tl.constexpr,
    C_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_BIAS1: tl.constexpr, HAS_BIAS2: tl.constexpr, IEEE: tl.constexpr, FAST_SIN: tl.constexpr,
):
    """Whole residual unit for one (batch, T block): x + W2 · snake(W1 ⊛ snake(x) + b1) + b2.

    The intermediate never leaves the SM: each BLOCK_M slice of the dilated conv's output gets its
    bias and Snake in registers and feeds the 1×1 conv's tl.dot straight away, accumulating all C
    output channels (C_PAD × BLOCK_T in fp32), which is why this path is for C ≤ 128 only.
    W1 is pre-packed to (KSIZE, C_mid, C), W2 to (C, C_mid).
    """
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)

    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    co = tl.arange(0, C_PAD)
    co_ok = co < C
    x_base = x_ptr + b * C * T
    n_ci = tl.cdiv(C, BLOCK_CI)

    acc = tl.zeros((C_PAD, BLOCK_T), dtype=tl.float32)
    for m0 in range(0, C_mid, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_ok = m < C_mid
        h = tl.zeros((BLOCK_M, BLOCK_T), dtype=tl.float32)
        for kk in range(0, n_ci * KSIZE):
            ci = (kk // KSIZE) * BLOCK_CI + tl.arange(0, BLOCK_CI)
            k = kk % KSIZE
            ci_ok = ci < C
            pos = t - padding + k * dilation
            x_mask = ci_ok[:, None] & ((pos >= 0) & (pos < T))[None, :]
            xv = tl.load(x_base + ci[:, None] * T + pos[None, :], mask=x_mask, other=0.0)
            a = tl.load(alpha1_ptr + ci, mask=ci_ok, other=1.0).to(tl.float32)
            xv = _snake(xv.to(tl.float32), a[:, None], (1.0 / (a + 1e-9))[:, None], FAST_SIN)
            w = tl.load(w1_ptr + (k * C_mid + m[:, None]) * C + ci[None, :],
                        mask=m_ok[:, None] & ci_ok[None, :], other=0.0)
            if IEEE:
                h = tl.dot(w, xv.to(w.dtype), h, input_precision="ieee")
            else:
                h = tl.dot(w, xv.to(w.dtype), h)
        if HAS_BIAS1:
            h += tl.load(bias1_ptr + m, mask=m_ok, other=0.0).to(tl.float32)[:, None]
        # Padded rows (m ≥ C_mid) are exactly 0 here and snake(0) = 0; their W2 columns are 0 too.
        a2 = tl.load(alpha2_ptr + m, mask=m_ok, other=1.0).to(tl.float32)
        h = _snake(h, a2[:, None], (1.0 / (a2 + 1e-9))[:, None], FAST_SIN)
        w2 = tl.load(w2_ptr + co[:, None] * C_mid + m[None, :], mask=co_ok[:, None] & m_ok[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(w2, h.to(w2.dtype), acc, input_precision="ieee")
        else:
            acc = tl.dot(w2, h.to(w2.dtype), acc)

    if HAS_BIAS2:
        acc += tl.load(bias2_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[:, None]
    off = b * C * T + co[:, None] * T + t[None, :]
    mask = co_ok[:, None] & t_ok[None, :]
    acc += tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launch configurations. Every dot dimension is >= 16 (the GPU compiler's minimum) even where the
# interpreter would accept less. Numbers behind these choices are in the module docstring.

FUSED_MAX_CHANNELS = 64


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


def conv_config(c_out: int, c_in: int, ksize: int, dtype: torch.dtype) -> dict:
    """Block sizes and launch options of _snake_conv1d_kernel (sass numbers in the module docstring)."""
    if dtype == torch.float32:
        # FFMA dots (ieee): 8 warps keep the 64×64 fp32 tile + FMA operands at 143 regs, no spill.
        return dict(BLOCK_CO=min(64, _pow2(c_out)), BLOCK_CI=16, BLOCK_T=64, num_warps=8, num_stages=2)
    if ksize == 1:
        # 1×1 + residual epilogue: 128×64×128 spills on sm_90; 64×64×128 is 146 regs.
        return dict(BLOCK_CO=min(64, _pow2(c_out)), BLOCK_CI=min(64, _pow2(c_in)), BLOCK_T=128, num_warps=8,
                    num_stages=3)
    # Snake prologue is recomputed per tap per C_out block: the widest C_out block halves it.
    return dict(BLOCK_CO=min(128, _pow2(c_out)), BLOCK_CI=min(32, _pow2(c_in)), BLOCK_T=128, num_warps=8,
                num_stages=3)


def fused_config(c: int, c_mid: int, dtype: torch.dtype) -> dict:
    """Block sizes and launch options of _residual_unit_fused_kernel."""
    c_pad = _pow2(c)
    if dtype == torch.float32:
        return dict(C_PAD=c_pad, BLOCK_M=min(32, _pow2(c_mid)), BLOCK_CI=16, BLOCK_T=64 if c_pad <= 64 else 32,
                    num_warps=8, num_stages=2)
    return dict(C_PAD=c_pad, BLOCK_M=min(64 if c_pad <= 64 else 32, _pow2(c_mid)), BLOCK_CI=min(32, _pow2(c)),
                BLOCK_T=64, num_warps=8, num_stages=2)


def use_fused(c: int, c_mid: int) -> bool:
    return c <= FUSED_MAX_CHANNELS and c_mid <= FUSED_MAX_CHANNELS


def _fast_sin(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" and x.dtype != torch.float32


# ----------------------------------------------------------------------------------------------
# Launchers (plain functions on tensors; the registered ops below wrap them).


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1).contiguous()


def _compute_dtype_guard(x: torch.Tensor) -> bool:
    # Triton's interpreter has no bf16: run those through fp32 there (tests only; GPUs do bf16).
    return INTERPRETING and x.device.type == "cpu" and x.dtype == torch.bfloat16


def snake_conv1d_launch(
    x: torch.Tensor,
    alpha_in: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    alpha_out: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[residual +] [snake_out](conv1d([snake_in](x), weight, bias, stride, padding, dilation))``."""
    if _compute_dtype_guard(x):
        f = lambda t: None if t is None else t.float()  # noqa: E731
        return snake_conv1d_launch(f(x), f(alpha_in), f(weight), f(bias), stride, padding, dilation,
                                   f(alpha_out), f(residual)).to(x.dtype)
    x = x.contiguous()
    batch, c_in, t_in = x.shape
    c_out, _, ksize = weight.shape
    t_out = conv_output_length(t_in, ksize, stride, padding, dilation)
    if t_out < 0:
        raise ValueError(f"snake_conv1d: {t_in} frames give no output with kernel {ksize}, padding {padding}")
    out = torch.empty(batch, c_out, t_out, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    w = weight.permute(2, 0, 1).contiguous()  # (K, C_out, C_in): dense per-tap tiles
    if residual is not None:
        residual = residual.contiguous()
        assert residual.shape == out.shape
    cfg = conv_config(c_out, c_in, ksize, x.dtype)
    launch = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
    grid = (triton.cdiv(t_out, cfg["BLOCK_T"]), triton.cdiv(c_out, cfg["BLOCK_CO"]), batch)
    dummy = w
    _snake_conv1d_kernel[grid](
        x, _flat(alpha_in) if alpha_in is not None else dummy, w,
        _flat(bias) if bias is not None else dummy,
        _flat(alpha_out) if alpha_out is not None else dummy,
        residual if residual is not None else dummy, out,
        c_in, c_out, t_in, t_out, stride, dilation, padding,
        KSIZE=ksize, SNAKE_IN=alpha_in is not None, HAS_BIAS=bias is not None,
        SNAKE_OUT=alpha_out is not None, HAS_RES=residual is not None,
        IEEE=x.dtype == torch.float32, FAST_SIN=_fast_sin(x), **cfg, **launch,
    )
    return out


def residual_unit_launch(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, fused: bool | None = None):
    """x + conv1x1(snake(conv_k(snake(x), dilation)), 'same' padding; fused=None picks by channel count."""
    if _compute_dtype_guard(x):
        f = lambda t: None if t is None else t.float()  # noqa: E731
        return residual_unit_launch(f(x), f(alpha1), f(weight1), f(bias1), dilation, f(alpha2), f(weight2),
                                    f(bias2), fused).to(x.dtype)
    x = x.contiguous()
    batch, c, t = x.shape
    c_mid, _, ksize = weight1.shape
    padding = (ksize - 1) * dilation // 2
    if fused is None:
        fused = use_fused(c, c_mid)
    if not fused:
        g = snake_conv1d_launch(x, alpha1, weight1, bias1, 1, padding, dilation, alpha_out=alpha2)
        return snake_conv1d_launch(g, None, weight2, bias2, residual=x)
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    w1 = weight1.permute(2, 0, 1).contiguous()  # (K, C_mid, C)
    w2 = weight2.reshape(c, c_mid).contiguous()
    cfg = fused_config(c, c_mid, x.dtype)
    launch = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
    grid = (triton.cdiv(t, cfg["BLOCK_T"]), batch)
    _residual_unit_fused_kernel[grid](
        x, _flat(alpha1), w1, _flat(bias1) if bias1 is not None else w1, _flat(alpha2), w2,
        _flat(bias2) if bias2 is not None else w2, out,
        c, c_mid, t, dilation, padding,
        KSIZE=ksize, HAS_BIAS1=bias1 is not None, HAS_BIAS2=bias2 is not None,
        IEEE=x.dtype == torch.float32, FAST_SIN=_fast_sin(x), **cfg, **launch,
    )
    return out


def snake_conv_transpose1d_launch(x, alpha, weight, bias, stride, padding, output_padding):
    """Snake (the registered snake op of the active backend) then the vendor transposed conv."""
    from xcodec_fast import ops  # late: this module is imported while xcodec_fast.ops loads backends

    return torch.nn.functional.conv_transpose1d(ops.snake(x.contiguous(), alpha), weight, bias, stride=stride,
                                                padding=padding, output_padding=output_padding)


# ----------------------------------------------------------------------------------------------
# torch.library custom ops (opaque to torch.compile, with shape-only fake implementations) and
# their registration as the triton backend's implementations.


@torch.library.custom_op("xcodec_fast::residual_unit", mutates_args=())
def residual_unit_op(
    x: torch.Tensor,
    alpha1: torch.Tensor,
    weight1: torch.Tensor,
    bias1: Optional[torch.Tensor],
    dilation: int,
    alpha2: torch.Tensor,
    weight2: torch.Tensor,
    bias2: Optional[torch.Tensor],
) -> torch.Tensor:
    return residual_unit_launch(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2)


@residual_unit_op.register_fake
def _(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2):
    return x.new_empty(x.shape)


@torch.library.custom_op("xcodec_fast::snake_conv1d", mutates_args=())
def snake_conv1d_op(
    x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int
) -> torch.Tensor:
    return snake_conv1d_launch(x, alpha, weight, bias, stride, padding)


@snake_conv1d_op.register_fake
def _(x, alpha, weight, bias, stride, padding):
    t_out = conv_output_length(x.shape[-1], weight.shape[-1], stride, padding)
    return x.new_empty(x.shape[0], weight.shape[0], t_out)


@torch.library.custom_op("xcodec_fast::snake_conv_transpose1d", mutates_args=())
def snake_conv_transpose1d_op(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    stride: int,
    padding: int,
    output_padding: int,
) -> torch.Tensor:
    return snake_conv_transpose1d_launch(x, alpha, weight, bias, stride, padding, output_padding)


@snake_conv_transpose1d_op.register_fake
def _(x, alpha, weight, bias, stride, padding, output_padding):
    t_out = conv_transpose_output_length(x.shape[-1], weight.shape[-1], stride, padding, output_padding)
    return x.new_empty(x.shape[0], weight.shape[1], t_out)


@register("residual_unit", "triton")
def residual_unit(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2):
    return residual_unit_op(x, alpha1, weight1, bias1, int(dilation), alpha2, weight2, bias2)


@register("snake_conv1d", "triton")
def snake_conv1d(x, alpha, weight, bias, stride, padding):
    return snake_conv1d_op(x, alpha, weight, bias, int(stride), int(padding))


@register("snake_conv_transpose1d", "triton")
def snake_conv_transpose1d(x, alpha, weight, bias, stride, padding, output_padding):
    return snake_conv_transpose1d_op(x, alpha, weight, bias, int(stride), int(padding), int(output_padding))


# ----------------------------------------------------------------------------------------------
# Every launch configuration the launchers above can pick for the real model's shapes, built from
# the same config tables, for the sm_80/sm_90 compile check in _compile.py.


def _conv_compile_config(label, dtype, c_out, c_in, ksize, snake_in, snake_out, has_res):
    cfg = conv_config(c_out, c_in, ksize, dtype)
    launch = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
    types = {n: dtype for n in ("x_ptr", "alpha_in_ptr", "w_ptr", "bias_ptr", "alpha_out_ptr", "res_ptr", "out_ptr")}
    types.update({n: "i32" for n in ("C_in", "C_out", "T_in", "T_out", "conv_stride", "dilation", "padding")})
    const = dict(KSIZE=ksize, SNAKE_IN=snake_in, HAS_BIAS=True, SNAKE_OUT=snake_out, HAS_RES=has_res,
                 IEEE=dtype == torch.float32, FAST_SIN=dtype != torch.float32, **cfg)
    name = f"snake_conv1d/{label}[{str(dtype)[6:]},{'x'.join(str(cfg[k]) for k in ('BLOCK_CO', 'BLOCK_CI', 'BLOCK_T'))}]"
    return kernel_config(name, _snake_conv1d_kernel, types, const, **launch, enable_fp_fusion=True,
                         expect_tensor_cores=dtype != torch.float32)


def _fused_compile_config(dtype, c):
    cfg = fused_config(c, c, dtype)
    launch = {k: cfg.pop(k) for k in ("num_warps", "num_stages")}
    types = {n: dtype for n in ("x_ptr", "alpha1_ptr", "w1_ptr", "bias1_ptr", "alpha2_ptr", "w2_ptr", "bias2_ptr",
                                "out_ptr")}
    types.update({n: "i32" for n in ("C", "C_mid", "T", "dilation", "padding")})
    const = dict(KSIZE=7, HAS_BIAS1=True, HAS_BIAS2=True, IEEE=dtype == torch.float32,
                 FAST_SIN=dtype != torch.float32, **cfg)
    name = f"residual_unit_fused[{str(dtype)[6:]},C={c},M={cfg['BLOCK_M']},T={cfg['BLOCK_T']}]"
    return kernel_config(name, _residual_unit_fused_kernel, types, const, **launch, enable_fp_fusion=True,
                         expect_tensor_cores=dtype != torch.float32)


COMPILE_CONFIGS = [
    cfg
    for dtype in (torch.float32, torch.float16, torch.bfloat16)
    for cfg in (
        _fused_compile_config(dtype, 32),
        _fused_compile_config(dtype, 64),
        _conv_compile_config("k7_snake_in_out", dtype, 128, 128, 7, True, True, False),  # residual unit C >= 128
        _conv_compile_config("k1_residual", dtype, 128, 128, 1, False, False, True),
        _conv_compile_config("down_s2_k4", dtype, 128, 64, 4, True, False, False),  # encoder downsampling
        _conv_compile_config("down_s8_k16", dtype, 1024, 512, 16, True, False, False),
    )
]
