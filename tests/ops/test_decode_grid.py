"""The decode grid: convs computed so that a window starting on the grid gets the whole input's
values bit for bit (native's chunked and streamed decode, modeling/acoustic.py), and the grid itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tolerances
import xcodec_fast
from xcodec_fast import XcodecModel, ops
from xcodec_fast.config import XcodecConfig, tiny_config
from xcodec_fast.modeling.chunking import plan_windows
from xcodec_fast.ops import eager, grid
from xcodec_fast.ops.winograd import tile_period
from xcodec_fast.sites import RESIDUAL_DILATIONS

NATIVE = ops.availability("native")[0]
needs_native = pytest.mark.skipif(not NATIVE, reason="native backend unavailable")
# (stride, kernel, padding, output_padding): the decoder's geometry (k = 2s, p = ceil(s/2),
# output_padding = s % 2) and ones that are not, down to kernels shorter than the stride and a
# padding as long as the kernel.
GEOMETRIES = [(2, 4, 1, 0), (3, 6, 2, 1), (5, 10, 3, 1), (8, 16, 4, 0), (3, 7, 1, 0), (3, 2, 0, 0), (3, 1, 1, 2)]


def transposed_inputs(channels_in: int, channels_out: int, kernel: int, frames: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, channels_in, frames, generator=g)
    alpha = torch.rand(channels_in, generator=g) + 0.3
    weight = torch.randn(channels_in, channels_out, kernel, generator=g) / math.sqrt(channels_in * kernel)
    return x, alpha, weight, torch.randn(channels_out, generator=g)


def blocked_eager(x, alpha, weight, bias, stride, padding, output_padding, block):
    return grid.blocked_snake_conv_transpose1d(eager.snake_conv_transpose1d, x, alpha, weight, bias, stride, padding,
                                               output_padding, block)


def native_on_grid(x, alpha, weight, bias, stride, padding, output_padding, block):
    with xcodec_fast.use_backend("native"):
        return ops.snake_conv_transpose1d_on_grid(x, alpha, weight, bias, stride, padding, output_padding, block)


GRID_CONVS = {"blocks": blocked_eager}
if NATIVE:
    GRID_CONVS["native"] = native_on_grid


@pytest.mark.parametrize("conv", GRID_CONVS)
@pytest.mark.parametrize("stride,kernel,padding,output_padding", GEOMETRIES)
@pytest.mark.parametrize("frames,block", [(1, 1), (2, 3), (13, 4), (40, 18), (41, 5)])
def test_grid_transposed_conv_equals_one_call(conv, stride, kernel, padding, output_padding, frames, block):
    x, alpha, weight, bias = transposed_inputs(6, 5, kernel, frames, seed=frames + stride)
    expected = eager.snake_conv_transpose1d(x.double(), alpha.double(), weight.double(), bias.double(), stride,
                                            padding, output_padding)
    got = GRID_CONVS[conv](x, alpha, weight, bias, stride, padding, output_padding, block)
    assert got.shape == expected.shape
    tolerances.assert_close(got.double(), expected, tolerances.ON_GRID_VS_WHOLE_CALL)


@pytest.mark.parametrize("conv", GRID_CONVS)
@pytest.mark.parametrize("stride,kernel,padding,output_padding", GEOMETRIES[:4])
def test_grid_window_equals_whole_bit_for_bit(conv, stride, kernel, padding, output_padding):
    """A window that starts on the grid: its frames away from its edges equal the whole input's."""
    block, frames = 6, 61
    x, alpha, weight, bias = transposed_inputs(24, 16, kernel, frames, seed=stride)
    whole = GRID_CONVS[conv](x, alpha, weight, bias, stride, padding, output_padding, block)
    for low, high in [(0, 9), (6, 20), (12, 61), (18, 31), (48, 61)]:
        window = GRID_CONVS[conv](x[..., low:high], alpha, weight, bias, stride, padding, output_padding, block)
        # outputs that read no frame outside the window (2 input frames reach past each edge here)
        first = low * stride + (2 * stride if low else 0)
        last = high * stride - (2 * stride if high < frames else 0)
        assert torch.equal(whole[..., first:last], window[..., first - low * stride : last - low * stride]), (low, high)


