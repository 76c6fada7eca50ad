"""One table of the tolerances the parity tests hold each path to, and the float64 reference.

Every number here is a claim the README makes; change one only with a measurement that says why.
"""

import torch

# RVQ near ties: a code may differ from eager's only where the two choices' scores are within this
# much of each other, relative to |residual|^2 + max|codeword|^2, checked in float64.
TIE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# Triton convolutions against a float64 reference, relative to the output's scale.
TRITON_CONV = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# TF32 dots (fp32 convs on a GPU while torch.backends.cudnn.allow_tf32 is on): 10-bit mantissa
# operands, fp32 accumulation.
TRITON_CONV_TF32 = 5e-3

# Decoded audio against transformers' (or eager's), relative to its peak: every backend, fp32.
AUDIO_VS_REFERENCE = 1e-5

# Chunked / streamed decode against the whole decode, relative to its peak, per backend: oneDNN's
# and MKL's summation order depends on a call's width, so windows round differently (measured up
# to 6e-7 tiny, 2.4e-6 full size, on a 2-core AMD EPYC VM).
CHUNKED_DECODE = {"eager": 5e-6, "native": 5e-6, "triton": 5e-6}


def to_reference(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the float64 CPU tensor references are computed in."""
    return x.detach().to("cpu", torch.float64)
