"""One table of the tolerances the parity tests hold each path to, and the float64 reference.

Every number here is a claim the README makes; change one only with a measurement that says why.
Op tables are keyed by (backend, dtype): an op's tests run every backend that implements it, each
held to its own bound (tests/ops/test_<op>.py).
"""

from typing import NamedTuple

import torch


class Close(NamedTuple):
    """Bounds for torch.testing.assert_close; with ``of_peak`` atol is relative to max(1, peak
    |expected|), a floor for the values near 0 of a tensor whose largest values are big."""

    rtol: float
    atol: float
    of_peak: bool = False


EXACT = Close(0.0, 0.0)
_EPS16, _EPSBF16 = torch.finfo(torch.float16).eps, torch.finfo(torch.bfloat16).eps

# RVQ near ties: a code may differ from eager's only where the two choices' scores are within this
# much of each other, relative to |residual|^2 + max|codeword|^2, checked in float64.
TIE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# Snake and add_snake against eager evaluated in fp32 on the same (upcast) inputs.
SNAKE = {
    ("native", torch.float32): Close(1e-6, 1e-6, of_peak=True),  # bit-equal in practice; the bound allows libm differences
    ("native", torch.float16): Close(_EPS16, _EPS16),  # computed in fp32, rounded once
    ("native", torch.bfloat16): Close(_EPSBF16, _EPSBF16),  # the same, bf16's ulp
    ("triton", torch.float32): Close(4e-6, 4e-6),  # polynomial sin^2
}
# ...and, where a backend states it, within this many ulps of |expected| + 1/alpha: the
# sin^2/(alpha + 1e-9) term can exceed |out|, and its rounding sets the floor (a few fp32 ulps
# from the polynomial sin^2, one rounding on store for half inputs).
SNAKE_ULPS = {("triton", torch.float32): 4, ("triton", torch.float16): 1, ("triton", torch.bfloat16): 1}
# add_snake's y = x + h against eager's: one rounding of the same sum, so equal, except native's
# fp32 sum, held to its fp32 snake bound.
ADD_SNAKE_SUM = {
    ("native", torch.float32): SNAKE["native", torch.float32],
    ("native", torch.float16): EXACT,
    ("native", torch.bfloat16): EXACT,
    ("triton", torch.float32): EXACT,
    ("triton", torch.float16): EXACT,
    ("triton", torch.bfloat16): EXACT,
}

# The fused snake + conv ops (residual unit, strided and transposed conv) against eager evaluated in
# fp32 on the same (already rounded) inputs, atol relative to the output's peak.
CONV = {
    ("native", torch.float32): Close(1e-6, 1e-6, of_peak=True),  # chunked GEMMs sum in another order
    ("triton", torch.float32): Close(1e-5, 1e-5, of_peak=True),  # tiled dots sum in another order
    ("triton", torch.float16): Close(1e-2, 1e-2, of_peak=True),  # the same table: fp16 operands, fp32 accumulation
    ("triton", torch.bfloat16): Close(5e-2, 5e-2, of_peak=True),  # the same table: bf16 operands, fp32 accumulation
}

# The native residual unit with its k=7 conv as Winograd F(m, 7), fp32: max error against the
# float64 truth relative to its peak, per tile size m (the direct GEMM's is ~2e-7; measured by
# python -m xcodec_fast.benchmark.winograd, bench/results/winograd-error-*.json).
WINOGRAD = {2: 2e-6, 3: 1e-5, 4: 2e-5}

# The native bf16 residual unit on bf16 matrix units (oneDNN brgemm: bf16 operands, fp32
# accumulation) against eager evaluated in fp32 on the same bf16 inputs, relative to the output's
# peak (max(1, peak)): one bf16 eps. Measured at most 3.6e-3 over the test shapes, where eager's own
# bf16 path (rounding after every op) shows up to 5.2e-3; the tests also hold its RMS error below 0.9
# of eager's (measured 0.66-0.78).
BRGEMM_BF16 = _EPSBF16

# TF32 dots (fp32 convs on a GPU while torch.backends.cudnn.allow_tf32 is on): 10-bit mantissa
# operands, fp32 accumulation; max error relative to the float64 reference's peak.
TRITON_CONV_TF32 = 5e-3

# RVQ encode: the share of frames whose codes may part from eager's (each at a near tie): eager's
# half path rounds its distances to half.
RVQ_MISMATCH = {("triton", torch.float32): 0.01, ("triton", torch.float16): 0.1, ("triton", torch.bfloat16): 0.2}

# dequantize_project against its float64 truth, relative to the truth's peak: we project then sum,
# eager sums then projects, so both round differently.
DEQUANTIZE_PROJECT = {("triton", torch.float32): 1e-5, ("triton", torch.float16): 4e-3, ("triton", torch.bfloat16): 3e-2}

# Decoded audio against transformers' (or eager's), relative to its peak: every backend, fp32.
AUDIO_VS_REFERENCE = 1e-5

# Chunked / streamed decode against the whole decode, relative to its peak, per backend: oneDNN's
# and MKL's summation order depends on a call's width, so windows round differently (measured up
# to 6e-7 tiny, 2.4e-6 full size, on a 2-core AMD EPYC VM).
CHUNKED_DECODE = {"eager": 5e-6, "native": 5e-6, "triton": 5e-6}


def to_reference(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the float64 CPU tensor references are computed in."""
    return x.detach().to("cpu", torch.float64)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: Close) -> None:
    scale = max(expected.abs().max().item(), 1.0) if tol.of_peak and expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol * scale)
