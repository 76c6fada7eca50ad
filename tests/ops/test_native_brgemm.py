"""The native bf16 residual unit, strided conv and transposed conv on bf16 matrix units (oneDNN brgemm): error
against fp32 next to eager bf16's own, odd sizes, batch independence, chunking, dispatch, and bad
arguments."""

from typing import Callable, NamedTuple

import pytest
import torch

import tolerances
from op_cases import (
    assert_forced_residual_unit_runs, assert_item_alone_equals_item_in_a_zero_padded_batch, fp32_args, measure_dispatch,
    residual_args,
)
from xcodec_fast import ops
from xcodec_fast.ops import eager, native, tuning

if not native.availability(torch.device("cpu"))[0]:
    pytest.skip("native backend unavailable", allow_module_level=True)

BRGEMM = native.brgemm_bf16_available()
needs_brgemm = pytest.mark.skipif(not BRGEMM, reason="no bf16 brgemm on this CPU / torch build")
DILATIONS = (1, 3, 9)
# (batch, channels, frames): one frame, fewer frames than the halo, odd frame counts, several chunks,
# channel counts that are not a power of two.
SHAPES = [(1, 2, 1), (2, 4, 7), (1, 6, 2), (2, 18, 101), (1, 64, 1601), (2, 96, 3001), (1, 512, 257)]


def peak_error(out, expected):
    return ((out.float() - expected).abs().max() / expected.abs().max().clamp_min(1.0)).item()


def assert_no_worse_than_eager(out, eager_out, expected, factor=0.9):
    """RMS error below 0.9 of eager's bf16 path's on the same inputs (measured 0.66-0.78: one
    rounding of the operands where eager rounds after every op; both are dominated by bf16
    rounding, not by the CPU). The max of a few dozen values is rounding luck either way, so
    outputs under 1000 values are held to the max bound only. ``factor``: the bound relative to
    eager's RMS error."""
    if expected.numel() < 1000:
        return
    def rms(y):
        return ((y.float() - expected).pow(2).mean().sqrt() / expected.abs().max().clamp_min(1.0)).item()
    assert rms(out) <= factor * rms(eager_out)


def assert_matches_fp32_and_beats_eager(out, eager_op, args):
    """Within BRGEMM_BF16 of ``eager_op`` in fp32 on the same bf16 inputs, and more accurate than
    ``eager_op``'s own bf16 path (RMS)."""
    expected = eager_op(*fp32_args(args))
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert peak_error(out, expected) <= tolerances.BRGEMM_BF16
    assert_no_worse_than_eager(out, eager_op(*args), expected)


@needs_brgemm
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_error_vs_fp32_is_within_bf16s_and_eager_bf16s(shape, dilation):
    """bf16 GEMM operands, fp32 accumulation: within the stated bound of fp32 compute on the same
    bf16 inputs, and no worse than eager's bf16 path (which rounds after every op)."""
    args = residual_args(*shape, dilation, torch.bfloat16)
    assert_matches_fp32_and_beats_eager(native.residual_unit_brgemm(*args), eager.residual_unit, args)


@needs_brgemm
@pytest.mark.parametrize("chunk", [1, 5, 17, 128, 4096])
def test_chunk_size_changes_nothing_but_rounding(chunk):
    args = residual_args(2, 24, 1001, 3, torch.bfloat16)
    expected = eager.residual_unit(*fp32_args(args))
    assert peak_error(native.residual_unit_brgemm(*args, chunk=chunk), expected) <= tolerances.BRGEMM_BF16


@needs_brgemm
@pytest.mark.parametrize("dilation", DILATIONS)
def test_item_alone_equals_item_in_a_zero_padded_batch(dilation):
    x, *rest = residual_args(3, 16, 777, dilation, torch.bfloat16)
    assert_item_alone_equals_item_in_a_zero_padded_batch(lambda v: native.residual_unit_brgemm(v, *rest), x, 401)


@needs_brgemm
def test_strided_input_and_no_bias_are_accepted():
    x, alpha1, w1, _, d, alpha2, w2, _ = residual_args(1, 8, 200, 1, torch.bfloat16)
    strided = x.transpose(1, 2).contiguous().transpose(1, 2)
    out = native.residual_unit_brgemm(strided, alpha1, w1, None, d, alpha2, w2, None)
    assert torch.equal(out, native.residual_unit_brgemm(x, alpha1, w1, None, d, alpha2, w2, None))
    expected = eager.residual_unit(*fp32_args((x, alpha1, w1, None, d, alpha2, w2, None)))
    assert peak_error(out, expected) <= tolerances.BRGEMM_BF16


