"""ops.linear: the semantic model's and the codec's Linear layers through the dispatch point; the
native backend runs ATen's or oneDNN's (weight reordered once), whichever measures faster."""

import pytest
import torch

from op_cases import measure_dispatch
from tolerances import LINEAR_VS_FLOAT64, to_reference
from xcodec_fast import ops
from xcodec_fast.modeling.layers import Linear
from xcodec_fast.ops import native, packing

NATIVE = native.availability(torch.device("cpu"))[0] and native._onednn_linear_available()
needs_native = pytest.mark.skipif(not NATIVE, reason="native backend or oneDNN unavailable")
GEN = torch.Generator().manual_seed(5)


def _case(shape, fin, fout, dtype=torch.float32, bias=True):
    x = torch.randn(*shape, fin, generator=GEN).to(dtype)
    w = (torch.randn(fout, fin, generator=GEN) / fin**0.5).to(dtype)
    b = (0.1 * torch.randn(fout, generator=GEN)).to(dtype) if bias else None
    return x, w, b


def _rel_err(out, x, w, b):
    ref = torch.nn.functional.linear(to_reference(x), to_reference(w), None if b is None else to_reference(b))
    return float((to_reference(out) - ref).abs().max() / ref.abs().max())


class _Always:
    """A dispatch table that has measured ``choice`` fastest everywhere."""

    def __init__(self, choice):
        self.choice = choice

    def pick(self, key, candidates, x, default, probe=None):
        return candidates[self.choice](x)


def test_eager_is_torchs_linear_bit_for_bit():
    x, w, b = _case((2, 37), 48, 20)
    with ops.use_backend("eager"):
        assert torch.equal(ops.linear(x, w, b), torch.nn.functional.linear(x, w, b))


@needs_native
@pytest.mark.parametrize("choice", ["onednn", "aten"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,fin,fout,bias", [((1, 500), 768, 3072, True), ((3, 37), 33, 17, False),
                                                 ((1,), 64, 64, True), ((2, 1), 1024, 768, True)])
def test_native_matches_float64(monkeypatch, choice, dtype, shape, fin, fout, bias):
    if choice == "onednn" and not native._onednn_linear_available(dtype):
        pytest.skip(f"oneDNN has no {dtype} linear on this CPU (needs AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX)")
    monkeypatch.setattr(native, "tuner", lambda: _Always(choice))
    x, w, b = _case(shape, fin, fout, dtype, bias)
    with torch.no_grad(), ops.use_backend("native"):
        out = ops.linear(x, w, b)
    assert out.shape == (*shape, fout) and out.dtype == dtype
    assert _rel_err(out, x, w, b) <= LINEAR_VS_FLOAT64[dtype]


@needs_native
def test_non_contiguous_input_and_the_layer_module(monkeypatch):
    monkeypatch.setattr(native, "tuner", lambda: _Always("onednn"))
    layer = Linear(40, 24)
    x = torch.randn(2, 40, 31, generator=GEN).transpose(1, 2)  # (2, 31, 40) with a strided last axis
    with torch.no_grad(), ops.use_backend("native"):
        out = layer(x)
    with torch.no_grad():
        assert _rel_err(out, x, layer.weight, layer.bias) <= LINEAR_VS_FLOAT64[torch.float32]
    assert set(layer.state_dict()) == {"weight", "bias"}  # nn.Linear's keys: checkpoints load unchanged


@needs_native
def test_the_onednn_weight_is_reordered_once_and_again_when_it_changes(monkeypatch):
    monkeypatch.setattr(native, "tuner", lambda: _Always("onednn"))
    x, w, b = _case((1, 50), 96, 64)
    packing.STATS.reset()
    with torch.no_grad(), ops.use_backend("native"):
        first = ops.linear(x, w, b)
        for _ in range(3):
            assert torch.equal(ops.linear(x, w, b), first)
        assert packing.STATS.packs == 1
        w.mul_(2)
        assert _rel_err(ops.linear(x, w, b), x, w, b) <= LINEAR_VS_FLOAT64[torch.float32]
        assert packing.STATS.packs == 2


@needs_native
def test_measured_dispatch_times_both_on_a_linear_probe(tmp_path, monkeypatch):
    measure_dispatch(tmp_path, monkeypatch)
    x, w, b = _case((1, 9), 128, 256)
    with torch.no_grad(), ops.use_backend("native"):
        ops.linear(x, w, b)
        ops.linear(*_case((2, 300), 128, 256))  # 600 rows: another bucket, measured at 1024 rows
        ops.linear(*_case((1, 1000), 128, 256))  # the same bucket: no new measurement
    table = native.tuner().table
    assert set(table) == {"linear|128->256|bias|rows64|float32", "linear|128->256|bias|rows1024|float32"}
    for key, rows in (("linear|128->256|bias|rows64|float32", 64), ("linear|128->256|bias|rows1024|float32", 1024)):
        entry = table[key]
        assert entry["choice"] in ("onednn", "aten") and set(entry["ms"]) == {"onednn", "aten"}
        assert entry["measured_shape"] == [rows, 128]  # the bucket's rows, the layer's input width


@needs_native
def test_bf16_without_onednn_bf16_takes_torchs_linear(monkeypatch):
    """An AVX2-only CPU: oneDNN refuses bf16 weights, so native bf16 must not reach its reorder."""
    monkeypatch.setattr(native, "_onednn_linear_available", lambda dtype=torch.float32: dtype == torch.float32)
    monkeypatch.setattr(native, "tuner", lambda: pytest.fail("the dispatch must not be consulted"))
    x, w, b = _case((2, 37), 48, 20, torch.bfloat16)
    with torch.no_grad(), ops.use_backend("native"):
        assert torch.equal(ops.linear(x, w, b), torch.nn.functional.linear(x, w, b))


@needs_native
def test_autograd_and_half_precision_take_torchs_linear():
    x, w, b = _case((2, 5), 16, 8)
    w.requires_grad_(True)
    with ops.use_backend("native"):
        out = ops.linear(x, w, b)
    out.sum().backward()
    assert w.grad is not None and torch.equal(out.detach(), torch.nn.functional.linear(x, w.detach(), b))
    xh, wh, bh = (t.half() for t in _case((2, 5), 16, 8))
    with torch.no_grad(), ops.use_backend("native"):
        assert torch.equal(ops.linear(xh, wh, bh), torch.nn.functional.linear(xh, wh, bh))


def test_bad_inputs_are_clear_errors():
    x, w, b = _case((2, 3), 8, 4)
    with pytest.raises(ValueError, match=r"last axis must be 8"):
        ops.linear(torch.randn(2, 3, 7), w, b)
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        ops.linear(x, w[None], b)
    with pytest.raises(ValueError, match="bias has 3 values for 4 output channels"):
        ops.linear(x, w, b[:3])
    with pytest.raises(TypeError, match="weight must be float32, float16 or bfloat16, got torch.float64"):
        ops.linear(x, w.double(), None)
    with pytest.raises(TypeError, match="weight has dtype torch.bfloat16 but x has torch.float32"):
        ops.linear(x, w.bfloat16(), None)
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        ops.linear(x.long(), w, b)
