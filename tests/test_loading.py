"""Checkpoint loading and saving: local dirs, the hub cache, dtypes, shards, damaged or foreign
files, weight-norm folding, original X-Codec .pth checkpoints, and from_random."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tolerances
from oracle import make_hf_model, random_audio, tiny_variant
from xcodec_fast import ConfigError, XcodecModel
from xcodec_fast.checkpoints import CheckpointError, config_from_original_yaml

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_model():
    return make_hf_model(tiny_variant("hubert", "group", False), seed=4)


@pytest.fixture(scope="module")
def checkpoint(hf_model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    hf_model.save_pretrained(str(directory))
    return directory


@pytest.fixture()
def copy_of(checkpoint, tmp_path):
    directory = tmp_path / "copy"
    shutil.copytree(checkpoint, directory)
    return directory


@pytest.fixture(scope="module")
def audio():
    return random_audio(1, 1, 8000, seed=29)


@pytest.fixture(scope="module")
def reference_codes(hf_model, audio):
    with torch.no_grad():
        return hf_model.encode(audio).audio_codes


def test_local_directory_as_str_or_path(checkpoint, audio, reference_codes):
    for name in (str(checkpoint), checkpoint):
        model = XcodecModel.from_pretrained(name)
        assert model.dtype == torch.float32 and not model.training
        assert torch.equal(model.encode(audio).audio_codes, reference_codes)


def test_dtype_choices(checkpoint, tmp_path):
    assert XcodecModel.from_pretrained(checkpoint, dtype="float16").dtype == torch.float16
    assert XcodecModel.from_pretrained(checkpoint, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert XcodecModel.from_pretrained(checkpoint, dtype="auto").dtype == torch.float32
    XcodecModel.from_pretrained(checkpoint, dtype="bfloat16").save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_file(str(tmp_path / "model.safetensors"))["fc.weight"].dtype == torch.bfloat16
    assert XcodecModel.from_pretrained(tmp_path, dtype="auto").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        XcodecModel.from_pretrained(checkpoint, dtype="int8")


def test_auto_dtype_without_config_entry_reads_the_tensors(copy_of):
    config = json.loads((copy_of / "config.json").read_text())
    config.pop("dtype", None)
    (copy_of / "config.json").write_text(json.dumps(config))
    state = {k: v.half() for k, v in load_file(str(copy_of / "model.safetensors")).items()}
    save_file(state, str(copy_of / "model.safetensors"))
    assert XcodecModel.from_pretrained(copy_of, dtype="auto").dtype == torch.float16


def test_device_and_backend_arguments(checkpoint):
    model = XcodecModel.from_pretrained(checkpoint, device="cpu", backend="eager")
    assert model.device.type == "cpu" and model.backend == "eager"


def _fake_hub_cache(checkpoint, cache_dir, repo_id="someone/xcodec-tiny", commit="0" * 40):
    """The layout huggingface_hub reads offline: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(checkpoint, snapshot)
    return repo_id


def test_hub_id_from_the_local_cache(checkpoint, tmp_path, audio, reference_codes):
    repo_id = _fake_hub_cache(checkpoint, tmp_path)
    model = XcodecModel.from_pretrained(repo_id, cache_dir=str(tmp_path), local_files_only=True)
    assert torch.equal(model.encode(audio).audio_codes, reference_codes)


