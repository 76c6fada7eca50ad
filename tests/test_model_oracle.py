"""xcodec_fast's XcodecModel against transformers' XcodecModel (random weights, both directions)."""

from __future__ import annotations

import pytest
import torch

import tolerances
from near_ties import check_near_ties
from oracle import SEMANTIC_VARIANTS, make_hf_model, random_audio, save_hf, tiny_variant
from xcodec_fast import XcodecModel, use_backend
from xcodec_fast.config import XcodecConfig
from xcodec_fast.ops import availability, tuning, winograd

transformers = pytest.importorskip("transformers")

LENGTHS = [16000, 16001, 15999, 321, 48000]
VARIANT_IDS = ["-".join(str(p) for p in v) for v in SEMANTIC_VARIANTS]


def assert_audio_close(ours: torch.Tensor, reference: torch.Tensor, rel: float = tolerances.AUDIO_VS_REFERENCE) -> None:
    assert ours.shape == reference.shape
    scale = reference.abs().max().clamp_min(1e-3)
    error = (ours - reference).abs().max()
    assert error <= rel * scale, f"max error {error.item():.3g} > {rel} x scale {scale.item():.3g}"


TIE_TOL = tolerances.TIE[torch.float32]


def encode_with_embeddings(model, audio, **kwargs):
    """Codes and the embeddings the quantizer saw."""
    seen = {}
    quantize = model.quantizer.encode

    def spy(embeddings, num_quantizers):
        seen["embeddings"] = embeddings
        return quantize(embeddings, num_quantizers)

    model.quantizer.encode = spy
    try:
        codes = model.encode(audio, **kwargs).audio_codes
    finally:
        del model.quantizer.encode
    return codes, seen["embeddings"]


