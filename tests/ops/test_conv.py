"""snake_conv1d and snake_conv_transpose1d (xcodec_fast.ops) on every backend that implements them,
against eager.

Triton runs under its interpreter on CPU (tests/conftest.py), so its shapes stay tiny there; with
CUDA they include the model's real channel counts.
"""

import pytest
import torch

import tolerances
from op_cases import (
    CUDA,
    TRITON_DEVICE,
    TRITON_DTYPES,
    backend_params,
    dac_weights,
    down_inputs,
    fp32_args,
    make_input,
    run,
    up_inputs,
)
from xcodec_fast.ops import eager

STRIDES = (2, 4, 5, 8)
# (batch, in channels, out channels, frames); native's outputs have 2x (strided) or 1/2x
# (transposed) its input channels.
NATIVE_CONV_SHAPES = [(1, 3, 6, 64), (2, 64, 128, 321)]
NATIVE_TRANSPOSE_SHAPES = [(1, 3, 1, 64), (2, 64, 32, 321)]
TRITON_CONV_CHANNELS = [(3, 5), (16, 24)] if not CUDA else [(3, 5), (64, 128), (256, 512), (512, 1024)]
TRITON_CONV_SHAPES = [(2, *c, t) for c in TRITON_CONV_CHANNELS for t in ([9, 40] if not CUDA else [9, 321, 16000])]
TRITON_TRANSPOSE_CHANNELS = [(5, 3), (24, 16)] if not CUDA else [(5, 3), (128, 64), (1024, 512)]
TRITON_TRANSPOSE_SHAPES = [(2, *c, t) for c in TRITON_TRANSPOSE_CHANNELS for t in ([1, 7] if not CUDA else [1, 7, 2001])]


def cases(native, triton):
    return (backend_params("native", [(st, shape, torch.float32) for st in STRIDES for shape in native])
            + backend_params("triton", [(st, shape, dtype) for st in STRIDES for shape in triton for dtype in TRITON_DTYPES]))


@pytest.fixture(autouse=True)
def ieee_fp32(monkeypatch):
    """fp32 is held to IEEE here; TF32 (torch's default for convs) has its own test (test_triton_backend.py)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def conv1d_inputs(backend, stride, shape, dtype):
    """The strided conv's arguments as each backend's cases have always been drawn."""
    batch, c_in, c_out, frames = shape
    if backend == "native":
        x, alpha = make_input(batch, c_in, frames)
        w, b = dac_weights(c_in, c_out, 2 * stride)
        return (x, alpha, w, b, stride, (stride + 1) // 2)
    assert batch == 2  # Triton's draws are for two items
    return down_inputs(c_in, c_out, frames, stride, dtype, seed=stride * 100 + frames)


def transpose_inputs(backend, stride, shape, dtype):
    batch, c_in, c_out, frames = shape
    if backend == "native":
        x, alpha = make_input(batch, c_in, frames)
        w, b = dac_weights(c_in, c_out, 2 * stride, transpose=True)
        return (x, alpha, w, b, stride, (stride + 1) // 2, stride % 2)
    assert batch == 2
    return up_inputs(c_in, c_out, frames, stride, dtype, seed=stride * 10 + frames)


def assert_matches_fp32_eager(out, op, args, backend):
    """Within the backend's bound (tests/tolerances.py) of eager evaluated in fp32 on the same inputs."""
    expected = getattr(eager, op)(*fp32_args(args))
    assert out.dtype == args[0].dtype and out.shape == expected.shape
    tolerances.assert_close(out.float(), expected, tolerances.CONV[backend, args[0].dtype])


@pytest.mark.parametrize("backend,stride,shape,dtype", cases(NATIVE_CONV_SHAPES, TRITON_CONV_SHAPES))
def test_snake_conv1d_matches_eager(backend, stride, shape, dtype):
    args = conv1d_inputs(backend, stride, shape, dtype)
    assert_matches_fp32_eager(run(backend, "snake_conv1d", *args), "snake_conv1d", args, backend)


