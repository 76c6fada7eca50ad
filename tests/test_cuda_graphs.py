"""CUDA-graph replay (CudaGraphCodec) and the ops' capture-safe value checks.

Without a GPU: the value checks' skip rules (skip_value_checks, torch.compile fullgraph) and the
codec's argument / shape errors. With one: capture, replay on two inputs, compare to eager calls.
"""

import pytest
import torch

import xcodec_fast.ops as ops
from xcodec_fast.config import XcodecConfig, tiny_config
from xcodec_fast.cuda_graphs import CudaGraphCodec, _check_shape
from xcodec_fast.modeling import XcodecModel
from xcodec_fast.ops import backend


def _quantizer_inputs():
    g = torch.Generator().manual_seed(0)
    codebooks = torch.randn(2, 16, 4, generator=g)
    return codebooks, codebooks.pow(2).sum(-1), torch.randn(6, 4, generator=g), torch.randn(6, generator=g)


def test_value_checks_run_outside_skip_value_checks_only():
    codebooks, norms, weight, bias = _quantizer_inputs()
    x = torch.randn(1, 4, 3)
    x[0, 1, 2] = float("nan")
    with ops.use_backend("eager"):
        with pytest.raises(ValueError, match="NaN or infinite"):
            ops.rvq_encode(x, codebooks, norms, 2)
        with ops.skip_value_checks():
            assert ops.rvq_encode(x, codebooks, norms, 2).shape == (1, 2, 3)
        with pytest.raises(ValueError, match="NaN or infinite"):  # the block's end restores them
            ops.rvq_encode(x, codebooks, norms, 2)
        with pytest.raises(ValueError, match=r"codes must lie in \[0, 15\]"):
            ops.dequantize_project(torch.full((1, 2, 3), 16), codebooks, weight, bias)


def test_ops_validation_traces_into_one_graph(monkeypatch):
    """torch.compile(fullgraph=True) fails on a data-dependent check (a sync); the ops must skip
    theirs while compiling. Dispatch is bypassed: the check, not backend selection, is under test."""
    monkeypatch.setattr(ops, "_run", lambda op, device, *args: backend._registry[op]["eager"](*args))
    codebooks, norms, weight, bias = _quantizer_inputs()

    def encode_decode(x, codes):
        return ops.rvq_encode(x, codebooks, norms, 2), ops.dequantize_project(codes, codebooks, weight, bias)

    x, codes = torch.randn(1, 4, 5), torch.randint(0, 16, (1, 2, 5))
    compiled = torch.compile(encode_decode, fullgraph=True, backend="eager")
    for got, want in zip(compiled(x, codes), encode_decode(x, codes)):
        assert torch.equal(got, want)


@pytest.fixture(scope="module")
def cpu_model():
    return XcodecModel.from_random(tiny_config(), seed=2)


def test_cuda_graph_rejects_a_cpu_model(cpu_model):
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device.*cpu"):
        cpu_model.cuda_graph(2, 3200)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((0, 3200), ValueError, "batch_size must be a positive int"),
        ((2.0, 3200), ValueError, "batch_size must be a positive int"),
        ((2, 3200.0), ValueError, "num_samples must be an int"),
        ((2, 10), ValueError, "too short"),
        ((2, 3200, 3.3), ValueError, "doesn't support the bandwidth"),
    ],
)
def test_cuda_graph_argument_errors(cpu_model, args, error, match):
    with pytest.raises(error, match=match):
        cpu_model.cuda_graph(*args)


def test_cuda_graph_needs_an_xcodec_model():
    with pytest.raises(TypeError, match="model must be an XcodecModel"):
        CudaGraphCodec(torch.nn.Linear(2, 2), 1, 3200)


def test_shape_check_names_the_captured_shape():
    _check_shape("input_values", torch.zeros(2, 1, 3200), (2, 1, 3200))
    with pytest.raises(ValueError, match=r"shape \(2, 1, 3199\) but this CUDA graph was built for \(2, 1, 3200\)"):
        _check_shape("input_values", torch.zeros(2, 1, 3199), (2, 1, 3200))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        _check_shape("audio_codes", [[0]], (1, 8, 10))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_replay_matches_eager_for_two_inputs(dtype):
    model = XcodecModel.from_random(XcodecConfig(), seed=4).to("cuda", dtype)
    batch, samples, bandwidth = 2, 16000, 2.0
    codec = model.cuda_graph(batch, samples, bandwidth=bandwidth)
    g = torch.Generator().manual_seed(9)
    inputs = [(0.3 * torch.randn(batch, 1, samples, generator=g)).clamp(-1, 1) for _ in range(2)]

    results = []
    for x in inputs:  # the first call captures, the second replays on new data
        codes = codec.encode(x)
        results.append((codes, codec.decode(codes)))
    for x, (codes, audio) in zip(inputs, results):  # the first outputs survive the second replay
        want_codes = model.encode(x, bandwidth=bandwidth, return_dict=False)
        want_audio = model.decode(want_codes, return_dict=False)
        assert codes.shape == codec.codes_shape and codes.dtype == torch.long and codes.is_cuda
        assert torch.equal(codes, want_codes)
        assert audio.shape == want_audio.shape == (batch, 1, model.config.hop_length * codec.num_frames)
        scale = want_audio.abs().max().item()
        assert (audio - want_audio).abs().max().item() <= 1e-5 * scale
    assert not torch.equal(results[0][0], results[1][0])

    with pytest.raises(ValueError, match="this CUDA graph was built for"):
        codec.encode(inputs[0][..., :-1])
    with pytest.raises(ValueError, match="codes must lie in"):
        codec.decode(torch.full(codec.codes_shape, model.config.codebook_size))
