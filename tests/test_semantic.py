"""SemanticModel against transformers' HubertModel / WavLMModel (the oracle), and padded batches against items alone."""

from __future__ import annotations

import copy

import pytest
import torch

import tolerances

transformers = pytest.importorskip("transformers")

from xcodec_fast import ops  # noqa: E402
from xcodec_fast.config import SemanticConfig  # noqa: E402
from xcodec_fast.modeling.semantic import (  # noqa: E402
    IGNORED_CHECKPOINT_KEYS,
    POS_CONV_WEIGHT_KEY,
    SemanticModel,
    fold_weight_norm,
)

TINY = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=[8] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    num_buckets=16,
    max_bucket_distance=40,
)

VARIANTS = [
    (model_type, norm, stable)
    for model_type in ("hubert", "wavlm")
    for norm in ("group", "layer")
    for stable in (False, True)
]


def _hf_model(model_type: str, **kwargs):
    if model_type == "hubert":
        return transformers.HubertModel(transformers.HubertConfig(**kwargs)).eval()
    kwargs.pop("feat_proj_layer_norm", None)
    return transformers.WavLMModel(transformers.WavLMConfig(**kwargs)).eval()


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter random values, so a mixed-up key or a skipped norm shows (default inits are 0s/1s)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("original0") or name.endswith("weight_g") or "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.3 * torch.randn(param.shape, generator=gen))  # scales stay away from 0
            else:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))


def _checkpoint(hf_model, old_weight_norm_spelling: bool) -> dict:
    state = dict(hf_model.state_dict())
    if old_weight_norm_spelling:
        prefix = "encoder.pos_conv_embed.conv."
        state[prefix + "weight_g"] = state.pop(prefix + "parametrizations.weight.original0")
        state[prefix + "weight_v"] = state.pop(prefix + "parametrizations.weight.original1")
    return state


def _load(ours: SemanticModel, checkpoint: dict) -> None:
    state = fold_weight_norm({k: v for k, v in checkpoint.items() if k not in IGNORED_CHECKPOINT_KEYS})
    ours.load_state_dict(state, strict=True)


def _pair(model_type="hubert", norm="group", stable=False, seed=0, old_spelling=False, **overrides):
    kwargs = {**TINY, "feat_extract_norm": norm, "do_stable_layer_norm": stable, **overrides}
    torch.manual_seed(seed)
    hf = _hf_model(model_type, **kwargs)
    _randomize(hf, seed)
    ours = SemanticModel(SemanticConfig.from_dict({"model_type": model_type, **kwargs})).eval()
    _load(ours, _checkpoint(hf, old_spelling))
    return hf, ours


def _hf_mean_hidden(hf, audio: torch.Tensor) -> torch.Tensor:
    """What X-Codec takes from the semantic model."""
    with torch.no_grad():
        hidden = hf(audio, output_hidden_states=True).hidden_states
    return torch.stack(hidden, dim=1).mean(dim=1)