@needs_native
def test_native_grid_conv_in_bfloat16_runs_on_blocks():
    x, alpha, weight, bias = (t.bfloat16() for t in transposed_inputs(16, 8, 16, 60, seed=1))
    whole = native_on_grid(x, alpha, weight, bias, 8, 4, 0, 6)
    window = native_on_grid(x[..., 12:48], alpha, weight, bias, 8, 4, 0, 6)
    assert whole.dtype == torch.bfloat16 and torch.equal(whole[..., 14 * 8 : 46 * 8], window[..., 2 * 8 : 34 * 8])


def test_eager_keeps_transformers_single_calls():
    x, alpha, weight, bias = transposed_inputs(6, 5, 16, 30, seed=2)
    with xcodec_fast.use_backend("eager"):
        got = ops.snake_conv_transpose1d_on_grid(x, alpha, weight, bias, 8, 4, 0, 6)
        assert torch.equal(got, ops.snake_conv_transpose1d(x, alpha, weight, bias, 8, 4, 0))
        w1, b1 = torch.randn(7, 6, 7), torch.randn(7)
        assert torch.equal(ops.conv1d_on_grid(x, w1, b1, 3, 6), F.conv1d(x, w1, b1, padding=3))


def test_grid_ops_refuse_bad_arguments():
    x, alpha, weight, bias = transposed_inputs(2, 2, 4, 5, seed=0)
    with pytest.raises(ValueError, match="block must be at least 1 frame, got 0"):
        ops.snake_conv_transpose1d_on_grid(x, alpha, weight, bias, 2, 1, 0, 0)
    with pytest.raises(ValueError, match="0 <= output_padding < stride, got stride 2, padding 1, output_padding 2"):
        ops.snake_conv_transpose1d_on_grid(x, alpha, weight, bias, 2, 1, 2, 4)
    with pytest.raises(ValueError, match="block must be at least 1 frame, got -1"):
        ops.conv1d_on_grid(x, torch.randn(3, 2, 7), None, 3, -1)
    with pytest.raises(ValueError, match="input of 5 frames with padding 0 is shorter than the kernel \\(7\\)"):
        ops.conv1d_on_grid(x, torch.randn(3, 2, 7), None, 0, 4)
    with pytest.raises(ValueError, match="grid must be at least 1 frame, got 0"):
        list(plan_windows(10, 2, 1, 1, 0))


@pytest.mark.parametrize("frames,block,padding,kernel", [(1, 1, 3, 7), (5, 18, 3, 7), (40, 4, 3, 7), (37, 9, 1, 3)])
def test_blocked_conv1d_equals_one_call(frames, block, padding, kernel):
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(2, 6, frames, generator=g)
    weight, bias = torch.randn(5, 6, kernel, generator=g), torch.randn(5, generator=g)
    expected = F.conv1d(x.double(), weight.double(), bias.double(), padding=padding)
    got = grid.blocked_conv1d(x, weight, bias, padding, block)
    tolerances.assert_close(got.double(), expected, tolerances.ON_GRID_VS_WHOLE_CALL)
    if frames > block + 2 * kernel:  # a window on the grid: frames a kernel away from its edges as in the whole
        window = grid.blocked_conv1d(x[..., block:], weight, bias, padding, block)
        assert torch.equal(got[..., block + kernel :], window[..., kernel:])


@pytest.mark.parametrize("config", ["tiny", "full", "strides-2-2-8-10"])
def test_decoder_grid_is_a_multiple_of_every_tile_period(config):
    overrides = {"acoustic_model_config": {"upsampling_ratios": [2, 2, 8, 10], "downsampling_ratios": [10, 8, 2, 2]}}
    cfg = {"tiny": tiny_config(), "full": XcodecConfig(), "strides-2-2-8-10": tiny_config(**overrides)}[config]
    model = XcodecModel.from_random(cfg, seed=0)
    step = model.decoder_grid()
    assert step >= 16
    rate = 1
    for stride in cfg.acoustic_model_config.upsampling_ratios:
        rate *= stride
        for dilation in RESIDUAL_DILATIONS:  # a window on the grid starts on every residual unit's tile grid
            assert step * rate % tile_period(dilation) == 0
    if config == "full":
        assert step == 18  # F(2,7) and F(4,7) at dilation 9 repeat every 36 frames; at 8x the code rate 9 code frames are 72