@needs_brgemm
def test_forced_dispatch_runs_brgemm_and_the_table_measures_it(tmp_path, monkeypatch):
    """ops.residual_unit on native runs brgemm for bf16 when forced; measuring times it beside the
    other implementations for bf16, and never offers it for fp32 or an odd channel count."""
    args = residual_args(1, 32, 2001, 3, torch.bfloat16)
    assert_forced_residual_unit_runs("brgemm", native.residual_unit_brgemm, args)
    measure_dispatch(tmp_path, monkeypatch, "retune")
    with ops.use_backend("native"):
        ops.residual_unit(*args)
        ops.residual_unit(*residual_args(1, 32, 2001, 3))
        ops.residual_unit(*residual_args(1, 33, 2001, 3, torch.bfloat16))
    table = native.tuner().table
    offered = {key.rsplit("|", 1)[1] + ("-odd" if "C33" in key else ""): set(entry["ms"]) for key, entry in table.items()}
    assert "brgemm" in offered["bfloat16"]
    assert "brgemm" not in offered["float32"] and "brgemm" not in offered["bfloat16-odd"]


@needs_brgemm
def test_bad_arguments_name_the_problem():
    x, alpha1, w1, b1, d, alpha2, w2, b2 = residual_args(1, 8, 50, 1, torch.bfloat16)
    ext = native.extension()
    with pytest.raises(RuntimeError, match="x must be bfloat16, got Float"):
        ext.residual_unit_brgemm(x.float(), alpha1, w1, b1, d, alpha2, w2, b2)
    odd = residual_args(1, 7, 50, 1, torch.bfloat16)
    with pytest.raises(RuntimeError, match="even channel count, got 7"):
        ext.residual_unit_brgemm(*odd)
    with pytest.raises(RuntimeError, match="packed weight must be a contiguous CPU bfloat16 tensor of shape \\(8, 7, 8\\)"):
        ext.residual_unit_brgemm(x, alpha1, w1, b1, d, alpha2, w2, b2, 0, ext.pack_residual_weight(w1), None)
    with pytest.raises(RuntimeError, match="weight2 must be \\(C, C, 1\\)"):
        ext.residual_unit_brgemm(x, alpha1, w1, b1, d, alpha2, w1, b2)



# (C_in, C_out, frames, kernel, stride, padding, output_padding): the decoder's four upsampling
# sites at short lengths, then odd shapes (one input frame, kernel < stride, no padding).
TRANSPOSED = [(1024, 512, 41, 16, 8, 4, 0), (512, 256, 333, 10, 5, 3, 1), (256, 128, 1001, 8, 4, 2, 0),
              (128, 64, 4001, 4, 2, 1, 0), (6, 3, 7, 3, 2, 1, 1), (4, 5, 1, 4, 2, 0, 0), (2, 7, 19, 2, 3, 0, 2)]


