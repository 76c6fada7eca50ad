"""Triton math every kernel of the backend shares: Snake, sin², the dot precision switch.

One definition so that the standalone Snake and the Snake inside the conv kernels compute the same
numbers the same way, under every Triton version the GPU machines run.

sin² comes from an FMA-only range-reduced polynomial (fp32, |error| < 2.3e-7 for |v| < 1e5), not
tl.sin: libdevice sinf carries a Payne-Hanek branch for huge arguments with a local array, which
took the conv7 kernel from 111 to 255 registers and a 48-byte stack on sm_90 (Triton 3.9), and
made every standalone Snake config spill under Triton 3.6 (32 B stack, 12 LDL / 8 STL). sin² has
period π, so one Cody-Waite reduction by π (3-part constant, k·PI_A exact for |k| < 2^17) and an
odd Taylor polynomial on [-π/2, π/2] suffice; the interpreter, which has no libdevice, runs it
too. FAST_SIN (half-precision operands on a GPU) swaps the polynomial for MUFU.SIN on the reduced
argument (|error| ~ 5e-7, far below fp16/bf16 rounding).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def sin_squared(v, FAST_SIN: tl.constexpr):
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
def inverse_alpha(alpha):
    # eager: (α + 1e-9).reciprocal(), correctly rounded; plain "/" is approximate on a GPU.
    return tl.math.div_rn(tl.full(alpha.shape, 1.0, tl.float32), alpha + 1e-9)


@triton.jit
def snake(v, alpha, inv_alpha, FAST_SIN: tl.constexpr):
    # eager's order of operations: v + (1/(α+1e-9)) · sin(αv)².
    return v + inv_alpha * sin_squared(alpha * v, FAST_SIN)


# The exact precision as a constexpr, for kernels whose dots are never TF32 (RVQ scores).
IEEE: tl.constexpr = tl.constexpr("ieee")


@triton.jit
def dot(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b; PRECISION is "ieee" (exact fp32 FMAs; ``IEEE``) or "tf32" (fp32 on tensor
    cores). Half-precision operands run on tensor cores either way, accumulating in fp32."""
    return tl.dot(a, b, acc, input_precision=PRECISION)


def conv_dot_precision(x: torch.Tensor) -> str:
    """The math mode of the conv dots for ``x``, following torch's own switch for convolutions:
    TF32 for fp32 CUDA tensors while ``torch.backends.cudnn.allow_tf32`` is on (torch's default,
    so the baseline's cuDNN convs use it too), IEEE fp32 otherwise. RVQ scores never use this:
    they are always IEEE, so codes equal eager's."""
    if x.dtype == torch.float32 and x.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


def fast_sin(x: torch.Tensor) -> bool:
    """MUFU.SIN for half-precision tensors on a GPU; the polynomial everywhere else."""
    return x.device.type == "cuda" and x.dtype != torch.float32
