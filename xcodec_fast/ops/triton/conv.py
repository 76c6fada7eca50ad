"""Snake + convolution, one kernel: Snake prologue, implicit-GEMM conv, fused epilogues.

Ops (registered for the ``triton`` backend, custom ops ``torch.ops.xcodec_fast_triton.*``):

* ``snake_conv1d`` (encoder downsampling, k = 2s): ``_snake_conv1d_kernel`` with a stride. The same
  kernel is the residual unit's two-kernel path for C > 64 (residual_unit.py): conv7 with the
  Snake prologue and bias + Snake epilogue, then the 1x1 conv with bias + residual-add epilogue.
* ``snake_conv_transpose1d`` (decoder upsampling): this backend's Snake, then the vendor
  transposed conv, see below.

Snake in the prologue is applied to each x tile as it is loaded (padding loads 0, snake(0) = 0),
so it is recomputed once per tap and per C_out block (the shared ``_math.snake``). Dots follow
torch's convolution switch (``_math.conv_dot_precision``): TF32 for fp32 while
``torch.backends.cudnn.allow_tf32`` is on, IEEE fp32 when it is off, tensor cores for fp16/bf16.
Offsets are int32 unless a tensor reaches 2³¹ elements; then the INT64 variant runs.

Transposed conv stays Snake + vendor conv: with k = 2s each output frame takes exactly 2 taps, so
it is a compute-bound GEMM (4·C_in·C_out FLOPs per output frame, C_out = 512..64 at
T_out = 400 Hz..16 kHz) whose only extra traffic from the separate Snake pass is 2 × the
*input* tensor (C_in·T_in = 2·C_out·T_out/s elements): s=8 -> +40% of the conv's own activation
bytes, s=2 -> +100%, but at intensities of 100s of FLOP/B the conv is not memory bound, and
cuDNN's polyphase deconv is already near the MMA roofline.

Per-config figures (registers, stack, spills, shared memory, tensor-core instructions) for sm_80
and sm_90 under Triton 3.6 and 3.9: bench/results/triton-sass-3.6.json / -3.9.json (all spill-free).
Rejected on the way: conv k1 fp16 128x64x128 8w (255 regs, 16 LDL/STL), fp16 k7 64x32x128 4w
(242 regs), fp32 64x16x64 4w (255 regs, spills).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ...lengths import conv_output_length, conv_transpose_output_length
from ..backend import register
from . import _math, _pack
from ._compile import kernel_config
from ._launch import (
    MATH_MODES, bf16_in_interpreter, default_model_sites, flat, float_or_none, mode_label, needs_int64_offsets,
    pow2, split_launch_options, unique_configs,
)


@triton.jit
def _snake_conv1d_kernel(
    x_ptr, alpha_in_ptr, w_ptr, bias_ptr, alpha_out_ptr, res_ptr, out_ptr,
    C_in, C_out, T_in, T_out,
    conv_stride, dilation, padding,
    KSIZE: tl.constexpr,
    BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_T: tl.constexpr,
    SNAKE_IN: tl.constexpr, HAS_BIAS: tl.constexpr, SNAKE_OUT: tl.constexpr, HAS_RES: tl.constexpr,
    PRECISION: tl.constexpr, FAST_SIN: tl.constexpr, INT64: tl.constexpr,
):
    """out[b, co, t] = epilogue(Σ_{ci,k} W[k, co, ci] · snake(x[b, ci, t·stride + k·dilation − padding])).

    x (B, C_in, T_in), out/res (B, C_out, T_out) contiguous; W packed to (KSIZE, C_out, C_in) so
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
    co_rows = co
    if INT64:
        co_rows = co.to(tl.int64)
    x_base = x_ptr + b * C_in * T_in
    t_in0 = t * conv_stride - padding

    acc = tl.zeros((BLOCK_CO, BLOCK_T), dtype=tl.float32)
    n_ci = tl.cdiv(C_in, BLOCK_CI)
    for kk in range(0, n_ci * KSIZE):
        ci = (kk // KSIZE) * BLOCK_CI + tl.arange(0, BLOCK_CI)
        k = kk % KSIZE
        ci_ok = ci < C_in
        ci_rows = ci
        if INT64:
            ci_rows = ci.to(tl.int64)
        pos = t_in0 + k * dilation
        # Masked (padding) positions load 0 and snake(0) = 0, so 'same'/zero padding stays exact.
        x_mask = ci_ok[:, None] & ((pos >= 0) & (pos < T_in))[None, :]
        xv = tl.load(x_base + ci_rows[:, None] * T_in + pos[None, :], mask=x_mask, other=0.0)
        w = tl.load(w_ptr + (k * C_out + co[:, None]) * C_in + ci[None, :],
                    mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
        if SNAKE_IN:
            a = tl.load(alpha_in_ptr + ci, mask=ci_ok, other=1.0).to(tl.float32)
            xv = _math.snake(xv.to(tl.float32), a[:, None], _math.inverse_alpha(a)[:, None], FAST_SIN)
        acc = _math.dot(w, xv.to(w.dtype), acc, PRECISION)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(tl.float32)[:, None]
    if SNAKE_OUT:
        a = tl.load(alpha_out_ptr + co, mask=co_ok, other=1.0).to(tl.float32)
        acc = _math.snake(acc, a[:, None], _math.inverse_alpha(a)[:, None], FAST_SIN)
    out_off = b * C_out * T_out + co_rows[:, None] * T_out + t[None, :]
    out_mask = co_ok[:, None] & t_ok[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out_off, mask=out_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def conv_config(c_out: int, c_in: int, ksize: int, dtype: torch.dtype, int64: bool = False) -> dict:
    """Block sizes and launch options of _snake_conv1d_kernel, spill-free under Triton 3.6 and 3.9
    (sass numbers in the module docstring). Every dot dimension is >= 16 (the GPU compiler's
    minimum) even where the interpreter accepts less."""
    if dtype == torch.float32:
        # FFMA (ieee) or TF32 dots; 3 stages: with 2, Triton 3.6 spilled k10 / k3 on sm_90.
        return dict(BLOCK_CO=min(64, pow2(c_out)), BLOCK_CI=16, BLOCK_T=64, num_warps=8, num_stages=3)
    if ksize == 1:
        # 1×1 + residual epilogue: 128×64×128 spills on sm_90; 64×64×128 is 146 regs.
        return dict(BLOCK_CO=min(64, pow2(c_out)), BLOCK_CI=min(64, pow2(c_in)), BLOCK_T=128, num_warps=8,
                    num_stages=3)
    # Snake prologue is recomputed per tap per C_out block: the widest C_out block halves it. With
    # 64-bit offsets that tile spilled 58 LDL on sm_80 (Triton 3.9): half the C_out block there.
    return dict(BLOCK_CO=min(64 if int64 else 128, pow2(c_out)), BLOCK_CI=min(32, pow2(c_in)), BLOCK_T=128,
                num_warps=8, num_stages=3)


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
    if bf16_in_interpreter(x):
        f = float_or_none
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
    w = _pack.taps_first(weight)
    if residual is not None:
        residual = residual.contiguous()
        if residual.shape != out.shape:
            raise ValueError(f"snake_conv1d: residual has shape {tuple(residual.shape)}, the output {tuple(out.shape)}")
    int64 = needs_int64_offsets(x, out)
    cfg, launch = split_launch_options(conv_config(c_out, c_in, ksize, x.dtype, int64))
    grid = (triton.cdiv(t_out, cfg["BLOCK_T"]), triton.cdiv(c_out, cfg["BLOCK_CO"]), batch)
    dummy = w
    _snake_conv1d_kernel[grid](
        x, flat(alpha_in) if alpha_in is not None else dummy, w,
        flat(bias) if bias is not None else dummy,
        flat(alpha_out) if alpha_out is not None else dummy,
        residual if residual is not None else dummy, out,
        c_in, c_out, t_in, t_out, stride, dilation, padding,
        KSIZE=ksize, SNAKE_IN=alpha_in is not None, HAS_BIAS=bias is not None,
        SNAKE_OUT=alpha_out is not None, HAS_RES=residual is not None,
        PRECISION=_math.conv_dot_precision(x), FAST_SIN=_math.fast_sin(x),
        INT64=int64, **cfg, **launch,
    )
    return out


def snake_conv_transpose1d_launch(x, alpha, weight, bias, stride, padding, output_padding):
    """This backend's Snake, then the vendor transposed conv."""
    from .snake import snake_op

    return torch.nn.functional.conv_transpose1d(snake_op(x.contiguous(), alpha), weight, bias, stride=stride,
                                                padding=padding, output_padding=output_padding)


@torch.library.custom_op("xcodec_fast_triton::snake_conv1d", mutates_args=())
def snake_conv1d_op(
    x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: int, padding: int
) -> torch.Tensor:
    return snake_conv1d_launch(x, alpha, weight, bias, stride, padding)


@snake_conv1d_op.register_fake
def _(x, alpha, weight, bias, stride, padding):
    t_out = conv_output_length(x.shape[-1], weight.shape[-1], stride, padding)
    return x.new_empty(x.shape[0], weight.shape[0], t_out)


@torch.library.custom_op("xcodec_fast_triton::snake_conv_transpose1d", mutates_args=())
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


@register("snake_conv1d", "triton")
def snake_conv1d(x, alpha, weight, bias, stride, padding):
    return snake_conv1d_op(x, alpha, weight, bias, int(stride), int(padding))


@register("snake_conv_transpose1d", "triton")
def snake_conv_transpose1d(x, alpha, weight, bias, stride, padding, output_padding):
    return snake_conv_transpose1d_op(x, alpha, weight, bias, int(stride), int(padding), int(output_padding))


# Compile check (_compile.py): every launch configuration snake_conv1d_launch picks at the real
# model's sites, from the same config table, in each math mode and offset width that can run.


def conv_compile_config(label, dtype, c_out, c_in, ksize, snake_in, snake_out, has_res, precision="ieee",
                        int64=False):
    cfg, launch = split_launch_options(conv_config(c_out, c_in, ksize, dtype, int64))
    types = {n: dtype for n in ("x_ptr", "alpha_in_ptr", "w_ptr", "bias_ptr", "alpha_out_ptr", "res_ptr", "out_ptr")}
    types.update({n: "i32" for n in ("C_in", "C_out", "T_in", "T_out", "conv_stride", "dilation", "padding")})
    const = dict(KSIZE=ksize, SNAKE_IN=snake_in, HAS_BIAS=True, SNAKE_OUT=snake_out, HAS_RES=has_res,
                 PRECISION=precision, FAST_SIN=dtype != torch.float32, INT64=int64, **cfg)
    blocks = "x".join(str(cfg[k]) for k in ("BLOCK_CO", "BLOCK_CI", "BLOCK_T"))
    name = f"snake_conv1d/{label}[{mode_label(dtype, precision, int64)},{blocks}]"
    return kernel_config(name, _snake_conv1d_kernel, types, const, **launch, enable_fp_fusion=True,
                         expect_tensor_cores=precision == "tf32" or dtype != torch.float32)


COMPILE_CONFIGS = unique_configs(
    conv_compile_config(f"{site.where}_k{p['kernel']}_s{p['stride']}", dtype, p["out_channels"], p["in_channels"],
                        p["kernel"], True, False, False, precision, int64)
    for site in default_model_sites() if site.op == "snake_conv1d"
    for p in [site.params]
    for dtype, precision in MATH_MODES
    for int64 in (False, True)
)
