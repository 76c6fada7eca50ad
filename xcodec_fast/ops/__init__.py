"""The one dispatch point: every hot op of the model is a function here.

Model modules call these functions and never know which backend runs them. Each function checks
its inputs (so that a bad call is a clear error whatever the backend) and hands them to the
implementation chosen by :mod:`xcodec_fast.ops.backend`.

Shape, dtype and device checks are free and always run. The checks on *values* (finite inputs to
``rvq_encode``, code range in ``rvq_decode`` / ``dequantize_project``) cost a reduction and a GPU->CPU
sync, which CUDA-graph capture and ``torch.compile(fullgraph=True)`` cannot contain, so they are
skipped while a graph is being captured or compiled, and inside :func:`skip_value_checks`, which
callers that validated the same values already use (``XcodecModel.decode`` checks the codes at its
entry).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

from . import eager  # noqa: F401  (registers the reference implementations)
from . import grid
from .backend import (
    BACKENDS,
    CHOICES,
    BackendUnavailableError,
    availability,
    current_backend,
    describe,
    implementation,
    prepare,
    use_backend,
)

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Every op of the dispatch point; each backend implements some of them (eager all).
OPS = (
    "snake",
    "add_snake",
    "residual_unit",
    "snake_conv1d",
    "snake_conv_transpose1d",
    "conv1d",
    "conv1d_time_major",
    "rvq_encode",
    "rvq_decode",
    "dequantize_project",
    "linear",
)

__all__ = [
    "OPS",
    "BACKENDS",
    "CHOICES",
    "BackendUnavailableError",
    "availability",
    "current_backend",
    "describe",
    "prepare",
    "use_backend",
    "skip_value_checks",
    "snake_conv_transpose1d_on_grid",
    "conv1d_on_grid",
    "snake_conv1d_on_grid",
    "decodes_on_grid",
    "runs_time_major",
    *OPS,
]

_values_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("xcodec_fast_values_trusted", default=False)


@contextlib.contextmanager
def skip_value_checks() -> Iterator[None]:
    """Inside this block the ops skip their data-dependent value checks (NaN/inf, code range): for
    callers that already validated those values, to save a reduction and a device sync per call.
    Out-of-range codes are then undefined behaviour (an out-of-bounds gather on the GPU)."""
    token = _values_trusted.set(True)
    try:
        yield
    finally:
        _values_trusted.reset(token)


def _check_values(t: torch.Tensor) -> bool:
    """Whether to run the value checks on ``t``: not when trusted, nor while torch.compile traces
    or a CUDA graph captures (a sync is illegal there; the caller validates its inputs outside)."""
    if torch.compiler.is_compiling() or _values_trusted.get():
        return False
    # is_current_stream_capturing raises on CPU-only builds; only CUDA tensors can be captured anyway.
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _check_float(name: str, op: str, t: torch.Tensor, ndim: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, float16 or bfloat16, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def _check_same(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is None:
            continue
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")


def _check_alpha(op: str, name: str, alpha: torch.Tensor, channels: int, x: torch.Tensor) -> None:
    _check_float(name, op, alpha)
    _check_same(op, "x", x, **{name: alpha})
    if alpha.numel() != channels:
        raise ValueError(f"{op}: {name} has {alpha.numel()} values for {channels} channels (shape {tuple(alpha.shape)})")


def _check_conv_weight(op: str, name: str, weight: torch.Tensor, x: torch.Tensor, in_dim: int) -> None:
    _check_float(name, op, weight, ndim=3)
    _check_same(op, "x", x, **{name: weight})
    if weight.shape[in_dim] != x.shape[1]:
        raise ValueError(
            f"{op}: {name} of shape {tuple(weight.shape)} expects {weight.shape[in_dim]} input channels, "
            f"x has {x.shape[1]}"
        )


def _check_bias(op: str, name: str, bias: torch.Tensor | None, channels: int, x: torch.Tensor) -> None:
    if bias is None:
        return
    _check_float(name, op, bias, ndim=1)
    _check_same(op, "x", x, **{name: bias})
    if bias.numel() != channels:
        raise ValueError(f"{op}: {name} has {bias.numel()} values for {channels} output channels")


def _run(op: str, device: torch.device, *args):
    _, fn = implementation(op, device)
    return fn(*args)


def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Snake activation ``x + sin(αx)² / (α + 1e-9)`` with one α per channel; x is (B, C, T)."""
    _check_float("x", "snake", x, ndim=3)
    _check_alpha("snake", "alpha", alpha, x.shape[1], x)
    return _run("snake", x.device, x, alpha)


