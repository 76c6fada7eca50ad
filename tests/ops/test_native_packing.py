"""The native GEMM paths read weights packed once per weight tensor (ops.packing), not per call."""

import pytest
import torch

from xcodec_fast.ops import native, packing

if not native.availability(torch.device("cpu"))[0]:
    pytest.skip("native backend unavailable", allow_module_level=True)

GEN = torch.Generator().manual_seed(11)


def _randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=GEN).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_give_the_per_call_result_bit_for_bit(dtype):
    ext = native.extension()
    c, frames = 24, 301
    x, a1, a2 = _randn(2, c, frames, dtype=dtype), _randn(c).abs() + 0.5, _randn(c).abs() + 0.5
    w1, w2, b1, b2 = _randn(c, c, 7, dtype=dtype), _randn(c, c, 1, dtype=dtype), _randn(c), _randn(c)
    plain = ext.residual_unit_gemm(x, a1, w1, b1, 3, a2, w2, b2, 0)
    packed = ext.residual_unit_gemm(x, a1, w1, b1, 3, a2, w2, b2, 0, ext.pack_residual_weight(w1),
                                    ext.pack_residual_weight(w2))
    assert torch.equal(plain, packed)

    w = _randn(16, c, 5, dtype=dtype)  # k=5 at stride 2: the packed taps are zero-padded to 6
    assert torch.equal(ext.snake_conv1d_gemm(x, a1, w, None, 2, 2),
                       ext.snake_conv1d_gemm(x, a1, w, None, 2, 2, 0, ext.pack_conv1d_weight(w, 2)))
    wt = _randn(c, 12, 8, dtype=dtype)
    assert torch.equal(ext.snake_conv_transpose1d_gemm(x, a1, wt, None, 4, 2, 0),
                       ext.snake_conv_transpose1d_gemm(x, a1, wt, None, 4, 2, 0, 0,
                                                       ext.pack_conv_transpose1d_weight(wt)))


def test_a_packed_weight_of_the_wrong_layout_is_a_clear_error():
    ext = native.extension()
    x, alpha, w = _randn(1, 8, 40), torch.ones(8), _randn(8, 8, 7)
    with pytest.raises(RuntimeError, match="packed weight must be a contiguous CPU float32 tensor of shape"):
        ext.residual_unit_gemm(x, alpha, w, None, 1, alpha, _randn(8, 8, 1), None, 0, w, None)  # unpermuted
    with pytest.raises(RuntimeError, match="packed weight"):
        ext.snake_conv1d_gemm(x, alpha, w, None, 2, 3, 0, ext.pack_conv1d_weight(w, 3))  # other stride


class _AlwaysGemm:
    """A dispatch table that has measured the GEMM path fastest everywhere."""

    def pick(self, key, candidates, x, default):
        return candidates["gemm"](x)


def test_the_dispatched_gemm_packs_each_weight_once_and_again_when_it_changes(monkeypatch):
    monkeypatch.setattr(native, "tuner", lambda: _AlwaysGemm())
    c = 16
    x, alpha = _randn(1, c, 90), torch.rand(c, generator=GEN) + 0.5
    w1, w2, b = _randn(c, c, 7), _randn(c, c, 1), _randn(c)
    wc = _randn(2 * c, c, 4)
    packing.STATS.reset()
    with torch.no_grad():
        first = native.residual_unit(x, alpha, w1, b, 3, alpha, w2, b)
        assert packing.STATS.packs == 2
        native.snake_conv1d(x, alpha, wc, b.repeat(2), 2, 1)
        assert packing.STATS.packs == 3
        for _ in range(3):  # later calls reuse the packed copies
            assert torch.equal(native.residual_unit(x, alpha, w1, b, 3, alpha, w2, b), first)
            native.snake_conv1d(x, alpha, wc, b.repeat(2), 2, 1)
        assert packing.STATS.packs == 3
        w1.mul_(0.5)  # an in-place update (load_state_dict copies into the same storage)
        changed = native.residual_unit(x, alpha, w1, b, 3, alpha, w2, b)
        assert packing.STATS.packs == 4 and not torch.equal(changed, first)
        plain = native.extension().residual_unit_gemm(x, alpha, w1, b, 3, alpha, w2, b, 0)
        assert torch.equal(changed, plain)


def test_weights_made_under_inference_mode_are_packed_per_call_and_follow_in_place_changes(monkeypatch):
    """Inference tensors keep no version counter, so a cached pack could not see an in-place
    change: they are packed on every call instead (and the call does not fail)."""
    monkeypatch.setattr(native, "tuner", lambda: _AlwaysGemm())
    c = 12
    with torch.inference_mode():
        x, alpha = _randn(1, c, 41), torch.rand(c, generator=GEN) + 0.5
        w1, w2, b = _randn(c, c, 7), _randn(c, c, 1), _randn(c)
        packing.STATS.reset()
        first = native.residual_unit(x, alpha, w1, b, 1, alpha, w2, b)
        assert packing.STATS.packs == 0 and not hasattr(w1, packing._ATTR)
        w1.mul_(0.5)
        changed = native.residual_unit(x, alpha, w1, b, 1, alpha, w2, b)
        assert torch.equal(changed, native.extension().residual_unit_gemm(x, alpha, w1, b, 1, alpha, w2, b, 0))
        assert not torch.equal(changed, first)
