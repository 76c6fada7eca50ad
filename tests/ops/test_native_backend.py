"""The native CPU backend itself: dispatch, autograd fallback, its torch.library ops, its GEMM
paths' invariants, building and loading the extension. Op parity: tests/ops/test_<op>.py."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import tolerances
from op_cases import dac_weights, make_input, residual_args
from xcodec_fast import ops

REPO = Path(__file__).resolve().parents[2]

native_ok, native_reason = ops.availability("native")
if not native_ok:
    pytest.skip(f"native backend unavailable: {native_reason}", allow_module_level=True)

from xcodec_fast.ops import native  # noqa: E402  (only once we know it can run)

def test_dispatch_uses_native():
    x, alpha = make_input(2, 3, 321)
    with ops.use_backend("native"):
        assert ops.backend.implementation("snake", x.device)[0] == "native"
        assert torch.equal(ops.snake(x, alpha), native.snake(x, alpha))
        y, s = ops.add_snake(x, x, alpha)
        assert torch.equal(s, native.snake(x + x, alpha))
    with ops.use_backend("auto"):
        assert ops.backend.resolve_auto(torch.device("cpu")) == "native"
    fused = {"snake", "add_snake", "residual_unit", "snake_conv1d", "snake_conv_transpose1d"}
    assert fused <= set(ops.backend.implemented_ops("native"))


def test_autograd_falls_back_to_eager():
    x, alpha = make_input(1, 3, 10)
    x.requires_grad_(True)
    with ops.use_backend("native"):
        out = ops.snake(x, alpha)
    assert out.grad_fn is not None
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_torch_library_ops():
    x, alpha = make_input(2, 3, 33)
    assert torch.equal(torch.ops.xcodec_fast_native.snake(x, alpha), native.snake(x, alpha))
    torch.library.opcheck(torch.ops.xcodec_fast_native.snake.default, (x, alpha))
    torch.library.opcheck(torch.ops.xcodec_fast_native.add_snake.default, (x, x, alpha))
    w1, b1 = dac_weights(3, 3, 7)
    w2, b2 = dac_weights(3, 3, 1, seed=1)
    torch.library.opcheck(torch.ops.xcodec_fast_native.residual_unit.default, (x, alpha, w1, b1, 3, alpha, w2, b2))
    w, b = dac_weights(3, 6, 4)
    torch.library.opcheck(torch.ops.xcodec_fast_native.snake_conv1d.default, (x, alpha, w, b, 2, 1))
    wt, bt = dac_weights(3, 2, 10, transpose=True)
    torch.library.opcheck(torch.ops.xcodec_fast_native.snake_conv_transpose1d.default, (x, alpha, wt, bt, 5, 3, 1))


@pytest.mark.parametrize("frames", (7, 321, 700, 1500))
def test_gemm_paths_give_an_item_its_alone_result_in_a_longer_padded_row(frames):
    # The tokenizer's promise (codes equal alone) needs the GEMM kernels to compute an item's frames
    # alike however long the row they sit in: MKL's results depend on the GEMM's width, so every call
    # runs full chunk width. Zeros past the item make the longer row's halo equal to zero padding.
    def padded(x, extra):
        return torch.cat([x, torch.zeros(*x.shape[:2], extra)], dim=-1)

    x, alpha1, w1, b1, d, alpha2, w2, b2 = residual_args(1, 64, frames, 3)
    alone = native.residual_unit(x, alpha1, w1, b1, d, alpha2, w2, b2)
    for extra in (1, 333, 1000):
        longer = native.residual_unit(padded(x, extra), alpha1, w1, b1, d, alpha2, w2, b2)
        assert torch.equal(longer[..., :frames], alone)
    x, alpha = make_input(1, 64, frames * 8)
    for w, b, stride, padding in (dac_weights(64, 128, 16) + (8, 4), dac_weights(64, 1, 7) + (1, 3)):
        alone = native.snake_conv1d(x, alpha, w, b, stride, padding)
        for extra in (8, 2664, 8000):
            longer = native.snake_conv1d(padded(x, extra), alpha, w, b, stride, padding)
            assert torch.equal(longer[..., : alone.shape[-1]], alone)


def test_conv_dispatch_takes_the_measured_path():
    # C_in <= 256 strided convs and all transposed convs take the GEMM path, wider strided convs oneDNN
    # (crossover tables in kernels/defaults.h): the dispatched result is that path's, bit for bit.
    ext = native.extension()
    x, alpha = make_input(1, 256, 40)
    w, b = dac_weights(256, 8, 4)
    assert torch.equal(native.snake_conv1d(x, alpha, w, b, 2, 1), ext.snake_conv1d_gemm(x, alpha, w, b, 2, 1, 0))
    x, alpha = make_input(1, 300, 40)
    w, b = dac_weights(300, 8, 4)
    assert torch.equal(native.snake_conv1d(x, alpha, w, b, 2, 1), ext.snake_conv1d_onednn(x, alpha, w, b, 2, 1))
    wt, bt = dac_weights(300, 8, 4, transpose=True)
    assert torch.equal(native.snake_conv_transpose1d(x, alpha, wt, bt, 2, 1, 0),
                       ext.snake_conv_transpose1d_gemm(x, alpha, wt, bt, 2, 1, 0, 0))


def test_conv_gemm_rejects_impossible_shapes():
    ext = native.extension()
    x, alpha = make_input(1, 3, 4)
    w, b = dac_weights(3, 2, 9)
    with pytest.raises(RuntimeError, match="fewer than the kernel"):
        ext.snake_conv1d_gemm(x, alpha, w, b, 1, 0, 0)
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        ext.snake_conv1d_gemm(x, alpha, w, b, 0, 0, 0)
    with pytest.raises(RuntimeError, match="weight does not match"):
        ext.snake_conv_transpose1d_gemm(x, alpha, torch.randn(4, 2, 3), None, 2, 0, 0, 0)


def test_end_to_end_model_matches_eager():
    codec = pytest.importorskip("xcodec_fast.modeling.codec")
    from xcodec_fast.config import tiny_config

    model = codec.XcodecModel.from_random(tiny_config())
    audio = torch.randn(2, 1, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    model.backend = "eager"
    model.encode(audio, return_dict=False)  # first oneDNN calls may pick other kernels: warm up
    codes_eager = model.encode(audio, return_dict=False)
    audio_eager = model.decode(codes_eager, return_dict=False)
    model.backend = "native"
    codes_native = model.encode(audio, return_dict=False)
    audio_native = model.decode(codes_eager, return_dict=False)
    assert torch.equal(codes_native, codes_eager)
    tolerances.assert_close(audio_native, audio_eager, tolerances.AUDIO)


def test_missing_compiler_means_unavailable_and_auto_falls_back(tmp_path):
    # Fresh cache and no compiler: a clear reason, eager under auto, and `import xcodec_fast` works.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["xcodec_fast._C"] = None  # a prebuilt extension (--no-build-isolation install) is not loaded
        import torch, xcodec_fast
        from xcodec_fast import ops
        ok, reason = ops.availability("native")
        assert not ok and "compiler" in reason, reason
        assert ops.backend.resolve_auto(torch.device("cpu")) == "eager"
        x = torch.randn(1, 2, 5)
        ops.snake(x, torch.ones(2))
        print("OK")
        """
    )
    env = dict(os.environ, XCODEC_FAST_NATIVE_CACHE=str(tmp_path), CXX="/nonexistent/c++", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr


def test_only_a_completed_build_is_loaded(tmp_path, monkeypatch):
    # Under torchrun another rank may still be linking the .so: without the marker written after a
    # finished build, go through cpp_extension.load (its file lock waits for that rank) instead.
    from torch.utils import cpp_extension

    monkeypatch.setenv("XCODEC_FAST_NATIVE_CACHE", str(tmp_path))
    config = native._build_config()
    capability = config.target_capability()
    key = config.cache_key(capability, native._kernel_dir())
    built = tmp_path / key / f"xcodec_fast_native_{key.rsplit('-', 1)[-1]}.so"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF half-linked")

    locked_builds, opened = [], []

    def locked_build(name, build_directory, **kwargs):  # stands in for the minute-long real build
        Path(build_directory, f"{name}.so").write_bytes(b"\x7fELF linked in full")
        locked_builds.append(name)
        return "freshly built"

    monkeypatch.setattr(cpp_extension, "load", locked_build)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(native.shutil, "which", lambda _: "/usr/bin/c++")
    monkeypatch.setattr(native, "_load_module_from", lambda name, path: opened.append(path) or "from cache")

    assert native._compile(config, capability) == "freshly built" and opened == []
    assert built.with_suffix(".done").read_text() == str(built.stat().st_size)
    assert native._compile(config, capability) == "from cache" and opened == [built] and len(locked_builds) == 1
    built.write_bytes(b"\x7fELF relinked, still being written")  # size no longer the marker's
    assert native._compile(config, capability) == "freshly built" and len(locked_builds) == 2 and len(opened) == 1


def test_a_prebuilt_extension_from_other_sources_is_not_loaded(monkeypatch):
    # An editable install's _C goes stale when kernels/ changes: only a digest match loads it.
    config = native._build_config()
    capability = config.target_capability()
    digest = config.source_digest(native._kernel_dir())
    torch_version = torch.__version__.split("+")[0]

    class Prebuilt:
        def __init__(self, source):
            self.info = f"capability={capability};source={source};sin=x;torch={torch_version}"

        def build_info(self):
            return self.info

    import xcodec_fast

    def install(module):
        monkeypatch.setitem(sys.modules, "xcodec_fast._C", module)
        monkeypatch.setattr(xcodec_fast, "_C", module, raising=False)

    current = Prebuilt(digest)
    install(current)
    assert native._prebuilt(config, capability) is current
    install(Prebuilt("0" * 16))
    assert native._prebuilt(config, capability) is None
    assert native.extension().build_info().split(";")[1] == f"source={digest}"