def add_snake(x: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = x + h`` and ``snake(y)`` in one pass; returns both."""
    _check_float("x", "add_snake", x, ndim=3)
    _check_same("add_snake", "x", x, h=h)
    if h.shape != x.shape:
        raise ValueError(f"add_snake: h has shape {tuple(h.shape)}, x has {tuple(x.shape)}")
    _check_alpha("add_snake", "alpha", alpha, x.shape[1], x)
    return _run("add_snake", x.device, x, h, alpha)


def residual_unit(x, alpha1, weight1, bias1, dilation: int, alpha2, weight2, bias2) -> torch.Tensor:
    """DAC residual unit: ``x + conv1x1(snake(conv_k(snake(x), dilation)))`` with 'same' padding."""
    op = "residual_unit"
    _check_float("x", op, x, ndim=3)
    channels = x.shape[1]
    _check_alpha(op, "alpha1", alpha1, channels, x)
    _check_conv_weight(op, "weight1", weight1, x, in_dim=1)
    _check_bias(op, "bias1", bias1, weight1.shape[0], x)
    _check_alpha(op, "alpha2", alpha2, weight1.shape[0], x)
    if weight2.dim() != 3 or weight2.shape[1] != weight1.shape[0] or weight2.shape[0] != channels or weight2.shape[2] != 1:
        raise ValueError(
            f"{op}: weight2 must be ({channels}, {weight1.shape[0]}, 1) to close the residual, got {tuple(weight2.shape)}"
        )
    _check_float("weight2", op, weight2)
    _check_same(op, "x", x, weight2=weight2)
    _check_bias(op, "bias2", bias2, channels, x)
    if weight1.shape[-1] % 2 != 1:
        raise ValueError(f"{op}: kernel size must be odd for 'same' padding, got {weight1.shape[-1]}")
    if int(dilation) < 1:
        raise ValueError(f"{op}: dilation must be >= 1, got {dilation}")
    return _run(op, x.device, x, alpha1, weight1, bias1, int(dilation), alpha2, weight2, bias2)


def snake_conv1d(x, alpha, weight, bias, stride: int, padding: int) -> torch.Tensor:
    """``conv1d(snake(x), weight, bias, stride, padding)`` (the encoder's downsampling step)."""
    op = "snake_conv1d"
    _check_float("x", op, x, ndim=3)
    _check_alpha(op, "alpha", alpha, x.shape[1], x)
    _check_conv_weight(op, "weight", weight, x, in_dim=1)
    _check_bias(op, "bias", bias, weight.shape[0], x)
    if x.shape[-1] + 2 * padding < weight.shape[-1]:
        raise ValueError(
            f"{op}: input of {x.shape[-1]} frames is shorter than the kernel ({weight.shape[-1]}) after padding {padding}"
        )
    return _run(op, x.device, x, alpha, weight, bias, int(stride), int(padding))


def conv1d(x, weight, bias, stride: int, padding: int) -> torch.Tensor:
    """``conv1d(x, weight, bias, stride, padding)`` without Snake (the semantic model's feature encoder)."""
    op = "conv1d"
    _check_float("x", op, x, ndim=3)
    _check_conv_weight(op, "weight", weight, x, in_dim=1)
    _check_bias(op, "bias", bias, weight.shape[0], x)
    if int(stride) < 1 or int(padding) < 0:
        raise ValueError(f"{op}: stride must be >= 1 and padding >= 0, got stride {stride}, padding {padding}")
    if x.shape[-1] + 2 * padding < weight.shape[-1]:
        raise ValueError(
            f"{op}: input of {x.shape[-1]} frames is shorter than the kernel ({weight.shape[-1]}) after padding {padding}"
        )
    return _run(op, x.device, x, weight, bias, int(stride), int(padding))


def conv1d_time_major(x, weight, bias, stride: int, padding: int = 0, groups: int = 1) -> torch.Tensor:
    """conv1d on time-major activations: x (B, N, C_in) -> (B, T, C_out), the semantic model's layout
    where :func:`runs_time_major` (the feature encoder's convs, whose next conv then reads contiguous
    rows of frames; the positional conv, whose transformer takes (B, T, C) anyway)."""
    op = "conv1d_time_major"
    _check_float("x", op, x, ndim=3)
    _check_float("weight", op, weight, ndim=3)
    _check_same(op, "x", x, weight=weight)
    if int(groups) < 1 or weight.shape[0] % int(groups):
        raise ValueError(f"{op}: groups must be >= 1 and divide the {weight.shape[0]} output channels, got {groups}")
    if weight.shape[1] * int(groups) != x.shape[2]:
        raise ValueError(f"{op}: weight of shape {tuple(weight.shape)} in {groups} group(s) expects "
                         f"{weight.shape[1] * int(groups)} input channels, x (batch, frames, channels) has {x.shape[2]}")
    _check_bias(op, "bias", bias, weight.shape[0], x)
    if int(stride) < 1 or int(padding) < 0:
        raise ValueError(f"{op}: stride must be >= 1 and padding >= 0, got stride {stride}, padding {padding}")
    if x.shape[1] + 2 * int(padding) < weight.shape[-1]:
        raise ValueError(f"{op}: input of {x.shape[1]} frames is shorter than the kernel ({weight.shape[-1]}) "
                         f"after padding {padding}")
    return _run(op, x.device, x, weight, bias, int(stride), int(padding), int(groups))


def runs_time_major(device: torch.device) -> bool:
    """Whether the backend in force for ``device`` has its own :func:`conv1d_time_major` (native:
    polyphase GEMMs on contiguous frame rows), so that the feature encoder should keep its
    activations time-major; the eager reference keeps transformers' (B, C, T) convs."""
    return (implementation("conv1d_time_major", torch.device(device))[0] != "eager"
            and not torch.compiler.is_compiling())


def _check_transposed(op: str, x, alpha, weight, bias) -> None:
    _check_float("x", op, x, ndim=3)
    _check_alpha(op, "alpha", alpha, x.shape[1], x)
    _check_conv_weight(op, "weight", weight, x, in_dim=0)
    _check_bias(op, "bias", bias, weight.shape[1], x)
    if x.shape[-1] == 0:
        raise ValueError(f"{op}: input has no frames")


def snake_conv_transpose1d(x, alpha, weight, bias, stride: int, padding: int, output_padding: int) -> torch.Tensor:
    """``conv_transpose1d(snake(x), weight, bias, stride, padding, output_padding)`` (decoder upsampling)."""
    op = "snake_conv_transpose1d"
    _check_transposed(op, x, alpha, weight, bias)
    return _run(op, x.device, x, alpha, weight, bias, int(stride), int(padding), int(output_padding))


def snake_conv_transpose1d_on_grid(x, alpha, weight, bias, stride: int, padding: int, output_padding: int,
                                   block: int) -> torch.Tensor:
    """:func:`snake_conv_transpose1d` for decode windows that start on a grid of ``block`` input
    frames (``XcodecModel.decoder_grid``). Where :func:`decodes_on_grid` (the native backend) every
    output frame is computed independently of the input's width (its oneDNN-engine GEMM, or fixed
    blocks), so a window gets the whole stream's values bit for bit; elsewhere one call (the eager
    reference keeps transformers' calls; windows are then within the decode tolerance)."""
    op = "snake_conv_transpose1d_on_grid"
    _check_transposed(op, x, alpha, weight, bias)
    if int(stride) < 1 or int(padding) < 0 or not 0 <= int(output_padding) < int(stride):
        raise ValueError(f"{op}: needs stride >= 1, padding >= 0 and 0 <= output_padding < stride, got stride "
                         f"{stride}, padding {padding}, output_padding {output_padding}")
    _check_block(op, block)
    if _windows_on_grid(x):
        from . import native

        return native.snake_conv_transpose1d_on_grid(x, alpha, weight, bias, int(stride), int(padding),
                                                     int(output_padding), int(block))
    return snake_conv_transpose1d(x, alpha, weight, bias, stride, padding, output_padding)


def conv1d_on_grid(x, weight, bias, padding: int, block: int) -> torch.Tensor:
    """``F.conv1d`` (stride 1) for decode windows on a grid of ``block`` frames: where
    :func:`decodes_on_grid` on fixed blocks of the grid (oneDNN picks its algorithm by width and
    batch), so windows get the whole stream's values; elsewhere one call, as transformers."""
    op = "conv1d_on_grid"
    _check_conv_on_grid(op, x, weight, bias, padding, block)
    if _windows_on_grid(x):
        return grid.blocked_conv1d(x, weight, bias, int(padding), int(block))
    return torch.nn.functional.conv1d(x, weight, bias, padding=int(padding))


def snake_conv1d_on_grid(x, alpha, weight, bias, padding: int, block: int) -> torch.Tensor:
    """``F.conv1d(snake(x, alpha), weight, bias, padding=padding)`` (the decoder's last conv) for
    decode windows on a grid of ``block`` frames: where :func:`decodes_on_grid` width-invariant
    (native's GEMM kernels, or fixed blocks); elsewhere Snake then one conv, as transformers."""
    op = "snake_conv1d_on_grid"
    _check_conv_on_grid(op, x, weight, bias, padding, block)
    _check_alpha(op, "alpha", alpha, x.shape[1], x)
    if _windows_on_grid(x):
        from . import native

        return native.snake_conv1d_on_grid(x, alpha, weight, bias, int(padding), int(block))
    return torch.nn.functional.conv1d(snake(x, alpha), weight, bias, padding=int(padding))


def decodes_on_grid(device: torch.device) -> bool:
    """Whether the backend in force for ``device`` computes decode windows on the decoder's grid
    bit for bit like the whole decode (the native backend; see modeling/acoustic.py)."""
    return implementation("snake_conv_transpose1d", torch.device(device))[0] == "native"


def _windows_on_grid(x: torch.Tensor) -> bool:
    """Whether a grid op runs its width-invariant kernels for ``x`` (not while torch.compile
    traces: it sees the plain call, as transformers makes it)."""
    return decodes_on_grid(x.device) and not torch.compiler.is_compiling()


def _check_conv_on_grid(op: str, x, weight, bias, padding, block) -> None:
    _check_float("x", op, x, ndim=3)
    _check_conv_weight(op, "weight", weight, x, in_dim=1)
    _check_bias(op, "bias", bias, weight.shape[0], x)
    if int(padding) < 0 or x.shape[-1] + 2 * int(padding) < weight.shape[-1]:
        raise ValueError(f"{op}: input of {x.shape[-1]} frames with padding {padding} is shorter than the kernel "
                         f"({weight.shape[-1]}), or the padding is negative")
    _check_block(op, block)


def _check_block(op: str, block) -> None:
    if int(block) < 1:
        raise ValueError(f"{op}: block must be at least 1 frame, got {block}")


def _check_codebooks(op: str, codebooks: torch.Tensor) -> None:
    _check_float("codebooks", op, codebooks, ndim=3)


def rvq_encode(
    x: torch.Tensor, codebooks: torch.Tensor, codebook_sq_norms: torch.Tensor, num_quantizers: int
) -> torch.Tensor:
    """Residual VQ: x (B, D, T) -> codes (B, num_quantizers, T) int64, nearest codeword per stage."""
    op = "rvq_encode"
    _check_float("x", op, x, ndim=3)
    _check_codebooks(op, codebooks)
    _check_same(op, "x", x, codebooks=codebooks)
    if codebooks.shape[2] != x.shape[1]:
        raise ValueError(f"{op}: codebooks of dim {codebooks.shape[2]} but x has {x.shape[1]} channels")
    if codebook_sq_norms.shape != codebooks.shape[:2] or codebook_sq_norms.device != x.device:
        raise ValueError(
            f"{op}: codebook_sq_norms must be {tuple(codebooks.shape[:2])} on {x.device}, "
            f"got {tuple(codebook_sq_norms.shape)} on {codebook_sq_norms.device}"
        )
    if not 1 <= int(num_quantizers) <= codebooks.shape[0]:
        raise ValueError(f"{op}: num_quantizers must be in 1..{codebooks.shape[0]}, got {num_quantizers}")
    if x.shape[2] == 0:
        return torch.empty(x.shape[0], int(num_quantizers), 0, dtype=torch.long, device=x.device)
    if _check_values(x) and not torch.isfinite(x).all():
        raise ValueError(f"{op}: x holds NaN or infinite values; codes would be meaningless")
    return _run(op, x.device, x, codebooks, codebook_sq_norms, int(num_quantizers))


def _check_codes(op: str, codes: torch.Tensor, codebooks: torch.Tensor) -> None:
    if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"{op}: codes must be an integer tensor, got {got}")
    if codes.dim() != 3:
        raise ValueError(f"{op}: codes must be (batch, num_quantizers, frames), got shape {tuple(codes.shape)}")
    if codes.device != codebooks.device:
        raise ValueError(f"{op}: codes are on {codes.device} but codebooks on {codebooks.device}")
    if not 1 <= codes.shape[1] <= codebooks.shape[0]:
        raise ValueError(f"{op}: codes have {codes.shape[1]} quantizers; this model has 1..{codebooks.shape[0]}")
    if codes.numel() and _check_values(codes):
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= codebooks.shape[1]:
            raise ValueError(f"{op}: codes must lie in [0, {codebooks.shape[1] - 1}], got values in [{low}, {high}]")


def rvq_decode(codes: torch.Tensor, codebooks: torch.Tensor) -> torch.Tensor:
    """codes (B, Q, T) -> Σ_q codebooks[q][codes[:, q]] as (B, D, T)."""
    _check_codebooks("rvq_decode", codebooks)
    _check_codes("rvq_decode", codes, codebooks)
    return _run("rvq_decode", codebooks.device, codes.long(), codebooks)


def dequantize_project(codes, codebooks, proj_weight, proj_bias, projected_codebooks=None) -> torch.Tensor:
    """codes (B, Q, T) -> Linear(proj)(Σ_q codeword) as (B, D_out, T); the decoder's input."""
    op = "dequantize_project"
    _check_codebooks(op, codebooks)
    _check_codes(op, codes, codebooks)
    _check_float("proj_weight", op, proj_weight, ndim=2)
    _check_same(op, "codebooks", codebooks, proj_weight=proj_weight, proj_bias=proj_bias)
    if proj_weight.shape[1] != codebooks.shape[2]:
        raise ValueError(f"{op}: proj_weight {tuple(proj_weight.shape)} does not take {codebooks.shape[2]}-dim codewords")
    if projected_codebooks is not None and projected_codebooks.shape != (*codebooks.shape[:2], proj_weight.shape[0]):
        raise ValueError(f"{op}: projected_codebooks has shape {tuple(projected_codebooks.shape)}")
    return _run(op, codebooks.device, codes.long(), codebooks, proj_weight, proj_bias, projected_codebooks)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` over x's last axis (the semantic model's and the codec's Linear layers)."""
    op = "linear"
    _check_float("x", op, x)
    _check_float("weight", op, weight, ndim=2)
    _check_same(op, "x", x, weight=weight)
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{op}: x of shape {tuple(x.shape)} does not fit weight {tuple(weight.shape)} "
                         f"(last axis must be {weight.shape[1]})")
    _check_bias(op, "bias", bias, weight.shape[0], x)
    return _run(op, x.device, x, weight, bias)
