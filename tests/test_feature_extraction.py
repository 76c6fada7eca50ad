import json

import numpy as np
import pytest
import torch

from xcodec_fast.feature_extraction import XcodecFeatureExtractor

RNG = np.random.default_rng(0)


def _clips(*lengths):
    return [RNG.standard_normal(n).astype(np.float32) * 0.1 for n in lengths]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"return_tensors": "pt"},
        {"return_tensors": "np"},
        {"padding": "max_length", "max_length": 1000, "return_tensors": "pt"},
        {"truncation": True, "max_length": 700, "return_tensors": "np"},
        {"padding": False},
    ],
)
def test_feature_extractor_matches_transformers(kwargs):
    transformers = pytest.importorskip("transformers")
    ours = XcodecFeatureExtractor()
    theirs = transformers.DacFeatureExtractor(hop_length=320)
    for raw in (_clips(500, 961, 320), _clips(333)[0], list(_clips(17)[0].astype(np.float64))):
        if kwargs.get("padding") == "max_length" and not isinstance(raw, list):
            continue
        a = ours(raw, sampling_rate=16000, **kwargs)
        b = theirs(raw, sampling_rate=16000, **kwargs)
        assert sorted(a.keys()) == sorted(b.keys())
        for key in b:
            va, vb = a[key], b[key]
            if isinstance(vb, list):
                assert len(va) == len(vb)
                for x, y in zip(va, vb):
                    np.testing.assert_array_equal(x, y)
                    assert x.dtype == y.dtype and x.shape == y.shape
            else:
                assert type(va) is type(vb) and va.dtype == vb.dtype and va.shape == vb.shape, key
                np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))


def test_feature_extractor_pads_to_hop_multiple_with_mask():
    fe = XcodecFeatureExtractor()
    out = fe(_clips(500, 1000), sampling_rate=16000, return_tensors="pt")
    assert out.input_values.shape == (2, 1, 1280) and out.input_values.dtype == torch.float32
    assert out.padding_mask.sum(-1).tolist() == [500, 1000]
    assert (out.input_values[0, 0, 500:] == 0).all()
    assert out.to("cpu").input_values.shape == (2, 1, 1280)


def test_feature_extractor_errors():
    fe = XcodecFeatureExtractor()
    with pytest.raises(ValueError, match="sampling rate of 16000.*not 44100"):
        fe(_clips(100)[0], sampling_rate=44100)
    with pytest.raises(ValueError, match="Expected mono audio.*shape \\(2, 100\\)"):
        fe(RNG.standard_normal((2, 100)), sampling_rate=16000)
    with pytest.raises(ValueError, match="Both padding and truncation"):
        fe(_clips(100), padding=True, truncation=True, max_length=10, sampling_rate=16000)
    with pytest.raises(ValueError, match="max_length is defined"):
        fe(_clips(100), padding="max_length", sampling_rate=16000)
    with pytest.raises(ValueError, match="different shapes"):
        fe(_clips(100, 200), padding=False, return_tensors="pt", sampling_rate=16000)
    with pytest.raises(ValueError, match="empty list"):
        fe([], sampling_rate=16000)
    with pytest.raises(ValueError, match="item 1 .* empty"):
        fe([np.ones(3), np.zeros(0)], sampling_rate=16000)


def test_feature_extractor_save_load_roundtrip(tmp_path):
    fe = XcodecFeatureExtractor(processor_class="SomeProcessor")
    fe.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert data["feature_extractor_type"] == "DacFeatureExtractor" and data["hop_length"] == 320
    again = XcodecFeatureExtractor.from_pretrained(tmp_path)
    assert again.to_dict() == fe.to_dict()
    transformers = pytest.importorskip("transformers")
    theirs = transformers.DacFeatureExtractor.from_pretrained(tmp_path)
    assert theirs.hop_length == 320 and theirs.sampling_rate == 16000
    # ... and a config transformers wrote loads here.
    theirs.save_pretrained(tmp_path / "t")
    assert XcodecFeatureExtractor.from_pretrained(tmp_path / "t").hop_length == 320


def test_feature_extractor_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json"):
        XcodecFeatureExtractor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"feature_extractor_type": "WhisperFeatureExtractor"}')
    with pytest.raises(ValueError, match="WhisperFeatureExtractor"):
        XcodecFeatureExtractor.from_pretrained(tmp_path)