def conv_inputs(cin, cout, frames, kernel, transposed, batch, seed):
    """bf16 (x, alpha, weight, bias) of a conv; the weight (C_in, C_out, k) when transposed."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, cin, frames, generator=g) * 2).bfloat16()
    alpha = (torch.rand(cin, generator=g) * 1.5 + 0.2).bfloat16()
    shape = (cin, cout, kernel) if transposed else (cout, cin, kernel)
    weight = (torch.randn(*shape, generator=g) / (cin * kernel) ** 0.5).bfloat16()
    bias = (torch.randn(cout, generator=g) * 0.1).bfloat16()
    return x, alpha, weight, bias


def transposed_args(cin, cout, frames, kernel, stride, padding, output_padding, batch=2, seed=0):
    return (*conv_inputs(cin, cout, frames, kernel, True, batch, seed), stride, padding, output_padding)


# (C_in, C_out, frames, kernel, stride, padding): the encoder's four downsampling sites and its
# last conv at short lengths, the decoder's 64 -> 1 output conv, then odd shapes (C_in odd with an
# even stride, kernel < stride, one output frame).
STRIDED = [(64, 128, 2001, 4, 2, 1), (128, 256, 1601, 8, 4, 2), (256, 512, 1001, 10, 5, 3), (512, 1024, 333, 16, 8, 4),
           (1024, 256, 41, 3, 1, 1), (64, 1, 3001, 7, 1, 3), (3, 5, 11, 3, 2, 1), (2, 3, 1, 1, 1, 0), (4, 6, 29, 2, 3, 0),
           (6, 2, 9, 9, 1, 0)]


def strided_args(cin, cout, frames, kernel, stride, padding, batch=2, seed=0):
    return (*conv_inputs(cin, cout, frames, kernel, False, batch, seed), stride, padding)


class BrgemmConv(NamedTuple):
    """One of the two brgemm convs, for the tests they share."""

    kernel: Callable
    reference: Callable  # eager's op
    make_args: Callable  # case -> the op's arguments
    cases: list
    chunked_case: tuple  # long enough for several chunks


BRGEMM_CONVS = {
    "transposed": BrgemmConv(native.snake_conv_transpose1d_brgemm, eager.snake_conv_transpose1d, transposed_args,
                             TRANSPOSED, (64, 32, 777, 8, 4, 2, 0)),
    "strided": BrgemmConv(native.snake_conv1d_brgemm, eager.snake_conv1d, strided_args, STRIDED,
                          (64, 32, 1777, 8, 4, 2)),
}


@needs_brgemm
@pytest.mark.parametrize("name, case", [pytest.param(name, case, id="-".join([name, *map(str, case)]))
                                        for name, conv in BRGEMM_CONVS.items() for case in conv.cases])
def test_conv_error_vs_fp32_is_within_bf16s_and_eager_bf16s(name, case):
    conv = BRGEMM_CONVS[name]
    args = conv.make_args(*case)
    assert_matches_fp32_and_beats_eager(conv.kernel(*args), conv.reference, args)


@needs_brgemm
@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
@pytest.mark.parametrize("name", BRGEMM_CONVS)
def test_conv_chunk_size_changes_nothing_but_rounding(name, chunk):
    conv = BRGEMM_CONVS[name]
    args = conv.make_args(*conv.chunked_case)
    expected = conv.reference(*fp32_args(args))
    assert peak_error(conv.kernel(*args, chunk=chunk), expected) <= tolerances.BRGEMM_BF16


@needs_brgemm
def test_transposed_forced_dispatch_runs_brgemm_and_only_for_bf16():
    args = transposed_args(32, 16, 301, 8, 4, 2, 0)
    with ops.use_backend("native"), tuning.forced("snake_conv_transpose1d", "brgemm"):
        forced = ops.snake_conv_transpose1d(*args)
        assert torch.equal(forced, native.snake_conv_transpose1d_brgemm(*args))
        fp32 = fp32_args(args)  # no brgemm candidate for fp32: the forced choice does not apply
        tolerances.assert_close(ops.snake_conv_transpose1d(*fp32), eager.snake_conv_transpose1d(*fp32),
                                tolerances.BRGEMM_FORCED_FP32)


@needs_brgemm
def test_transposed_bad_arguments_name_the_problem():
    x, alpha, weight, bias, s, p, op = transposed_args(8, 4, 50, 4, 2, 1, 0)
    ext = native.extension()
    with pytest.raises(RuntimeError, match="x must be bfloat16, got Float"):
        ext.snake_conv_transpose1d_brgemm(x.float(), alpha, weight, bias, s, p, op)
    odd = transposed_args(7, 4, 50, 4, 2, 1, 0)
    with pytest.raises(RuntimeError, match="even input channel count, got 7"):
        ext.snake_conv_transpose1d_brgemm(*odd)
    with pytest.raises(RuntimeError, match="weight must be \\(C_in, C_out, k\\) with C_in = 8"):
        ext.snake_conv_transpose1d_brgemm(x, alpha, weight[:4], bias, s, p, op)
    with pytest.raises(RuntimeError, match="packed weight must be a contiguous CPU bfloat16 tensor of shape \\(4, 4, 8\\)"):
        ext.snake_conv_transpose1d_brgemm(x, alpha, weight, bias, s, p, op, 0, weight.float())


@needs_brgemm
def test_strided_item_alone_equals_item_in_a_zero_padded_batch():
    x, *rest = strided_args(16, 8, 1603, 8, 4, 2, batch=3)
    assert_item_alone_equals_item_in_a_zero_padded_batch(lambda v: native.snake_conv1d_brgemm(v, *rest), x, 801)


@needs_brgemm
def test_strided_forced_dispatch_runs_brgemm():
    args = strided_args(32, 16, 301, 8, 4, 2)
    with ops.use_backend("native"), tuning.forced("snake_conv1d", "brgemm"):
        assert torch.equal(ops.snake_conv1d(*args), native.snake_conv1d_brgemm(*args))


@needs_brgemm
def test_strided_bad_arguments_name_the_problem():
    x, alpha, weight, bias, s, p = strided_args(8, 4, 50, 4, 2, 1)
    ext = native.extension()
    with pytest.raises(RuntimeError, match="x must be bfloat16, got Float"):
        ext.snake_conv1d_brgemm(x.float(), alpha, weight, bias, s, p)
    with pytest.raises(RuntimeError, match="even C_in · stride, got 3 · 1"):
        ext.snake_conv1d_brgemm(*strided_args(3, 4, 50, 3, 1, 1))
    with pytest.raises(RuntimeError, match="50 frames \\(padded by 1\\) are fewer than the kernel's 60"):
        ext.snake_conv1d_brgemm(*strided_args(8, 4, 50, 60, 2, 1))
    with pytest.raises(RuntimeError, match="packed weight must be a contiguous CPU bfloat16 tensor of shape \\(4, 2, 8, 2\\)"):
        ext.snake_conv1d_brgemm(x, alpha, weight, bias, s, p, 0, weight)


@needs_brgemm
@pytest.mark.parametrize("case", [(512, 512, 1601, 3, 2), (512, 512, 201, 2, 2), (4, 6, 29, 2, 3), (2, 3, 1, 1, 1)],
                         ids=lambda c: "-".join(map(str, c)))
def test_plain_conv_without_alpha_is_conv1d(case):
    """alpha None: no Snake, the semantic feature encoder's convs (padding 0), through the conv1d op."""
    x, _, weight, bias, stride, _ = strided_args(*case, 0)
    expected = torch.nn.functional.conv1d(x.float(), weight.float(), bias.float(), stride=stride)
    out = native.snake_conv1d_brgemm(x, None, weight, bias, stride, 0)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    error = peak_error(out, expected)
    assert error <= tolerances.BRGEMM_BF16
    # no Snake: the same two roundings as eager's (inputs, output), so equal up to accumulation order
    assert_no_worse_than_eager(out, torch.nn.functional.conv1d(x, weight, bias, stride=stride), expected, 1.05)
    with ops.use_backend("native"), tuning.forced("conv1d", "brgemm"):
        assert torch.equal(ops.conv1d(x, weight, bias, stride, 0), out)


