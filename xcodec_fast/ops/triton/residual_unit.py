"""DAC residual unit ``x + conv1x1(snake(conv7_dil(snake(x))))`` (custom op
``torch.ops.xcodec_fast_triton.residual_unit``).

For C <= 64 one kernel (``_residual_unit_fused_kernel``) does all of it per (batch, T block): the
conv7 output slice gets bias + Snake in registers and feeds the 1x1 conv's dot directly. For
C > 64 two launches of conv.py's ``_snake_conv1d_kernel``: conv7 with the Snake prologue and
bias + Snake epilogue (writes g = snake2(h)), then the 1x1 conv with bias + residual-add epilogue.

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
  fp32 IEEE (FFMA dots, no tensor cores) is compute bound at every C; it is the exact path.

Per-config figures (registers, stack, spills, shared memory, tensor-core instructions) for sm_80
and sm_90 under Triton 3.6 and 3.9: bench/results/triton-sass-3.6.json / -3.9.json (all spill-free).
Rejected: fused fp16 C=64 4 warps (253 regs, 144 LDL on sm_90), fused fp32 M64 (255 regs, 400 B stack).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..backend import register
from . import _math, _pack
from ._compile import kernel_config
from ._launch import (
    MATH_MODES, bf16_in_interpreter, default_model_sites, flat, float_or_none, mode_label, needs_int64_offsets,
    pow2, split_launch_options, unique_configs,
)
from .conv import conv_compile_config, snake_conv1d_launch

FUSED_MAX_CHANNELS = 64


@triton.jit
def _residual_unit_fused_kernel(
    x_ptr, alpha1_ptr, w1_ptr, bias1_ptr, alpha2_ptr, w2_ptr, bias2_ptr, out_ptr,
    C, C_mid, T, dilation, padding,
    KSIZE: tl.constexpr,
    C_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_T: tl.constexpr,
    HAS_BIAS1: tl.constexpr, HAS_BIAS2: tl.constexpr, PRECISION: tl.constexpr, FAST_SIN: tl.constexpr,
    INT64: tl.constexpr,
):
    """Whole residual unit for one (batch, T block): x + W2 · snake(W1 ⊛ snake(x) + b1) + b2.

    The intermediate never leaves the SM: each BLOCK_M slice of the dilated conv's output gets its
    bias and Snake in registers and feeds the 1×1 conv's dot straight away, accumulating all C
    output channels (C_PAD × BLOCK_T in fp32), which is why this path is for small C only.
    W1 is packed to (KSIZE, C_mid, C), W2 to (C, C_mid).
    """
    pid_t = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)

    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    co = tl.arange(0, C_PAD)
    co_ok = co < C
    co_rows = co
    if INT64:
        co_rows = co.to(tl.int64)
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
            ci_rows = ci
            if INT64:
                ci_rows = ci.to(tl.int64)
            pos = t - padding + k * dilation
            x_mask = ci_ok[:, None] & ((pos >= 0) & (pos < T))[None, :]
            xv = tl.load(x_base + ci_rows[:, None] * T + pos[None, :], mask=x_mask, other=0.0)
            a = tl.load(alpha1_ptr + ci, mask=ci_ok, other=1.0).to(tl.float32)
            xv = _math.snake(xv.to(tl.float32), a[:, None], _math.inverse_alpha(a)[:, None], FAST_SIN)
            w = tl.load(w1_ptr + (k * C_mid + m[:, None]) * C + ci[None, :],
                        mask=m_ok[:, None] & ci_ok[None, :], other=0.0)
            h = _math.dot(w, xv.to(w.dtype), h, PRECISION)
        if HAS_BIAS1:
            h += tl.load(bias1_ptr + m, mask=m_ok, other=0.0).to(tl.float32)[:, None]
        # Padded rows (m ≥ C_mid) are exactly 0 here and snake(0) = 0; their W2 columns are 0 too.
        a2 = tl.load(alpha2_ptr + m, mask=m_ok, other=1.0).to(tl.float32)
        h = _math.snake(h, a2[:, None], _math.inverse_alpha(a2)[:, None], FAST_SIN)
        w2 = tl.load(w2_ptr + co[:, None] * C_mid + m[None, :], mask=co_ok[:, None] & m_ok[None, :], other=0.0)
        acc = _math.dot(w2, h.to(w2.dtype), acc, PRECISION)

    if HAS_BIAS2:
        acc += tl.load(bias2_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[:, None]
    off = b * C * T + co_rows[:, None] * T + t[None, :]
    mask = co_ok[:, None] & t_ok[None, :]
    acc += tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + off, acc.to(out_ptr.dtype.element_ty), mask=mask)


def fused_config(c: int, c_mid: int, dtype: torch.dtype) -> dict:
    """Block sizes and launch options of _residual_unit_fused_kernel."""
    c_pad = pow2(c)
    if dtype == torch.float32:
        return dict(C_PAD=c_pad, BLOCK_M=min(32, pow2(c_mid)), BLOCK_CI=16, BLOCK_T=64 if c_pad <= 64 else 32,
                    num_warps=8, num_stages=2)
    return dict(C_PAD=c_pad, BLOCK_M=min(64 if c_pad <= 64 else 32, pow2(c_mid)), BLOCK_CI=min(32, pow2(c)),
                BLOCK_T=64, num_warps=8, num_stages=2)


def use_fused(c: int, c_mid: int) -> bool:
    return c <= FUSED_MAX_CHANNELS and c_mid <= FUSED_MAX_CHANNELS


def residual_unit_launch(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, fused: bool | None = None):
    """x + conv1x1(snake(conv_k(snake(x), dilation)), 'same' padding; fused=None picks by channel count."""
    if bf16_in_interpreter(x):
        f = float_or_none
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
    w1 = _pack.taps_first(weight1)  # (K, C_mid, C)
    w2 = _pack.matrix(weight2)  # (C, C_mid)
    cfg, launch = split_launch_options(fused_config(c, c_mid, x.dtype))
    grid = (triton.cdiv(t, cfg["BLOCK_T"]), batch)
    _residual_unit_fused_kernel[grid](
        x, flat(alpha1), w1, flat(bias1) if bias1 is not None else w1, flat(alpha2), w2,
        flat(bias2) if bias2 is not None else w2, out,
        c, c_mid, t, dilation, padding,
        KSIZE=ksize, HAS_BIAS1=bias1 is not None, HAS_BIAS2=bias2 is not None,
        PRECISION=_math.conv_dot_precision(x), FAST_SIN=_math.fast_sin(x), INT64=needs_int64_offsets(x),
        **cfg, **launch,
    )
    return out


@torch.library.custom_op("xcodec_fast_triton::residual_unit", mutates_args=())
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


@register("residual_unit", "triton")
def residual_unit(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2):
    return residual_unit_op(x, alpha1, weight1, bias1, int(dilation), alpha2, weight2, bias2)


def fused_compile_config(dtype, c, precision="ieee", int64=False):
    cfg, launch = split_launch_options(fused_config(c, c, dtype))
    types = {n: dtype for n in ("x_ptr", "alpha1_ptr", "w1_ptr", "bias1_ptr", "alpha2_ptr", "w2_ptr", "bias2_ptr",
                                "out_ptr")}
    types.update({n: "i32" for n in ("C", "C_mid", "T", "dilation", "padding")})
    const = dict(KSIZE=7, HAS_BIAS1=True, HAS_BIAS2=True, PRECISION=precision, FAST_SIN=dtype != torch.float32,
                 INT64=int64, **cfg)
    name = f"residual_unit_fused/C{c}[{mode_label(dtype, precision, int64)},M{cfg['BLOCK_M']}xT{cfg['BLOCK_T']}]"
    return kernel_config(name, _residual_unit_fused_kernel, types, const, **launch, enable_fp_fusion=True,
                         expect_tensor_cores=precision == "tf32" or dtype != torch.float32)


def _site_configs(c: int, dtype: torch.dtype, precision: str, int64: bool):
    if use_fused(c, c):
        return [fused_compile_config(dtype, c, precision, int64)]
    return [conv_compile_config(f"residual_C{c}_k7_snake_in_out", dtype, c, c, 7, True, True, False, precision, int64),
            conv_compile_config(f"residual_C{c}_k1_residual", dtype, c, c, 1, False, False, True, precision, int64)]


COMPILE_CONFIGS = unique_configs(
    cfg
    for site in default_model_sites() if site.op == "residual_unit"
    for dtype, precision in MATH_MODES
    for int64 in (False, True)
    for cfg in _site_configs(site.params["channels"], dtype, precision, int64)
)
