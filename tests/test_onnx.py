"""ONNX export of the eager reference: graphs with dynamic batch and length, run in ONNX Runtime,
against the eager model (codes equal except verified near ties, audio within 1e-5 of its peak)."""

import json

import pytest
import torch

from near_ties import check_near_ties
from tolerances import AUDIO_VS_REFERENCE, TIE
from xcodec_fast import XcodecModel, use_backend
from xcodec_fast.config import tiny_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from xcodec_fast import export  # noqa: E402

MAX_FRAMES = 2048  # the padding check's range: small, so the test stays quick


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = XcodecModel.from_random(tiny_config(), seed=3, backend="eager")
    folder = tmp_path_factory.mktemp("onnx")
    meta = export.export_onnx(model, folder, max_frames=MAX_FRAMES)
    return model, folder, meta, export.OnnxCodec(folder, threads=1)


def _eager_encode(model, audio):
    with torch.no_grad(), use_backend("eager"):
        latent = model.encode_latent(audio)
        return model.quantize(latent, model.num_quantizers), latent


def test_metadata_says_what_the_graphs_take(exported):
    model, folder, meta, _ = exported
    stored = json.loads((folder / export.METADATA_FILE).read_text())
    assert stored == meta
    assert meta["opset"] == export.OPSET and meta["hop_length"] == model.config.hop_length
    assert meta["num_quantizers"] == model.num_quantizers and meta["max_frames_checked"] == MAX_FRAMES
    import onnx

    for part, name in (("encoder", "audio"), ("decoder", "codes")):
        graph = onnx.load(str(folder / meta[part]["file"])).graph
        dims = graph.input[0].type.tensor_type.shape.dim
        assert graph.input[0].name == name
        assert dims[0].dim_param and dims[2].dim_param  # batch and length are dynamic, not baked in
        assert dims[1].dim_value == (1 if part == "encoder" else model.num_quantizers)


@pytest.mark.parametrize("batch,frames", [(1, 1), (1, 7), (3, 23), (2, 50)])
def test_onnxruntime_codes_equal_eager_except_near_ties(exported, batch, frames):
    model, _, _, runner = exported
    gen = torch.Generator().manual_seed(batch * 100 + frames)
    audio = torch.randn(batch, 1, model.config.hop_length * frames, generator=gen) * 0.2
    ref, latent = _eager_encode(model, audio)
    got = runner.encode(audio)
    assert got.shape == ref.shape == (batch, model.num_quantizers, frames) and got.dtype == torch.int64
    books = torch.stack([q.codebook.embed for q in model.quantizer.quantizers])
    parted, total = check_near_ties(got, ref, latent, books, TIE[torch.float32])
    assert parted <= max(1, total // 100)


@pytest.mark.parametrize("batch,frames", [(1, 1), (2, 9), (1, 31)])
def test_onnxruntime_audio_matches_eager(exported, batch, frames):
    model, _, _, runner = exported
    gen = torch.Generator().manual_seed(frames)
    codes = torch.randint(0, model.config.codebook_size, (batch, model.num_quantizers, frames), generator=gen)
    with torch.no_grad(), use_backend("eager"):
        ref = model.decode(codes, return_dict=False)
    got = runner.decode(codes)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= AUDIO_VS_REFERENCE * ref.abs().max()


def test_bad_inputs_are_clear_errors(exported):
    model, folder, _, runner = exported
    hop = model.config.hop_length
    with pytest.raises(ValueError, match=f"multiple of {hop} samples"):
        runner.encode(torch.zeros(1, 1, hop * 4 + 1))
    with pytest.raises(ValueError, match=r"shape \(batch, 1, samples\)"):
        runner.encode(torch.zeros(1, hop * 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        runner.encode(torch.full((1, 1, hop * 2), float("nan")))
    with pytest.raises(ValueError, match=r"must lie in \[0, "):
        runner.decode(torch.full((1, model.num_quantizers, 3), model.config.codebook_size))
    with pytest.raises(ValueError, match="codes must have shape"):
        runner.decode(torch.zeros(1, model.num_quantizers + 1, 3, dtype=torch.long))
    # an existing export is not overwritten unless asked
    with pytest.raises(export.ExportError, match="already exist"):
        export.export_onnx(model, folder, max_frames=8)
    with pytest.raises(export.ExportError, match="float32 CPU model"):
        export.export_onnx(XcodecModel.from_random(tiny_config()).to(torch.float16), folder / "half")
    with pytest.raises(export.ExportError, match="num_quantizers must lie"):
        export.export_onnx(model, folder / "q", num_quantizers=model.num_quantizers + 1)
    with pytest.raises(export.ExportError, match="no xcodec_onnx.json"):
        export.OnnxCodec(folder / "nowhere")


def test_a_config_whose_padding_depends_on_length_is_refused(exported, monkeypatch):
    model, folder, _, _ = exported
    monkeypatch.setattr(type(model), "acoustic_needs_padding", lambda self, n: n == 5 * self.config.hop_length)
    with pytest.raises(export.ExportError, match="one ONNX encoder graph cannot hold"):
        export.export_onnx(model, folder / "other", max_frames=16)


def test_command_line_export_with_check(tmp_path, capsys):
    from xcodec_fast import cli

    out = tmp_path / "graphs"
    assert cli.main(["export-onnx", "--model", "random-tiny", "-o", str(out), "--bandwidth", "2", "--check"]) == 0
    said = capsys.readouterr().err
    meta = json.loads((out / export.METADATA_FILE).read_text())
    assert meta["num_quantizers"] == tiny_config().num_quantizers_for_bandwidth(2)
    assert "check: onnxruntime codes" in said and "% equal to eager" in said
    assert cli.main(["export-onnx", "--model", "random-tiny", "-o", str(out)]) == 2  # exists: refused
    assert "already exist" in capsys.readouterr().err