def test_fp32_conv1d_on_native_is_aten_bit_for_bit():
    x, _, weight, bias, stride, _ = strided_args(16, 8, 301, 3, 2, 0)
    x, weight, bias = x.float(), weight.float(), bias.float()
    with ops.use_backend("native"), tuning.forced("conv1d", "brgemm"):
        assert torch.equal(ops.conv1d(x, weight, bias, stride, 0), torch.nn.functional.conv1d(x, weight, bias, stride=stride))


@pytest.mark.parametrize("case", [(1, 8, 161, 10, 5, 0), (1, 5, 40, 3, 2, 2), (1, 3, 7, 7, 1, 3)],
                         ids=lambda c: "-".join(map(str, c)))
def test_single_channel_conv1d_candidate_is_conv1d(case):
    """The waveform conv (C_in = 1) as a matmul with the input's windows, bias or not."""
    cin, cout, frames, kernel, stride, padding = case
    x, _, weight, bias, _, _ = strided_args(cin, cout, frames, kernel, stride, padding)
    for b in (bias, None):
        expected = torch.nn.functional.conv1d(x.float(), weight.float(), None if b is None else b.float(),
                                              stride=stride, padding=padding)
        with ops.use_backend("native"), tuning.forced("conv1d", "unfold"):
            out = ops.conv1d(x, weight, b, stride, padding)
        assert out.dtype == torch.bfloat16 and out.shape == expected.shape
        assert peak_error(out, expected) <= tolerances.BRGEMM_BF16