def _matches_transformers(hf, ours, audio: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``ours(audio)``, checked under the eager reference to lie within SEMANTIC_VS_TRANSFORMERS of
    transformers; with (transformers' fp32 error, ours) against the float64 truth where the feature
    encoder runs time-major on a backend's own GEMMs (0, 0 under eager)."""
    expected = _hf_mean_hidden(hf, audio)
    with torch.no_grad():
        got = ours(audio)
    assert got.shape == expected.shape
    if not ops.runs_time_major(audio.device):
        tolerances.assert_close(got, expected, tolerances.SEMANTIC_VS_TRANSFORMERS)
        return got, 0.0, 0.0
    truth = _hf_mean_hidden(copy.deepcopy(hf).double(), audio.double())
    return got, (expected.double() - truth).abs().max().item(), (got.double() - truth).abs().max().item()


def _assert_as_accurate(own_errors: list[float], our_errors: list[float]) -> None:
    """Our largest error over the cases within SEMANTIC_FP32_ERRORS times transformers' (pooled:
    one frame's error is a single draw, 0.4-4x either way), or SEMANTIC_VS_TRANSFORMERS."""
    bound = max(tolerances.SEMANTIC_FP32_ERRORS * max(own_errors), tolerances.SEMANTIC_VS_TRANSFORMERS.atol)
    assert max(our_errors) <= bound, (our_errors, own_errors)


NATIVE = ops.availability("native", torch.device("cpu"))[0]


@pytest.mark.parametrize("backend", ["eager", pytest.param("native", marks=pytest.mark.skipif(
    not NATIVE, reason="native backend unavailable"))])
@pytest.mark.parametrize("model_type,norm,stable", VARIANTS)
@pytest.mark.parametrize("old_spelling", [False, True])
def test_matches_transformers(backend, model_type, norm, stable, old_spelling):
    hf, ours = _pair(model_type, norm, stable, seed=1, old_spelling=old_spelling)
    gen = torch.Generator().manual_seed(2)
    with ops.use_backend(backend):
        assert ops.runs_time_major(torch.device("cpu")) == (backend == "native")
        own_errors, our_errors = [], []
        for num_samples in (400, 401, 16000, 16321):
            got, own_error, our_error = _matches_transformers(hf, ours, torch.randn(2, num_samples, generator=gen))
            assert got.shape == (2, int(ours.frame_lengths(torch.tensor(num_samples))), 16)
            own_errors.append(own_error)
            our_errors.append(our_error)
    _assert_as_accurate(own_errors, our_errors)


# The second set: as many final frames each, fewer first-layer frames (its GroupNorm must be masked).
@pytest.mark.parametrize("lengths", [[16321, 400, 9000, 16000, 3203], [16321, 16250, 16200]],
                         ids=["mixed", "same-final-frames"])
@pytest.mark.parametrize("model_type,norm,stable", VARIANTS)
def test_padded_batch_matches_items_alone(model_type, norm, stable, lengths):
    _, ours = _pair(model_type, norm, stable, seed=3)
    gen = torch.Generator().manual_seed(4)
    lengths = torch.tensor(lengths)
    batch = torch.full((len(lengths), int(lengths.max())), float("nan"))  # padding must never leak in
    items = []
    for b, length in enumerate(lengths.tolist()):
        items.append(torch.randn(1, length, generator=gen))
        batch[b, :length] = items[-1][0]
    with torch.no_grad():
        got = ours(batch, lengths)
        frames = ours.frame_lengths(lengths)
        assert got.shape[1] == int(frames.max())
        for b, item in enumerate(items):
            alone = ours(item)
            assert alone.shape[1] == frames[b]
            valid = got[b : b + 1, : frames[b]]
            assert (valid - alone).abs().max() < tolerances.SEMANTIC_BATCHED.atol
            tolerances.assert_close(valid, alone, tolerances.SEMANTIC_BATCHED)


@pytest.mark.parametrize("model_type", ["hubert", "wavlm"])
def test_full_lengths_take_the_exact_path(model_type):
    # lengths that cost no frame (16321 and 16320+ samples give the same frame count) must not change a bit.
    _, ours = _pair(model_type, seed=5)
    audio = torch.randn(2, 16321, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert torch.equal(ours(audio, torch.tensor([16321, 16320])), ours(audio))


def test_frame_lengths_match_transformers():
    hf, ours = _pair("hubert")
    lengths = torch.tensor([400, 401, 719, 720, 16000, 16321, 48000])
    assert torch.equal(ours.frame_lengths(lengths), hf._get_feat_extract_output_lengths(lengths))
    assert ours.min_input_length == 400


def test_state_dict_keys_are_transformers_keys():
    for model_type in ("hubert", "wavlm"):
        hf, ours = _pair(model_type)
        hf_keys = set(fold_weight_norm(hf.state_dict())) - set(IGNORED_CHECKPOINT_KEYS)
        assert set(ours.state_dict()) == hf_keys
        assert POS_CONV_WEIGHT_KEY in hf_keys


def test_hubert_without_feature_projection_norm():
    hf, ours = _pair("hubert", feat_proj_layer_norm=False, seed=7)
    assert not any(k.startswith("feature_projection.layer_norm") for k in ours.state_dict())
    _, own_error, our_error = _matches_transformers(hf, ours, torch.randn(1, 5000, generator=torch.Generator().manual_seed(8)))
    _assert_as_accurate([own_error], [our_error])


def test_odd_positional_kernel():
    # An odd kernel keeps every conv frame (nothing dropped); an even one drops the last.
    hf, ours = _pair("wavlm", num_conv_pos_embeddings=15, num_conv_pos_embedding_groups=4, seed=9)
    _, own_error, our_error = _matches_transformers(hf, ours, torch.randn(1, 7000, generator=torch.Generator().manual_seed(10)))
    _assert_as_accurate([own_error], [our_error])


def test_fold_weight_norm_on_prefixed_checkpoint():
    hf, _ = _pair("hubert")
    state = {"semantic_model." + k: v for k, v in hf.state_dict().items()}
    state["acoustic_encoder.block.0.weight_g"] = torch.ones(4, 1, 1)
    state["acoustic_encoder.block.0.weight_v"] = torch.full((4, 2, 3), 2.0)
    folded = fold_weight_norm(state)
    assert "semantic_model." + POS_CONV_WEIGHT_KEY in folded
    assert not any("original" in k or k.endswith("weight_g") or k.endswith("weight_v") for k in folded)
    # Norm over all dims but 2: each kernel tap of v (4 * 2 entries of 2.0) has norm sqrt(32).
    torch.testing.assert_close(folded["acoustic_encoder.block.0.weight"], torch.full((4, 2, 3), 2.0 / 32**0.5))
    with pytest.raises(KeyError, match="weight_v"):
        fold_weight_norm({"conv.weight_g": torch.ones(1, 1, 2)})


def test_bad_inputs_raise_clear_errors():
    _, ours = _pair("hubert")
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        ours(torch.zeros(1, 1, 1000))
    with pytest.raises(ValueError, match="399 samples.*minimum 400"):
        ours(torch.zeros(1, 399))
    with pytest.raises(ValueError, match="300 samples.*minimum 400"):
        ours(torch.zeros(2, 1000), torch.tensor([1000, 300]))
    with pytest.raises(ValueError, match="exceed"):
        ours(torch.zeros(2, 1000), torch.tensor([1000, 1001]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        ours(torch.zeros(2, 1000), torch.tensor([1000]))
    with pytest.raises(TypeError, match="integer"):
        ours.frame_lengths(torch.tensor([1000.0]))
    with pytest.raises(TypeError, match="floating point"):
        ours(torch.zeros(1, 1000, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden_act"):
        SemanticModel(SemanticConfig.from_dict({**TINY, "hidden_act": "mish"}))


@pytest.mark.slow
def test_default_size_hubert_matches_transformers():
    torch.manual_seed(11)
    hf = transformers.HubertModel(transformers.HubertConfig()).eval()
    # Keep transformers' init scales for the 768-wide matrices (fully random ones make 12 layers chaotic enough
    # that batching alone moves outputs by 1e-5); make norms, biases and weight-norm gains non-trivial.
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name or name.endswith("bias") or name.endswith("original0"):
                base = 0.0 if name.endswith("bias") else 1.0
                param.copy_(base + 0.1 * torch.randn(param.shape, generator=gen))
    ours = SemanticModel(SemanticConfig()).eval()
    _load(ours, _checkpoint(hf, old_weight_norm_spelling=False))
    gen = torch.Generator().manual_seed(12)
    audio = 0.1 * torch.randn(1, 16321, generator=gen)
    got, own_error, our_error = _matches_transformers(hf, ours, audio)
    _assert_as_accurate([own_error], [our_error])
    with torch.no_grad():
        # Padded batch: the short item's frames equal it run alone.
        batch = torch.cat([audio, torch.zeros(1, 16321)])
        batch[1, :8000] = audio[0, :8000]
        padded = ours(batch, torch.tensor([16321, 8000]))
        alone = ours(audio[:, :8000])
        tolerances.assert_close(padded[1:, : alone.shape[1]], alone, tolerances.SEMANTIC_BATCHED)
        tolerances.assert_close(padded[:1], got, tolerances.SEMANTIC_BATCHED)


def test_masked_group_norm_over_several_steps_matches_per_item_group_norm():
    """Statistics over each item's valid frames only, accumulated in cache-sized steps (more
    frames than one step here), NaN padding kept out of them; normalizes in place."""
    from xcodec_fast.modeling import semantic

    gen = torch.Generator().manual_seed(3)
    frames = 2 * semantic._NORM_STEP_FRAMES + 77
    lengths = [frames, semantic._NORM_STEP_FRAMES + 5, 9]
    x = torch.randn(3, 4, frames, generator=gen) * 3 + 1
    for b, n in enumerate(lengths):
        x[b, :, n:] = float("nan")
    norm = torch.nn.GroupNorm(4, 4)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(4, generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(4, generator=gen))
    valid = torch.arange(frames)[None, None, :] < torch.tensor(lengths)[:, None, None]
    expected = [norm.double()(x[b : b + 1, :, :n].double()) for b, n in enumerate(lengths)]
    out = semantic._masked_group_norm(x, valid, norm.float())
    assert out.data_ptr() == x.data_ptr()
    for b, n in enumerate(lengths):
        tolerances.assert_close(out[b : b + 1, :, :n].double(), expected[b], tolerances.MASKED_GROUP_NORM_VS_FLOAT64)
