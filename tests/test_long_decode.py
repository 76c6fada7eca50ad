"""Chunked and streaming decode against the whole-stream decode, per backend."""

from __future__ import annotations

import random

import pytest
import torch

import tolerances
import xcodec_fast
from xcodec_fast import XcodecModel
from xcodec_fast.config import XcodecConfig, tiny_config
from xcodec_fast.modeling.chunking import plan_windows
from xcodec_fast.ops import tuning, winograd


BACKENDS = [name for name in ("eager", "native") if xcodec_fast.ops.availability(name)[0]]
CHUNK_REL_TOL = tolerances.CHUNKED_DECODE  # relative to the whole decode's peak; why: tests/tolerances.py


@pytest.fixture(scope="module")
def model():
    return XcodecModel.from_random(tiny_config(), seed=3)


def random_codes(batch: int, frames: int, seed: int, quantizers: int = 8) -> torch.Tensor:
    return torch.randint(0, 1024, (batch, quantizers, frames), generator=torch.Generator().manual_seed(seed))


def assert_close_to(whole: torch.Tensor, got: torch.Tensor, backend: str, what: str) -> None:
    assert got.shape == whole.shape, what
    scale = whole.abs().max().clamp_min(1e-3)
    error = (got - whole).abs().max()
    assert error <= CHUNK_REL_TOL[backend] * scale, f"{what}: max error {error:.3g} > {CHUNK_REL_TOL[backend]} x {scale:.3g}"


def test_context_is_derived_from_the_layers():
    left, right = XcodecModel.from_random(tiny_config(), seed=0).decoder_context()
    assert left >= 1 and right >= 1
    # Another stride layout gives another receptive field.
    other = tiny_config(acoustic_model_config={"upsampling_ratios": [2, 2, 8, 10], "downsampling_ratios": [10, 8, 2, 2]})
    assert XcodecModel.from_random(other, seed=0).decoder_context() != (left, right)


@pytest.mark.parametrize("config", ["tiny", "strides-2-2-8-10"])
def test_context_is_exactly_the_receptive_field(config):
    """A change at latent frame j reaches exactly output frames [j - right, j + left]: nothing
    outside (bit-for-bit: same shapes, same kernels), and the outermost frames do change."""
    overrides = {} if config == "tiny" else {
        "acoustic_model_config": {"upsampling_ratios": [2, 2, 8, 10], "downsampling_ratios": [10, 8, 2, 2]}
    }
    model = XcodecModel.from_random(tiny_config(**overrides), seed=4)
    left, right = model.decoder_context()
    frames, j = left + right + 20, right + 10
    hop = model.config.hop_length
    with xcodec_fast.use_backend("eager"), torch.inference_mode():
        latent = model.dequantize(random_codes(1, frames, seed=6))
        bumped = latent.clone()
        # large: the edge frames' share passes through every conv's outermost tap and must not be
        # absorbed by fp32 rounding (a bump of 50 vanished at the last frame on an AMD EPYC VM, one
        # of 1000 at the first once the code-rate convs ran on blocks)
        bumped[..., j] += 1e5
        diff = (model.decode_latent(bumped) - model.decode_latent(latent)).abs()[0, 0].view(frames, hop).amax(-1)
    changed = (diff > 0).nonzero().flatten().tolist()
    assert changed[0] == j - right and changed[-1] == j + left