@pytest.mark.parametrize("backend,stride,shape,dtype", cases(NATIVE_TRANSPOSE_SHAPES, TRITON_TRANSPOSE_SHAPES))
def test_snake_conv_transpose1d_matches_eager(backend, stride, shape, dtype):
    args = transpose_inputs(backend, stride, shape, dtype)
    out = run(backend, "snake_conv_transpose1d", *args)
    assert_matches_fp32_eager(out, "snake_conv_transpose1d", args, backend)
    if shape[-1] == 1:
        with pytest.raises(ValueError, match="no frames"):
            run(backend, "snake_conv_transpose1d", args[0][..., :0], *args[1:])


@pytest.mark.parametrize("backend", backend_params("native") + backend_params("triton"))
def test_snake_conv1d_without_bias_matches_eager_and_too_short_input_is_an_error(backend):
    x, alpha, w, _, stride, padding = conv1d_inputs(backend, 4, (2, 3, 5, 9), torch.float32)
    args = (x, alpha, w, None, stride, padding)
    assert_matches_fp32_eager(run(backend, "snake_conv1d", *args), "snake_conv1d", args, backend)
    with pytest.raises(ValueError, match="shorter than the kernel"):
        run(backend, "snake_conv1d", x[..., :2], alpha, w, None, stride, padding)


# Native's snake + strided conv (C_in <= 256) and snake + transposed conv are chunked implicit GEMMs:
# phases of the stride, im2col, one GEMM (MKL's or oneDNN's). Shapes cover kernels that are not multiples of the
# stride, every output_padding below the stride, padding beyond the kernel's reach, one frame, and
# chunk sizes of 1 and 3 frames so that every chunk edge is crossed.
NATIVE_GEMM_TRANSPOSE = [  # in, out, frames, kernel, stride, padding, output_padding
    (3, 2, 7, 4, 2, 1, 0), (5, 3, 11, 10, 5, 3, 1), (4, 4, 9, 16, 8, 4, 0), (3, 5, 6, 3, 2, 0, 1),
    (2, 3, 5, 7, 3, 2, 2), (6, 2, 13, 5, 4, 1, 3), (1, 1, 1, 4, 2, 1, 0), (3, 2, 4, 1, 3, 0, 0),
    (2, 2, 8, 6, 2, 2, 1), (2, 3, 9, 5, 1, 2, 0), (64, 32, 321, 16, 8, 4, 0),
]
NATIVE_GEMM_CONV = [  # in, out, frames, kernel, stride, padding
    (3, 6, 64, 16, 8, 4), (5, 3, 11, 10, 5, 3), (4, 4, 9, 4, 2, 1), (3, 1, 100, 7, 1, 3), (2, 3, 5, 3, 2, 0),
    (6, 2, 13, 5, 4, 2), (1, 1, 1, 1, 1, 0), (3, 2, 20, 7, 3, 5), (64, 128, 321, 16, 8, 4),
]


def _gemm_matches_eager_at_every_chunk_size(backend, op, x, alpha, w, b, *geometry):
    """The native GEMM entry point of ``op`` at forced chunk sizes (0: its own) on each GEMM engine
    (MKL, oneDNN), and the op through the dispatch point, with and without bias, against eager."""
    from xcodec_fast.ops import native

    close = tolerances.CONV[backend, torch.float32]
    for bias in (b, None):
        args = (x, alpha, w, bias, *geometry)
        expected = getattr(eager, op)(*args)
        for chunk in (0, 1, 3):
            for onednn in (False, True):
                got = getattr(native.extension(), f"{op}_gemm")(*args, chunk, onednn=onednn)
                assert got.shape == expected.shape
                tolerances.assert_close(got, expected, close)
        tolerances.assert_close(run(backend, op, *args), expected, close)


@pytest.mark.parametrize("backend,case", backend_params("native", [(c,) for c in NATIVE_GEMM_TRANSPOSE]))
def test_snake_conv_transpose1d_gemm_matches_eager_at_every_chunk_size(backend, case):
    in_channels, out_channels, frames, kernel, stride, padding, output_padding = case
    x, alpha = make_input(2, in_channels, frames, seed=frames)
    w, b = dac_weights(in_channels, out_channels, kernel, seed=kernel, transpose=True)
    _gemm_matches_eager_at_every_chunk_size(backend, "snake_conv_transpose1d", x, alpha, w, b,
                                            stride, padding, output_padding)