def assert_codes_match(model, audio, expected, **kwargs) -> torch.Tensor:
    """Our codes for ``audio`` equal transformers' ``expected``. The eager reference runs the same
    ops in the same order and must match exactly; the default CPU backend (native) sums its
    convolutions in another order, so its codes may part from them only at float near ties: every
    parting code verified in float64 along our own residual path, and few of them. Returns our codes."""
    codes, embeddings = encode_with_embeddings(model, audio, **kwargs)
    if torch.equal(codes, expected):
        return codes
    with use_backend("eager"):
        assert torch.equal(model.encode(audio, **kwargs).audio_codes, expected), "the eager reference parts from transformers"
    assert codes.shape == expected.shape
    parted, frames = check_near_ties(codes, expected, embeddings, model.quantizer.codebooks, TIE_TOL)
    assert parted <= max(1, frames // 20), f"{parted} of {frames} frames part at near ties"
    return codes


def assert_decode_close(ours: torch.Tensor, hf_model, codes: torch.Tensor, reference: torch.Tensor,
                        fp32_errors: float = tolerances.DROPIN_FP32_ERRORS) -> None:
    """Our decode vs transformers': within 1e-5 of the scale (eager runs the same ops, its first conv
    and transposed convs on the decode grid's blocks: ~1e-7). The native backend's residual units are
    chunked GEMMs that sum in another order;
    on these random decoders fp32 itself is ~1.6-1.8e-5 of the scale off (transformers vs an fp64
    decode), so a reordered decode may land ~1.2e-5 off transformers. Then it must stay within
    twice transformers' own distance from the fp64 decode: as accurate as fp32 allows, checked."""
    scale = reference.abs().max().clamp_min(1e-3)
    error = (ours - reference).abs().max()
    if error <= tolerances.AUDIO_VS_REFERENCE * scale:
        return
    import copy

    exact = hf_decode(copy.deepcopy(hf_model).double(), codes)
    fp32_error = (reference.double() - exact).abs().max()
    our_error = (ours.double() - exact).abs().max()
    assert our_error <= fp32_errors * fp32_error, (
        f"max error {error.item():.3g} from transformers > {tolerances.AUDIO_VS_REFERENCE} x scale {scale.item():.3g}, "
        f"and {our_error.item():.3g} from the float64 decode > {fp32_errors} x transformers' own fp32 error "
        f"{fp32_error.item():.3g}"
    )


@pytest.fixture(scope="module", params=SEMANTIC_VARIANTS, ids=VARIANT_IDS)
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from its save_pretrained directory)."""
    config = tiny_variant(*request.param)
    hf_model = make_hf_model(config, seed=1)
    directory = save_hf(hf_model, tmp_path_factory.mktemp("hf"))
    return hf_model, XcodecModel.from_pretrained(directory)


def hf_encode(hf_model, audio, bandwidth=None):
    with torch.no_grad():
        return hf_model.encode(audio, bandwidth=bandwidth).audio_codes


def hf_decode(hf_model, codes):
    with torch.no_grad():
        return hf_model.decode(codes).audio_values


def test_codes_identical_at_every_bandwidth_and_length(pair):
    hf_model, model = pair
    for length in LENGTHS:
        audio = random_audio(2, 1, length, seed=length)
        for bandwidth in [None, *model.config.target_bandwidths]:
            expected = hf_encode(hf_model, audio, bandwidth)
            codes = assert_codes_match(model, audio, expected, bandwidth=bandwidth)
            assert codes.dtype == torch.int64
        if length >= 16000:  # random codebooks must give varied codes, or equality proves nothing
            assert expected.unique().numel() > 50


def test_decode_matches_transformers(pair):
    hf_model, model = pair
    generator = torch.Generator().manual_seed(3)
    for num_quantizers in (1, 3, model.num_quantizers):
        codes = torch.randint(0, model.config.codebook_size, (2, num_quantizers, 37), generator=generator)
        audio = model.decode(codes).audio_values
        assert audio.shape == (2, 1, 37 * model.config.hop_length)
        assert_decode_close(audio, hf_model, codes, hf_decode(hf_model, codes))


def test_forward_is_trimmed_decode_of_encode(pair):
    hf_model, model = pair
    audio = random_audio(2, 1, 15999, seed=5)
    out = model(audio)
    codes = model.encode(audio).audio_codes
    assert torch.equal(out.audio_codes, codes)
    assert torch.equal(out.audio_values, model.decode(codes).audio_values[..., :15999])
    with torch.no_grad():
        reference = hf_model(audio)
    assert_codes_match(model, audio, reference.audio_codes)
    # out.audio_values is our decode of our codes (asserted above): that decode against transformers'.
    assert_decode_close(model.decode(codes).audio_values, hf_model, codes, hf_decode(hf_model, codes))
    given = random_audio(2, 1, 16000, seed=6)
    with torch.no_grad():
        reference_given = hf_model(given, audio_codes=codes).audio_values
    assert_decode_close(model(given, audio_codes=codes).audio_values, hf_model, codes, reference_given)
    as_tuple = model(audio, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    assert torch.equal(as_tuple[0], codes)


# The second set: items shorter than the batch by less than a code frame, so that every item has
# the batch's frame count but not its samples (the semantic GroupNorm must still be masked).
@pytest.mark.parametrize("lengths", [[16001, 16000, 15999, 9000, 4567, 321], [16000, 15900, 15841]],
                         ids=["mixed", "within-a-frame"])
def test_padded_batch_gives_each_item_its_alone_codes(pair, lengths):
    hf_model, model = pair
    batch = random_audio(len(lengths), 1, max(lengths), seed=7)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for index, length in enumerate(lengths):
        mask[index, :length] = 1
    # Padding holds garbage on purpose: the mask alone must make it irrelevant.
    batch = torch.where(mask[:, None].bool(), batch, torch.full_like(batch, 0.7))
    out = model.encode(batch, padding_mask=mask)
    batch_codes, batch_embeddings = encode_with_embeddings(model, batch, padding_mask=mask)
    assert torch.equal(batch_codes, out.audio_codes)
    assert torch.equal(model.encode(batch, padding_mask=mask[:, None].bool()).audio_codes, out.audio_codes)
    assert out.audio_codes.shape[-1] == model.encode(batch).audio_codes.shape[-1]
    for index, length in enumerate(lengths):
        item = batch[index : index + 1, :, :length]
        alone = hf_encode(hf_model, item)
        frames = alone.shape[-1]
        assert out.audio_code_lengths[index] == frames
        # In the batch what this backend gives the item alone; that, transformers' codes. The batch
        # runs its convolutions at another width, and oneDNN's summation order depends on the width on
        # some CPUs: codes may part only at verified near ties, and few.
        ours_alone = assert_codes_match(model, item, alone)
        in_batch = out.audio_codes[index : index + 1, :, :frames]
        if not torch.equal(in_batch, ours_alone):
            embeddings = batch_embeddings[index : index + 1, :, :frames]
            parted, total = check_near_ties(in_batch, ours_alone, embeddings, model.quantizer.codebooks, TIE_TOL)
            assert parted <= max(1, total // 20), f"item {index} ({length} samples): {parted} of {total} frames part"
        assert (out.audio_codes[index, :, frames:] == 0).all()


def test_padded_decode_gives_each_item_its_alone_audio(pair):
    _, model = pair
    generator = torch.Generator().manual_seed(11)
    code_lengths = torch.tensor([40, 17, 1, 33])
    codes = torch.randint(0, model.config.codebook_size, (4, model.num_quantizers, 40), generator=generator)
    audio = model.decode(codes, audio_code_lengths=code_lengths).audio_values
    hop = model.config.hop_length
    for index, frames in enumerate(code_lengths.tolist()):
        alone = model.decode(codes[index : index + 1, :, :frames]).audio_values
        assert_audio_close(audio[index : index + 1, :, : frames * hop], alone, rel=tolerances.PADDED_DECODE_VS_ALONE)
        assert (audio[index, :, frames * hop :] == 0).all()


def test_forward_with_padding_mask_zeroes_padding(pair):
    _, model = pair
    audio = random_audio(2, 1, 16000, seed=13)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 7000:] = 0
    out = model(audio, padding_mask=mask)
    alone = model(audio[1:, :, :7000])
    assert torch.equal(out.audio_codes[1, :, : alone.audio_codes.shape[-1]], alone.audio_codes[0])
    assert_audio_close(out.audio_values[1:, :, :7000], alone.audio_values, rel=tolerances.PADDED_DECODE_VS_ALONE)
    assert (out.audio_values[1, :, 7000:] == 0).all()


def test_our_save_pretrained_loads_in_transformers(pair, tmp_path):
    hf_model, model = pair
    model.save_pretrained(tmp_path)
    reloaded, info = transformers.XcodecModel.from_pretrained(str(tmp_path), output_loading_info=True)
    reloaded.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    audio = random_audio(1, 1, 16000, seed=17)
    codes = hf_encode(hf_model, audio)
    assert torch.equal(hf_encode(reloaded, audio), codes)
    assert_audio_close(hf_decode(reloaded, codes), hf_decode(hf_model, codes))
    # and back into xcodec_fast
    again = XcodecModel.from_pretrained(tmp_path)
    assert_codes_match(again, audio, codes)


@pytest.mark.parametrize("spelling", ["parametrizations", "weight_g"])
def test_weight_normed_checkpoints_load_and_match(spelling, tmp_path):
    from safetensors.torch import save_file

    config = tiny_variant("hubert", "group", False)
    hf_model = make_hf_model(config, seed=2)
    audio = random_audio(1, 1, 16000, seed=19)
    hf_model.save_pretrained(str(tmp_path))  # for config.json
    hf_model.apply_weight_norm()  # g = |w|, v = w: the layout of the original X-Codec checkpoints
    # transformers now recomputes each weight from (g, v) as our load-time fold does: same numbers.
    codes = hf_encode(hf_model, audio)
    reference_audio = hf_decode(hf_model, codes)
    state = {k: v.detach().contiguous() for k, v in hf_model.state_dict().items()}
    normed = [k for k in state if k.endswith("parametrizations.weight.original0")]
    assert len(normed) > 20
    if spelling == "weight_g":
        state = {
            k.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"): v
            for k, v in state.items()
        }
    save_file(state, str(tmp_path / "model.safetensors"))
    model = XcodecModel.from_pretrained(tmp_path)
    assert_codes_match(model, audio, codes)
    assert_decode_close(model.decode(codes).audio_values, hf_model, codes, reference_audio)


@pytest.mark.slow
def test_full_size_default_config_matches_transformers(tmp_path):
    hf_model = make_hf_model(XcodecConfig(), seed=0)
    save_hf(hf_model, tmp_path)
    model = XcodecModel.from_pretrained(tmp_path)
    audio = random_audio(1, 1, 16000, seed=23)
    codes = hf_encode(hf_model, audio)
    assert codes.unique().numel() > 50
    assert_codes_match(model, audio, codes)
    assert_codes_match(model, audio, codes[:, :1], bandwidth=0.5)
    assert_decode_close(model.decode(codes).audio_values, hf_model, codes, hf_decode(hf_model, codes))


WINOGRAD_CASES = [pytest.param(m, marks=pytest.mark.skipif(not availability("native")[0], reason="native unavailable"))
                  for m in winograd.FAST_TILE_SIZES]


def winograd_bound(m: int) -> float:
    """Decode bound, in multiples of transformers' own fp32 error: the default F(2,7) its documented
    WINOGRAD_FP32_ERRORS, the opt-in F(4,7) its FAST_WINOGRAD_FP32_ERRORS."""
    return tolerances.WINOGRAD_FP32_ERRORS if m in winograd.DEFAULT_TILE_SIZES else tolerances.FAST_WINOGRAD_FP32_ERRORS


@pytest.mark.parametrize("m", WINOGRAD_CASES)
def test_winograd_residual_units_match_transformers(pair, m):
    """Every residual unit as Winograd F(m, 7) (what measured dispatch may pick, F(4,7) where opted
    in): codes equal transformers' except verified near ties, decode within the tile's bound."""
    hf_model, model = pair
    audio = random_audio(2, 1, 16001, seed=5)
    codes = hf_encode(hf_model, audio)
    with use_backend("native"), tuning.forced("residual_unit", f"winograd{m}"):
        assert_codes_match(model, audio, codes)
        assert_decode_close(model.decode(codes).audio_values, hf_model, codes, hf_decode(hf_model, codes),
                            winograd_bound(m))


@pytest.mark.slow
@pytest.mark.parametrize("m", WINOGRAD_CASES)
def test_full_size_winograd_residual_units_match_transformers(tmp_path, m):
    hf_model = make_hf_model(XcodecConfig(), seed=0)
    save_hf(hf_model, tmp_path)
    model = XcodecModel.from_pretrained(tmp_path)
    audio = random_audio(1, 1, 16000, seed=23)
    codes = hf_encode(hf_model, audio)
    with use_backend("native"), tuning.forced("residual_unit", f"winograd{m}"):
        assert_codes_match(model, audio, codes)
        assert_decode_close(model.decode(codes).audio_values, hf_model, codes, hf_decode(hf_model, codes),
                            winograd_bound(m))
