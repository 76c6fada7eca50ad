"""ops.conv1d_time_major: the semantic feature encoder's convs on (B, frames, channels); native runs
them as polyphase GEMMs (oneDNN or ATen) or eager's transposed conv, whichever measures faster."""

import pytest
import torch
import torch.nn.functional as F

from op_cases import measure_dispatch
from tolerances import GEMM_ONEDNN_VS_FLOAT64, LINEAR_VS_FLOAT64, to_reference
from xcodec_fast import ops
from xcodec_fast.ops import eager, native, packing

NATIVE = native.availability(torch.device("cpu"))[0]
needs_native = pytest.mark.skipif(not NATIVE, reason="native backend unavailable")
CHOICES = ["aten", "eager", "channels-last"] + (["onednn"] if NATIVE and native._onednn_linear_available() else [])
GROUPED_CHOICES = ["eager", "channels-last"]  # the GEMMs take groups == 1 only

# (batch, frames, C_in, C_out, kernel, stride, padding, groups): HuBERT's three feature-encoder
# kernel/stride pairs (the one-channel first layer takes the im2col branch), then a stride that does
# not divide the kernel, stride 1 and stride > kernel, at odd lengths (the wide ones take the
# polyphase branch), then the positional conv's kind: 'same' padding, an even kernel, groups.
CASES = [(1, 161, 1, 24, 10, 5, 0, 1), (2, 1603, 1, 16, 10, 5, 0, 1), (1, 33, 64, 48, 3, 2, 0, 1),
         (3, 100, 64, 64, 3, 2, 0, 1), (2, 16, 96, 40, 2, 2, 0, 1), (1, 17, 96, 40, 2, 2, 0, 1),
         (2, 101, 40, 24, 7, 3, 0, 1), (1, 9, 70, 30, 3, 1, 0, 1), (2, 23, 64, 8, 2, 3, 0, 1),
         (1, 3, 64, 5, 3, 2, 0, 1), (2, 37, 64, 32, 5, 1, 2, 1)]
GROUPED_CASES = [(1, 49, 64, 64, 16, 1, 8, 4), (2, 31, 48, 48, 15, 1, 7, 3), (1, 5, 32, 32, 8, 1, 4, 16)]
CHOICE_CASES = ([(choice, case) for choice in CHOICES for case in CASES]
                + [(choice, case) for choice in GROUPED_CHOICES for case in GROUPED_CASES])


class _Always:
    """A dispatch table that has measured ``choice`` fastest everywhere."""

    def __init__(self, choice):
        self.choice = choice

    def pick(self, key, candidates, x, default, probe=None):
        return candidates[self.choice](x)


def _case(batch, frames, c_in, c_out, kernel, dtype=torch.float32, bias=True, seed=0, groups=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, c_in, generator=gen)
    w = torch.randn(c_out, c_in // groups, kernel, generator=gen) / (c_in // groups * kernel) ** 0.5
    b = 0.1 * torch.randn(c_out, generator=gen) if bias else None
    return x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)


def _rel_err(out, x, w, b, stride, padding=0, groups=1):
    ref = eager.conv1d_time_major(to_reference(x), to_reference(w), None if b is None else to_reference(b), stride,
                                  padding, groups)
    assert out.shape == ref.shape
    return float((to_reference(out) - ref).abs().max() / ref.abs().max())


def test_eager_is_torchs_conv_on_the_transposed_input_bit_for_bit():
    x, w, b = _case(2, 57, 6, 5, 3)
    expected = F.conv1d(x.transpose(1, 2).contiguous(), w, b, stride=2).transpose(1, 2)
    with ops.use_backend("eager"):
        assert not ops.runs_time_major(torch.device("cpu"))
        assert torch.equal(ops.conv1d_time_major(x, w, b, 2), expected)


@needs_native
@pytest.mark.parametrize("choice,case", CHOICE_CASES, ids=lambda c: c if isinstance(c, str) else "-".join(map(str, c)))
@pytest.mark.parametrize("bias", [True, False])
def test_native_matches_float64_with_every_choice(monkeypatch, choice, case, bias):
    monkeypatch.setattr(native, "tuner", lambda: _Always(choice))
    batch, frames, c_in, c_out, kernel, stride, padding, groups = case
    x, w, b = _case(batch, frames, c_in, c_out, kernel, bias=bias, seed=sum(case), groups=groups)
    with torch.no_grad(), ops.use_backend("native"):
        assert ops.runs_time_major(torch.device("cpu"))
        out = ops.conv1d_time_major(x, w, b, stride, padding, groups)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert _rel_err(out, x, w, b, stride, padding, groups) <= GEMM_ONEDNN_VS_FLOAT64


@needs_native
@pytest.mark.parametrize("choice", CHOICES)
def test_native_bf16_within_bf16_rounding(monkeypatch, choice):
    if choice == "onednn" and not native._onednn_linear_available(torch.bfloat16):
        pytest.skip("oneDNN has no bf16 linear on this CPU (needs AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX)")
    monkeypatch.setattr(native, "tuner", lambda: _Always(choice))
    for batch, frames, c_in, c_out, kernel, stride, padding, groups in CASES[:4] + CASES[-1:] + GROUPED_CASES:
        if groups > 1 and choice not in GROUPED_CHOICES:
            continue
        x, w, b = _case(batch, frames, c_in, c_out, kernel, dtype=torch.bfloat16, groups=groups)
        with torch.no_grad(), ops.use_backend("native"):
            out = ops.conv1d_time_major(x, w, b, stride, padding, groups)
        assert out.dtype == torch.bfloat16
        assert _rel_err(out, x, w, b, stride, padding, groups) <= LINEAR_VS_FLOAT64[torch.bfloat16]