def test_hub_id_not_cached_while_offline_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(OSError, match="not in the local Hugging Face cache and local_files_only=True"):
        XcodecModel.from_pretrained("someone/not-cached", cache_dir=str(tmp_path), local_files_only=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        XcodecModel.from_pretrained("someone/not-cached", cache_dir=str(tmp_path))


def test_missing_local_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        XcodecModel.from_pretrained(str(tmp_path / "nope"))


def test_sharded_checkpoint(copy_of, audio, reference_codes):
    state = load_file(str(copy_of / "model.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({k: state[k] for k in shard_keys}, str(copy_of / name))
    (copy_of / "model.safetensors").unlink()
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (copy_of / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = XcodecModel.from_pretrained(copy_of)
    assert torch.equal(model.encode(audio).audio_codes, reference_codes)


def test_truncated_safetensors_names_the_file(copy_of):
    path = copy_of / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*truncated or corrupt"):
        XcodecModel.from_pretrained(copy_of)


def test_pickle_only_checkpoint_is_refused(copy_of):
    (copy_of / "model.safetensors").unlink()
    torch.save({"fc.weight": torch.zeros(1)}, copy_of / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin: pickle files are never loaded"):
        XcodecModel.from_pretrained(copy_of)


def test_config_of_another_model_type(copy_of):
    config = json.loads((copy_of / "config.json").read_text())
    config["model_type"] = "dac"
    (copy_of / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="model_type 'dac'"):
        XcodecModel.from_pretrained(copy_of)


def _rewrite_weights(directory, edit):
    state = load_file(str(directory / "model.safetensors"))
    edit(state)
    save_file(state, str(directory / "model.safetensors"))


def test_missing_unexpected_and_misshaped_keys_are_listed(copy_of):
    def damage(state):
        del state["fc2.bias"]
        del state["acoustic_decoder.conv1.weight"]
        state["fc.extra"] = torch.zeros(3)
        state["fc1.weight"] = torch.zeros(2, 2)

    _rewrite_weights(copy_of, damage)
    with pytest.raises(CheckpointError) as info:
        XcodecModel.from_pretrained(copy_of)
    message = str(info.value)
    assert "missing keys (2): acoustic_decoder.conv1.weight, fc2.bias" in message
    assert "unexpected keys (1): fc.extra" in message
    assert "fc1.weight: checkpoint (2, 2), model (16, 32)" in message


def test_half_a_weight_norm_pair_is_an_error(copy_of):
    def damage(state):
        weight = state.pop("acoustic_encoder.conv1.weight")
        state["acoustic_encoder.conv1.weight_v"] = weight

    _rewrite_weights(copy_of, damage)
    with pytest.raises(CheckpointError, match="missing keys \\(1\\): acoustic_encoder.conv1.weight") as info:
        XcodecModel.from_pretrained(copy_of)
    assert "acoustic_encoder.conv1.weight_v" in str(info.value)


def test_known_training_buffers_are_ignored_but_nothing_else(checkpoint):
    state = load_file(str(checkpoint / "model.safetensors"))
    assert any(k.endswith("codebook.embed_avg") for k in state)
    assert "semantic_model.masked_spec_embed" in state
    XcodecModel.from_pretrained(checkpoint)  # loads despite them


def test_save_pretrained_round_trip_is_exact(checkpoint, tmp_path, audio):
    model = XcodecModel.from_pretrained(checkpoint)
    model.save_pretrained(tmp_path)
    again = XcodecModel.from_pretrained(tmp_path)
    tol = tolerances.WEIGHT_NORM_ROUND_TRIP
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.allclose(ours, theirs, rtol=tol.rtol, atol=tol.atol), name
    codes = model.encode(audio).audio_codes
    assert torch.equal(again.encode(audio).audio_codes, codes)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert "semantic_model.encoder.pos_conv_embed.conv.parametrizations.weight.original0" in saved


# ---- original X-Codec checkpoints -----------------------------------------------------------
# transformers' acoustic encoder / decoder -> (the original's module, the list its layers sit in, the
# original index of res_unitN minus N, original indices of the layers a DAC block has beside its units).
# Both sides share the rest: res-unit layer order, block i -> i + 1, and the top conv1/snake1/conv2 at 0/5/6.
ACOUSTIC_LAYOUTS = {
    "acoustic_encoder.": ("encoder", "block", -1, {"snake1": 3, "conv1": 4}),
    "acoustic_decoder.": ("decoder_2", "model", 1, {"snake1": 0, "conv_t1": 1}),
}


def transformers_to_original_key(key: str) -> str:
    """The inverse of transformers' convert_xcodec_weights_to_hf mapping (4 DAC blocks)."""
    unit_layers = {"snake1": 0, "conv1": 1, "snake2": 2, "conv2": 3}
    top_layers = {"conv1": 0, "snake1": 5, "conv2": 6}
    key = key.replace("parametrizations.weight.original0", "weight_g")
    key = key.replace("parametrizations.weight.original1", "weight_v")
    for prefix, (module, layers, unit_shift, block_layers) in ACOUSTIC_LAYOUTS.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if m := re.match(r"block\.(\d)\.res_unit(\d)\.(\w+)\.(.*)", rest):
            block, unit, layer, tail = m.groups()
            return f"{module}.{layers}.{int(block) + 1}.block.{int(unit) + unit_shift}.block.{unit_layers[layer]}.{tail}"
        if m := re.match(rf"block\.(\d)\.({'|'.join(block_layers)})\.(.*)", rest):
            block, layer, tail = m.groups()
            return f"{module}.{layers}.{int(block) + 1}.block.{block_layers[layer]}.{tail}"
        head, _, tail = rest.partition(".")
        return f"{module}.{layers}.{top_layers[head]}.{tail}"
    if key.startswith(("encoder_semantic.", "decoder_semantic.")):
        return re.sub(r"(conv\d?)\.(weight|bias)$", r"\1.conv.\2", key)
    if m := re.match(r"quantizer\.quantizers\.(\d+)\.codebook\.(.*)", key):
        return f"quantizer.vq.layers.{m.group(1)}._codebook.{m.group(2)}"
    for new, old in (("fc.", "fc_prior."), ("fc1.", "fc_post1."), ("fc2.", "fc_post2.")):
        if key.startswith(new):
            return old + key[len(new) :]
    assert key.startswith("semantic_model."), key
    return key


def test_original_pth_checkpoint_matches_transformers(tmp_path, audio):
    config = tiny_variant("hubert", "group", False)
    hf = make_hf_model(config, seed=6)
    hf.apply_weight_norm()  # the original checkpoints are weight-normed
    original = {transformers_to_original_key(k): v.detach().clone() for k, v in hf.state_dict().items()}
    assert "encoder.block.1.block.2.block.1.weight_g" in original and "fc_prior.weight" in original
    torch.save(original, tmp_path / "xcodec.pth")
    model = XcodecModel.from_original_checkpoint(tmp_path / "xcodec.pth", config=config)
    with torch.no_grad():
        codes = hf.encode(audio).audio_codes
        reference = hf.decode(codes).audio_values
    assert torch.equal(model.encode(audio).audio_codes, codes)
    # eager runs transformers' ops in its order: bit-equal, so every weight was mapped exactly. (The
    # default native backend's GEMM residual units differ by rounding: tests/ops/test_residual_unit.py.)
    model.backend = "eager"
    assert torch.equal(model.decode(codes).audio_values, reference)
    model.backend = None

    original["discriminator.layer.weight"] = torch.zeros(1)
    torch.save(original, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="no place in X-Codec: discriminator.layer.weight"):
        XcodecModel.from_original_checkpoint(tmp_path / "extra.pth", config=config)


def test_original_yaml_config(tmp_path):
    (tmp_path / "config_wavlm.yaml").write_text(
        "generator:\n  config:\n    ratios: [8, 5, 4, 2]\n    target_bandwidths: [0.5, 1, 1.5, 2, 4]\n"
        "    sample_rate: 16000\n    D: 256\n    bins: 1024\n    semantic_techer: wavlm_base_plus\n"
    )
    config = config_from_original_yaml(tmp_path / "config_wavlm.yaml")
    assert config.semantic_model_config.model_type == "wavlm"
    assert config.acoustic_model_config.hidden_size == 256 and config.num_quantizers == 8
    assert config.codebook_dim == 256 + 768
    (tmp_path / "bad.yaml").write_text("generator:\n  config:\n    ratios: [8, 5, 4, 2]\n")
    with pytest.raises(ConfigError, match="not an X-Codec generator config"):
        config_from_original_yaml(tmp_path / "bad.yaml")


# ---- random weights -------------------------------------------------------------------------
def test_from_random_is_deterministic_and_sane():
    config = tiny_variant("wavlm", "layer", True)
    first, second, other = (XcodecModel.from_random(config, seed=s) for s in (0, 0, 1))
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.fc.weight, other.fc.weight)
    audio = random_audio(2, 1, 16000, seed=31)
    codes = first.encode(audio).audio_codes
    assert codes.unique().numel() > 50
    decoded = first.decode(codes).audio_values
    assert torch.isfinite(decoded).all() and decoded.abs().max() < 1e4


def test_single_output_channel_weight_norm_folds_as_torch_computes_it():
    """The decoder's last conv has one output channel: its magnitude is (1, 1, 1). Folding must use
    dim 0 as weight_norm did (a whole-tensor norm rounds differently), so the weight is bit-exact."""
    from xcodec_fast.checkpoints import fold_weight_norm

    differs_from_whole_tensor_norm = 0
    for seed in range(40):  # about one seed in six rounds the two norms differently
        torch.manual_seed(seed)
        direction, magnitude = torch.randn(1, 64, 7), torch.rand(1, 1, 1) + 0.5
        expected = torch._weight_norm(direction, magnitude, 0)  # what weight_norm(conv, dim=0) computes
        assert torch.equal(fold_weight_norm(magnitude, direction), expected), seed
        differs_from_whole_tensor_norm += not torch.equal(torch._weight_norm(direction, magnitude, -1), expected)
    assert differs_from_whole_tensor_norm
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(64, 3, 7), dim=0)
    weight = conv.parametrizations.weight
    assert torch.equal(fold_weight_norm(weight.original0.detach(), weight.original1.detach()), conv.weight.detach())


@pytest.mark.parametrize("value, offline", [("1", True), ("ON", True), ("yes", True), ("true", True),
                                            ("0", False), ("false", False), ("", False), (None, False)])
def test_hf_hub_offline_reads_as_huggingface_hub_does(monkeypatch, value, offline):
    from huggingface_hub.constants import _is_true

    from xcodec_fast import loading
    from xcodec_fast.checkpoints import hub_offline

    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if value is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline is _is_true(value)
    if offline:
        assert loading.hub_reachable() is False  # decided without touching the network


def test_unreadable_model_files_name_the_file_and_the_permission(copy_of, monkeypatch):
    """A model file the process may not read (tests run as root, which reads anything: the OS
    error is raised where the file is opened) gets a message naming the file, not 'corrupt'."""
    import builtins

    import safetensors.torch

    weights = copy_of / "model.safetensors"

    def denied_weights(path, device="cpu"):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(safetensors.torch, "load_file", denied_weights)
    with pytest.raises(CheckpointError, match=re.escape(str(weights)) + ": permission denied"):
        XcodecModel.from_pretrained(copy_of)
    monkeypatch.undo()

    config = copy_of / "config.json"
    real_open = builtins.open

    def denied_config(path, *args, **kwargs):
        if str(path) == str(config):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied_config)
    with pytest.raises(ValueError, match=re.escape(str(config)) + ": permission denied"):
        XcodecModel.from_pretrained(copy_of)