def test_plan_windows_cover_the_stream_once():
    for total, chunk, left, right in [(1, 1, 3, 3), (10, 3, 4, 2), (7, 100, 5, 5), (20, 20, 1, 1)]:
        windows = list(plan_windows(total, chunk, left, right))
        assert [w.start for w in windows] == list(range(0, total, chunk))
        assert windows[-1].end == total
        for w in windows:
            assert w.low == max(0, w.start - left) and w.high == min(total, w.end + right)
    with pytest.raises(ValueError, match="chunk_frames must be at least 1"):
        list(plan_windows(5, 0, 1, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_equals_whole_for_every_length(model, backend):
    rng = random.Random(7)
    with xcodec_fast.use_backend(backend):
        for frames in range(1, 26):
            codes = random_codes(2, frames, seed=frames)
            whole = model.decode(codes, chunk_frames=frames).audio_values
            chunks = {1, 2, frames, frames + 5, rng.randint(1, frames), rng.randint(1, 2 * frames)}
            for chunk in sorted(chunks):
                got = model.decode(codes, chunk_frames=chunk).audio_values
                assert_close_to(whole, got, backend, f"{frames} frames, chunks of {chunk}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_with_code_lengths_equals_whole(model, backend):
    codes = random_codes(4, 57, seed=5, quantizers=3)
    lengths = torch.tensor([57, 1, 30, 44])
    with xcodec_fast.use_backend(backend):
        whole = model.decode(codes, audio_code_lengths=lengths, chunk_frames=57).audio_values
        for chunk in (1, 9, 13, 29, 56):
            got = model.decode(codes, audio_code_lengths=lengths, chunk_frames=chunk).audio_values
            assert_close_to(whole, got, backend, f"chunks of {chunk}")
            for index, length in enumerate(lengths.tolist()):
                assert (got[index, :, 320 * length :] == 0).all()


def test_windows_never_exceed_the_chunk_plus_context(model):
    """Peak memory follows the window: no decoder call sees more than left + grid - 1 + chunk + right frames."""
    seen = []
    decode_latent = model.decode_latent

    def spy(latent, *args):
        seen.append(latent.shape[-1])
        return decode_latent(latent, *args)

    model.decode_latent = spy
    try:
        model.decode(random_codes(1, 200, seed=2), chunk_frames=16)
    finally:
        del model.decode_latent
    left, right = model.decoder_context()
    # a window starts on the grid: up to grid - 1 frames more on the left (native)
    assert len(seen) == 13 and max(seen) <= left + model.window_grid() - 1 + 16 + right


def test_long_streams_chunk_by_default(model, monkeypatch):
    from xcodec_fast.modeling import codec

    monkeypatch.setattr(codec, "DECODE_CHUNK_FRAMES", 8)
    calls = []
    decode_latent = model.decode_latent
    model.decode_latent = lambda latent, *args: calls.append(latent.shape[-1]) or decode_latent(latent, *args)
    try:
        model.decode(random_codes(1, 8, seed=1))
        assert calls == [8]
        model.decode(random_codes(1, 30, seed=1))
        assert len(calls) == 1 + 4
    finally:
        del model.decode_latent


@pytest.mark.parametrize("chunk_frames", [None, 1, 4, 11])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_equals_whole(model, backend, chunk_frames):
    rng = random.Random(hash((backend, chunk_frames)) & 0xFFFF)
    with xcodec_fast.use_backend(backend):
        for trial in range(3):
            frames = rng.randint(1, 60)
            codes = random_codes(2, frames, seed=100 + trial)
            whole = model.decode(codes, chunk_frames=frames).audio_values
            stream = model.decode_stream(chunk_frames=chunk_frames)
            pieces, pushed = [], 0
            while pushed < frames:
                step = rng.choice([0, 1, 1, 2, 3, 7, 20])
                piece = stream.push(codes[..., pushed : pushed + step])
                pushed += min(step, frames - pushed)
                assert piece.shape[-1] == 320 * stream.frames_emitted - sum(p.shape[-1] for p in pieces)
                assert stream.frames_emitted <= max(0, pushed - stream.lookahead_frames)
                if chunk_frames is not None:
                    assert piece.shape[-1] % (320 * chunk_frames) == 0
                pieces.append(piece)
            pieces.append(stream.flush())
            assert_close_to(whole, torch.cat(pieces, dim=-1), backend, f"{frames} frames, chunk {chunk_frames}")


def test_stream_emits_as_soon_as_the_lookahead_arrives(model):
    stream = model.decode_stream()
    lookahead = stream.lookahead_frames
    codes = random_codes(1, lookahead + 3, seed=4)
    assert stream.push(codes[..., :lookahead]).shape == (1, 1, 0)
    assert stream.push(codes[..., lookahead : lookahead + 1]).shape == (1, 1, 320)
    assert stream.push(codes[..., lookahead + 1 :]).shape == (1, 1, 640)
    assert stream.flush().shape == (1, 1, 320 * lookahead)


def test_fixed_chunk_stream_decodes_one_window_shape(model):
    shapes = []
    decode_latent = model.decode_latent
    model.decode_latent = lambda latent, *args: shapes.append(tuple(latent.shape)) or decode_latent(latent, *args)
    try:
        stream = model.decode_stream(chunk_frames=6)
        codes = random_codes(3, 50, seed=8, quantizers=2)
        for start in range(0, 50, 7):
            stream.push(codes[..., start : start + 7])
        stream.flush()
    finally:
        del model.decode_latent
    assert set(shapes) == {(3, model.config.acoustic_model_config.hidden_size, stream.window_frames)}


def test_stream_errors(model):
    stream = model.decode_stream()
    with pytest.raises(ValueError, match="nothing was pushed"):
        stream.flush()
    stream.push(random_codes(2, 3, seed=1))
    with pytest.raises(ValueError, match=r"same batch and quantizers"):
        stream.push(random_codes(1, 3, seed=1))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1023\]"):
        stream.push(torch.full((2, 8, 2), 1024))
    stream.flush()
    with pytest.raises(RuntimeError, match="already flushed"):
        stream.flush()
    with pytest.raises(RuntimeError, match="was flushed"):
        stream.push(random_codes(2, 3, seed=1))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_frames must be a positive int"):
            model.decode_stream(chunk_frames=bad)
        with pytest.raises(ValueError, match="chunk_frames must be a positive int or None"):
            model.decode(random_codes(1, 3, seed=1), chunk_frames=bad)
    with pytest.raises(ValueError, match="needs a fixed chunk_frames"):
        model.decode_stream(cuda_graph=True)
    with pytest.raises(ValueError, match="needs a model on a CUDA device"):
        model.decode_stream(chunk_frames=4, cuda_graph=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_full_size_chunked_and_streamed_equal_whole(backend):
    model = XcodecModel.from_random(XcodecConfig(), seed=1)
    codes = random_codes(1, 60, seed=9)
    with xcodec_fast.use_backend(backend):
        whole = model.decode(codes, chunk_frames=60).audio_values
        for chunk in (1, 17):
            got = model.decode(codes, chunk_frames=chunk).audio_values
            assert_close_to(whole, got, backend, f"chunks of {chunk}")
        for chunk_frames in (25, None):
            stream = model.decode_stream(chunk_frames=chunk_frames)
            pieces = [stream.push(codes[..., i : i + 13]) for i in range(0, 60, 13)] + [stream.flush()]
            assert_close_to(whole, torch.cat(pieces, dim=-1), backend, f"stream of {chunk_frames}-frame chunks")


def test_eager_windows_are_as_accurate_as_the_whole_decode(tmp_path):
    """Eager keeps transformers' single calls, so its whole decode is transformers' bit for bit, and
    its windows (narrower calls, another summation order) part from it by fp32 rounding only: held
    against the float64 decode, they are as accurate as the whole decode."""
    import transformers

    from oracle import hf_config

    torch.manual_seed(11)
    reference = transformers.XcodecModel(hf_config(tiny_config())).eval()  # PyTorch's own init
    reference.save_pretrained(str(tmp_path))
    model = XcodecModel.from_pretrained(tmp_path, backend="eager")
    codes = random_codes(2, 41, seed=12)
    with torch.no_grad():
        exact = reference.double().decode(codes).audio_values
        whole = model.decode(codes, chunk_frames=41).audio_values
        own_error = (whole.double() - exact).abs().max().item()
        for chunk in (1, 3, 7, 13, 40):
            got = model.decode(codes, chunk_frames=chunk).audio_values
            error = (got.double() - exact).abs().max().item()
            assert error <= tolerances.CHUNKED_DECODE_FP32_ERRORS * own_error, (
                f"chunks of {chunk}: {error:.3g} from the float64 decode > "
                f"{tolerances.CHUNKED_DECODE_FP32_ERRORS} x the whole decode's {own_error:.3g}")


@pytest.mark.gpu
def test_cuda_graph_stream_equals_whole():
    model = XcodecModel.from_random(XcodecConfig(), seed=1).to("cuda")
    codes = random_codes(2, 120, seed=9).cuda()
    whole = model.decode(codes, chunk_frames=120).audio_values
    stream = model.decode_stream(chunk_frames=25, cuda_graph=True)
    pieces = [stream.push(codes[..., i : i + 10]) for i in range(0, 120, 10)] + [stream.flush()]
    assert_close_to(whole, torch.cat(pieces, dim=-1), "triton", "CUDA-graph stream")


@pytest.mark.skipif("native" not in BACKENDS, reason="native backend unavailable")
@pytest.mark.parametrize("m", winograd.FAST_TILE_SIZES)
@pytest.mark.parametrize("config", ["tiny", pytest.param("full", marks=pytest.mark.slow)])
def test_chunked_with_winograd_residual_units_equals_whole(m, config):
    """Where measured dispatch picks Winograd (F(4,7) where opted in), windows start on the tile grid
    and take the tiles' rounding reach as context: the chunked decode holds native's bound."""
    model = XcodecModel.from_random(tiny_config() if config == "tiny" else XcodecConfig(), seed=1)
    codes = random_codes(1, 60, seed=9)
    with xcodec_fast.use_backend("native"), tuning.forced("residual_unit", f"winograd{m}"), \
            winograd.fast_tiles(m not in winograd.DEFAULT_TILE_SIZES):
        whole = model.decode(codes, chunk_frames=60).audio_values
        for chunk in (1, 7, 17):
            assert_close_to(whole, model.decode(codes, chunk_frames=chunk).audio_values, "native", f"chunks of {chunk}")


@pytest.mark.slow
@pytest.mark.skipif("native" not in BACKENDS, reason="native backend unavailable")
@pytest.mark.parametrize("choice", ["gemm-onednn", "winograd2-onednn"])
def test_full_size_native_windows_are_bit_equal_on_width_invariant_kernels(choice):
    """With the residual units on oneDNN's brgemm engine (each output one dot product in a fixed
    order), every conv of the decode is width-invariant on the grid: bit-equal on any CPU."""
    model = XcodecModel.from_random(XcodecConfig(), seed=1)
    codes = random_codes(1, 60, seed=9)
    with xcodec_fast.use_backend("native"), tuning.forced("residual_unit", choice):
        whole = model.decode(codes, chunk_frames=60).audio_values
        for chunk in (1, 17):
            assert torch.equal(model.decode(codes, chunk_frames=chunk).audio_values, whole), f"chunks of {chunk}"
        stream = model.decode_stream(chunk_frames=25)
        pieces = [stream.push(codes[..., i : i + 13]) for i in range(0, 60, 13)] + [stream.flush()]
        assert torch.equal(torch.cat(pieces, dim=-1), whole), "stream of 25-frame chunks"