@needs_native
def test_each_item_of_a_batch_equals_it_alone_and_strided_inputs_work(monkeypatch):
    monkeypatch.setattr(native, "tuner", lambda: _Always(CHOICES[0]))
    x, w, b = _case(3, 77, 64, 32, 3)
    channel_major = x.transpose(1, 2).contiguous()
    with torch.no_grad(), ops.use_backend("native"):
        batched = ops.conv1d_time_major(x, w, b, 2)
        for item in range(3):
            assert torch.equal(batched[item : item + 1], ops.conv1d_time_major(x[item : item + 1], w, b, 2))
        assert torch.equal(ops.conv1d_time_major(channel_major.transpose(1, 2), w, b, 2), batched)


@needs_native
def test_weight_blocks_are_packed_once_and_again_when_the_weight_changes(monkeypatch):
    monkeypatch.setattr(native, "tuner", lambda: _Always(CHOICES[0]))
    x, w, b = _case(1, 41, 64, 16, 3)
    packing.STATS.reset()
    with torch.no_grad(), ops.use_backend("native"):
        first = ops.conv1d_time_major(x, w, b, 2)
        for _ in range(3):
            assert torch.equal(ops.conv1d_time_major(x, w, b, 2), first)
        assert packing.STATS.packs == 1
        w.mul_(2)
        assert _rel_err(ops.conv1d_time_major(x, w, b, 2), x, w, b, 2) <= GEMM_ONEDNN_VS_FLOAT64
        assert packing.STATS.packs == 2


@needs_native
def test_measured_dispatch_keys_by_geometry_and_times_a_fixed_probe(tmp_path, monkeypatch):
    measure_dispatch(tmp_path, monkeypatch)
    with torch.no_grad(), ops.use_backend("native"):
        for frames in (41, 401):  # one entry for both lengths: an item alone and batched pick alike
            ops.conv1d_time_major(*_case(1, frames, 64, 16, 3), 2)
        ops.conv1d_time_major(*_case(2, 161, 1, 16, 10), 5)
        ops.conv1d_time_major(*_case(1, 50, 32, 32, 16, groups=4), 1, 8, 4)
    table = native.tuner().table
    assert set(table) == {"conv1d_time_major|64->16|k3|s2|float32", "conv1d_time_major|1->16|k10|s5|float32",
                          "conv1d_time_major|32->32|k16|s1|p8|g4|float32"}
    assert set(table["conv1d_time_major|32->32|k16|s1|p8|g4|float32"]["ms"]) == set(GROUPED_CHOICES)
    entry = table["conv1d_time_major|64->16|k3|s2|float32"]
    assert entry["choice"] in CHOICES and set(entry["ms"]) == set(CHOICES)
    assert entry["measured_shape"] == [1, (16384 - 1) * 2 + 3, 64]


def test_autograd_and_half_precision_take_the_eager_conv():
    x, w, b = _case(2, 31, 8, 4, 3)
    w.requires_grad_(True)
    with ops.use_backend("native" if NATIVE else "eager"):
        out = ops.conv1d_time_major(x, w, b, 2)
    out.sum().backward()
    assert w.grad is not None and torch.equal(out.detach(), eager.conv1d_time_major(x, w.detach(), b, 2))
    xh, wh, bh = (t.half() for t in _case(2, 31, 8, 4, 3))
    with torch.no_grad(), ops.use_backend("native" if NATIVE else "eager"):
        assert torch.equal(ops.conv1d_time_major(xh, wh, bh, 2), eager.conv1d_time_major(xh, wh, bh, 2))


def test_bad_arguments_name_the_problem():
    x, w, b = _case(1, 20, 4, 6, 3)
    with pytest.raises(ValueError, match=r"expects 4 input channels, x \(batch, frames, channels\) has 3"):
        ops.conv1d_time_major(x[..., :3], w, b, 1)
    with pytest.raises(ValueError, match="groups must be >= 1 and divide the 6 output channels, got 4"):
        ops.conv1d_time_major(x, w, b, 1, 0, 4)
    with pytest.raises(ValueError, match="stride must be >= 1 and padding >= 0, got stride 1, padding -1"):
        ops.conv1d_time_major(x, w, b, 1, -1)
    with pytest.raises(ValueError, match="bias has 5 values for 6 output channels"):
        ops.conv1d_time_major(x, w, b[:5], 1)
    with pytest.raises(ValueError, match="stride must be >= 1 and padding >= 0, got stride 0"):
        ops.conv1d_time_major(x, w, b, 0)
    with pytest.raises(ValueError, match="input of 2 frames is shorter than the kernel .3. after padding 0"):
        ops.conv1d_time_major(x[:, :2], w, b, 1)
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        ops.conv1d_time_major(x[0], w, b, 1)
    with pytest.raises(TypeError, match="weight has dtype torch.bfloat16 but x has torch.float32"):
        ops.conv1d_time_major(x, w.bfloat16(), None, 1)