@pytest.mark.parametrize("backend,case", backend_params("native", [(c,) for c in NATIVE_GEMM_CONV]))
def test_snake_conv1d_gemm_matches_eager_at_every_chunk_size(backend, case):
    in_channels, out_channels, frames, kernel, stride, padding = case
    x, alpha = make_input(2, in_channels, frames, seed=frames)
    w, b = dac_weights(in_channels, out_channels, kernel, seed=kernel)
    _gemm_matches_eager_at_every_chunk_size(backend, "snake_conv1d", x, alpha, w, b, stride, padding)


@pytest.mark.parametrize("backend", backend_params("native"))
def test_non_contiguous_and_half_inputs_match_eager(backend):
    w, b = dac_weights(16, 8, 10)
    wt, bt = dac_weights(16, 8, 10, transpose=True)
    base = torch.randn(2, 16, 140)
    alpha = torch.rand(16) + 0.1
    close = tolerances.CONV[backend, torch.float32]
    for x in (base[..., 20:120], torch.randn(2, 100, 16).transpose(1, 2), base[..., ::2]):
        tolerances.assert_close(run(backend, "snake_conv1d", x, alpha, w, b, 5, 3),
                                eager.snake_conv1d(x, alpha, w, b, 5, 3), close)
        tolerances.assert_close(run(backend, "snake_conv_transpose1d", x, alpha, wt, bt, 5, 3, 1),
                                eager.snake_conv_transpose1d(x, alpha, wt, bt, 5, 3, 1), close)
    x = base[..., :100]
    for dtype in (torch.bfloat16, torch.float16):
        down = (x.to(dtype), alpha.to(dtype), w.to(dtype), b.to(dtype), 5, 3)
        up = (x.to(dtype), alpha.to(dtype), wt.to(dtype), bt.to(dtype), 5, 3, 1)
        for op, args in (("snake_conv1d", down), ("snake_conv_transpose1d", up)):
            got = run(backend, op, *args)
            exact = getattr(eager, op)(*fp32_args(args))
            assert got.dtype == dtype
            # fp32 compute on the reduced inputs, one rounding at the end: within an ulp of that result.
            tolerances.assert_close(got.float(), exact, tolerances.ONE_ROUNDING[backend, dtype])


# conv1d (no Snake): the semantic feature encoder's convs, HuBERT's kernel/stride pairs and odd sizes.
PLAIN_CONV_CASES = [(1, 1, 8, 161, 10, 5), (2, 8, 8, 33, 3, 2), (2, 8, 8, 16, 2, 2), (2, 6, 4, 9, 3, 1), (1, 5, 3, 4, 4, 3)]


@pytest.mark.parametrize("backend", backend_params("native") + backend_params("triton"))
@pytest.mark.parametrize("case", PLAIN_CONV_CASES, ids=lambda c: "-".join(map(str, c)))
def test_conv1d_equals_eager_in_fp32(backend, case):
    """fp32 conv1d is ATen's on every backend (fp32 codes untouched): bit-equal to eager."""
    batch, c_in, c_out, frames, kernel, stride = case
    x, _ = make_input(batch, c_in, frames)
    w, b = dac_weights(c_in, c_out, kernel)
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    x, w, b = x.to(device), w.to(device), b.to(device)
    assert torch.equal(run(backend, "conv1d", x, w, b, stride, 0), eager.conv1d(x, w, b, stride, 0))
    assert torch.equal(run(backend, "conv1d", x, w, None, stride, 0), eager.conv1d(x, w, None, stride, 0))


def test_conv1d_bad_arguments_name_the_problem():
    from xcodec_fast import ops

    x, _ = make_input(1, 4, 20)
    w, b = dac_weights(4, 6, 3)
    with pytest.raises(ValueError, match="expects 4 input channels, x has 3"):
        ops.conv1d(x[:, :3], w, b, 1, 0)
    with pytest.raises(ValueError, match="bias has 5 values for 6 output channels"):
        ops.conv1d(x, w, b[:5], 1, 0)
    with pytest.raises(ValueError, match="stride must be >= 1 and padding >= 0, got stride 0"):
        ops.conv1d(x, w, b, 0, 0)
    with pytest.raises(ValueError, match="input of 2 frames is shorter than the kernel \\(3\\)"):
        ops.conv1d(x[..., :2], w, b, 1, 0)