def test_windows_start_on_the_grid():
    for total, chunk, left, right, step in [(100, 1, 10, 10, 18), (100, 7, 10, 10, 18), (50, 50, 10, 10, 18),
                                            (9, 2, 3, 3, 4)]:
        windows = list(plan_windows(total, chunk, left, right, step))
        assert [w.start for w in windows] == list(range(0, total, chunk))
        for w in windows:
            assert w.low % step == 0 and max(0, w.start - left) - step < w.low <= max(0, w.start - left)
            assert w.high == min(total, w.end + right)


@needs_native
@pytest.mark.parametrize("chunk_frames", [None, 4])
def test_native_stream_windows_start_on_the_grid(chunk_frames):
    model = XcodecModel.from_random(tiny_config(), seed=2)
    with xcodec_fast.use_backend("native"):
        stream = model.decode_stream(chunk_frames=chunk_frames)
        lows = []
        buffered = stream._buffered
        stream._buffered = lambda low, high: lows.append(low) or buffered(low, high)
        codes = torch.randint(0, 1024, (2, 8, 70), generator=torch.Generator().manual_seed(1))
        for start in range(0, 70, 9):
            stream.push(codes[..., start : start + 9])
        stream.flush()
    step = model.decoder_grid()
    assert len(lows) > 3 and all(low % step == 0 for low in lows), lows


def test_eager_windows_take_no_grid_context():
    model = XcodecModel.from_random(tiny_config(), seed=2)
    with xcodec_fast.use_backend("eager"):
        assert model.window_grid() == 1 and model.decode_stream(chunk_frames=4).window_frames == sum(
            model.decoder_context()) + 4


@needs_native
def test_native_transposed_conv_with_padding_as_long_as_the_kernel_runs_eager():
    """The chunked GEMM's task spans assume padding < kernel (every decoder's): such a conv goes to
    eager instead of crashing in the kernel."""
    x, alpha, weight, bias = transposed_inputs(4, 3, 1, 13, seed=3)
    expected = eager.snake_conv_transpose1d(x, alpha, weight, bias, 3, 1, 2)
    with xcodec_fast.use_backend("native"):
        assert torch.equal(ops.snake_conv_transpose1d(x, alpha, weight, bias, 3, 1, 2), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frames", [7, 40, 333])
def test_grid_last_conv_equals_snake_then_conv_and_is_width_invariant(dtype, frames):
    g = torch.Generator().manual_seed(frames)
    x, alpha = torch.randn(2, 8, frames, generator=g).to(dtype), (torch.rand(8, generator=g) + 0.3).to(dtype)
    weight, bias = (torch.randn(1, 8, 7, generator=g) / 8).to(dtype), torch.randn(1, generator=g).to(dtype)
    expected = F.conv1d(eager.snake(x.double(), alpha.double()), weight.double(), bias.double(), padding=3)
    bound = tolerances.ON_GRID_VS_WHOLE_CALL if dtype == torch.float32 else tolerances.ON_GRID_BF16
    for backend in ["eager"] + (["native"] if NATIVE else []):
        with xcodec_fast.use_backend(backend):
            got = ops.snake_conv1d_on_grid(x, alpha, weight, bias, 3, 5)
            assert got.dtype == dtype
            tolerances.assert_close(got.double(), expected, bound)
            if backend == "native" and frames > 20:  # a window on the grid: frames 3+ from its edges as in the whole
                window = ops.snake_conv1d_on_grid(x[..., 10:], alpha, weight, bias, 3, 5)
                assert torch.equal(got[..., 13:], window[..., 3:])
