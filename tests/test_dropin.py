"""transformers' X-Codec usage example runs unchanged but for the import line, with equal results."""

import numpy as np
import torch

import tolerances
from oracle import make_hf_model
from xcodec_fast.config import tiny_config


def _documented_example(XcodecModel, FeatureExtractor, model_id, audio_sample):
    # transformers' X-Codec documentation example, verbatim apart from where the classes come from.
    model = XcodecModel.from_pretrained(model_id, dtype="auto")
    feature_extractor = FeatureExtractor.from_pretrained(model_id)
    inputs = feature_extractor(
        raw_audio=audio_sample, sampling_rate=feature_extractor.sampling_rate, return_tensors="pt"
    )
    encoder_outputs = model.encode(inputs["input_values"])
    decoder_outputs = model.decode(encoder_outputs.audio_codes)
    audio_values = decoder_outputs.audio_values
    forward_values = model(inputs["input_values"]).audio_values
    return encoder_outputs.audio_codes, audio_values, forward_values


def test_documented_usage_gives_transformers_results(tmp_path):
    import transformers

    import xcodec_fast

    checkpoint = tmp_path / "xcodec-checkpoint"
    make_hf_model(tiny_config(), seed=11).save_pretrained(checkpoint)
    transformers.DacFeatureExtractor(hop_length=320).save_pretrained(checkpoint)
    audio_sample = np.random.default_rng(5).standard_normal(16000 + 123).astype(np.float32) * 0.1

    ours = _documented_example(xcodec_fast.XcodecModel, xcodec_fast.XcodecFeatureExtractor, checkpoint, audio_sample)
    with torch.no_grad():
        theirs = _documented_example(
            transformers.XcodecModel, transformers.AutoFeatureExtractor, checkpoint, audio_sample
        )

    codes, audio, forward_audio = ours
    assert codes.dtype == torch.int64 and codes.shape == (1, 8, 51)
    assert audio.shape == (1, 1, 51 * 320) and forward_audio.shape == (1, 1, 51 * 320)
    torch.testing.assert_close(codes, theirs[0], rtol=0, atol=0)
    scale = theirs[1].abs().max()
    # AUDIO_VS_REFERENCE of the scale, or, for a backend that sums in another order than eager
    # (native's GEMM residual units), within DROPIN_FP32_ERRORS (2) times transformers' own fp32 error
    # of the fp64 decode (that error ~3-5e-5 of the scale on this random decoder): as accurate as
    # fp32 allows, not bit-equal (tests/tolerances.py, as tests/test_model_oracle.py measures it).
    with torch.no_grad():
        exact = transformers.XcodecModel.from_pretrained(checkpoint).double().decode(codes).audio_values
    own_error = (theirs[1].double() - exact).abs().max().item()
    for ours, reference in ((audio, theirs[1]), (forward_audio, theirs[2])):
        assert ours.shape == reference.shape
        if (ours - reference).abs().max() > tolerances.AUDIO_VS_REFERENCE * scale:
            assert (ours.double() - exact).abs().max() <= tolerances.DROPIN_FP32_ERRORS * own_error
