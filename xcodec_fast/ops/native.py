"""Native CPU backend: C++ kernels from ``kernels/`` (ATen Vectorized, at::parallel_for threads).

What it does
    * ``snake``: one pass instead of eager's five (mul, sin, square, mul, add), per (batch, channel)
      row in L1-sized chunks. fp32 is bit-identical to the eager reference: same operation order,
      no FMA contraction, and the same sin torch.sin uses (MKL VML HA on x86 builds, else ATen's
      Vectorized::sin). bf16/fp16 are stored reduced and computed in fp32 (rounded once, so they
      differ from eager's per-step rounding by about one bf16 ulp).
    * ``add_snake``: ``y = x + h`` and ``snake(y)`` in one pass, both written.
    * ``residual_unit``: a chunked implicit GEMM (snake -> im2col -> MKL sgemm -> snake -> sgemm
      + residual per L2-sized time chunk, tasks in parallel; ~1e-6 of the output scale from eager,
      not bit-equal), or Snake fused around oneDNN convolutions, or plain eager.
    * ``snake_conv1d``: a chunked implicit GEMM over the stride's phases (snake -> de-interleave ->
      im2col -> sgemm per time chunk), or snake + oneDNN, or eager.
    * ``snake_conv_transpose1d``: chunked GEMM Z = Wᵀ·snake(x) on W as stored (no per-call weight
      repacking), then each output frame gathers its taps from Z; or snake + oneDNN, or eager.
    * ``rvq_encode`` (fp32): the reference's residual VQ loop with its codeword products on
      oneDNN's GEMM (codebooks reordered once) or ATen's; codes equal eager's except near ties.
    Every GEMM path runs its fp32 products on MKL's sgemm or on oneDNN's brgemm ukernel: which is
    faster depends on the CPU (MKL ran at under half oneDNN's rate on a Zen 5 EPYC), so both are
    candidates. Which of them runs at a site is measured (see Dispatch below). Sources: kernels/snake.cpp,
    residual_unit.cpp, conv.cpp (common.h: row helpers and the GEMM; bindings.cpp: the module).

Build
    ``xcodec_fast._C`` if it was prebuilt (``pip install --no-build-isolation .`` with torch
    installed) for this torch and SIMD level; otherwise compiled on first use with
    ``torch.utils.cpp_extension`` + ninja (about a minute, once per machine) into
    ``$XCODEC_FAST_NATIVE_CACHE`` or ``~/.cache/xcodec_fast/native/<torch-python-simd-sourcehash>``.
    No compiler or ninja: :func:`availability` says why and ``auto`` runs eager.

Inference only: with autograd recording (grad enabled and an input requiring grad) every op
runs the eager implementation instead.

Dispatch: residual units and strided / transposed convs have several implementations here
(chunked implicit GEMM, Snake fused with oneDNN convolutions, plain eager). Which one runs at a
site is measured once per machine (:mod:`xcodec_fast.ops.tuning`: timed on a random input of the
site's geometry, stored per CPU model, thread count, torch version and kernel sources); the
crossovers in kernels/defaults.h (one Intel VM's, with its table) are only the untuned default
(``XCODEC_FAST_TUNE=off``).

Speed: measured by the benchmark suite (``xcodec-fast bench``), stored per machine in
bench/results/ and rendered into the README.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from ..lengths import conv_output_length, conv_transpose_output_length
from . import eager, grid, tuning, winograd
from .packing import packed
from .backend import register

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# An installed wheel carries the sources in xcodec_fast/kernels; a checkout has them in kernels/.
_KERNEL_DIR_CANDIDATES = (_PACKAGE_DIR / "kernels", _PACKAGE_DIR.parent / "kernels")

_lock = threading.Lock()
_extension = None
_failure: str | None = None
_description = ""


def _kernel_dir() -> Path:
    for candidate in _KERNEL_DIR_CANDIDATES:
        if (candidate / "build_config.py").is_file():
            return candidate
    raise FileNotFoundError(
        "native kernel sources not found (looked in " + ", ".join(str(c) for c in _KERNEL_DIR_CANDIDATES) + ")"
    )


def _load_module_from(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_config():
    return _load_module_from("xcodec_fast_kernels_build_config", _kernel_dir() / "build_config.py")


def _info(module) -> dict[str, str]:
    return dict(item.split("=", 1) for item in module.build_info().split(";"))


def _prebuilt(config, capability: str):
    """xcodec_fast._C when it exists and was built from the kernel sources found now, for this torch
    and SIMD level, else None (in a checkout whose kernels changed since install, say)."""
    try:
        from .. import _C  # type: ignore[attr-defined]
    except ImportError:
        return None
    info = _info(_C)
    if (
        info.get("capability") != capability
        or info.get("torch") != torch.__version__.split("+")[0]
        or info.get("source") != config.source_digest(_kernel_dir())
    ):
        return None
    return _C


def cache_dir() -> Path:
    root = os.environ.get("XCODEC_FAST_NATIVE_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "xcodec_fast" / "native"


def _completed_build(built: Path) -> bool:
    """Whether ``built`` is a finished build: its marker (written only after a build loaded) exists
    and records the .so's current size. A .so alone may be one another process is still linking."""
    try:
        return int(built.with_suffix(".done").read_text()) == built.stat().st_size
    except (OSError, ValueError):
        return False


def _compile(config, capability: str):
    """Load the cached JIT build for these sources, or build it (needs a C++ compiler and ninja)."""
    kernel_dir = _kernel_dir()
    key = config.cache_key(capability, kernel_dir)
    name = "xcodec_fast_native_" + key.rsplit("-", 1)[-1]
    build_dir = cache_dir() / key
    built = build_dir / f"{name}.so"
    if _completed_build(built):  # skip cpp_extension's ninja round trip when nothing changed
        try:
            return _load_module_from(name, built)
        except ImportError:
            pass  # damaged since: rebuild below, under cpp_extension's lock

    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler!r} not on PATH); install g++ or set CXX")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    build_dir.mkdir(parents=True, exist_ok=True)
    # cpp_extension.load builds under a file lock in build_dir (other ranks wait for it, then load
    # the finished .so), so the .so is complete once it returns: only then is the marker written.
    module = cpp_extension.load(
        name=name,
        sources=config.source_paths(kernel_dir),
        extra_cflags=config.build_flags(capability, kernel_dir),
        build_directory=str(build_dir),
        with_cuda=False,
        verbose=os.environ.get("XCODEC_FAST_NATIVE_VERBOSE") == "1",
    )
    marker = built.with_suffix(".done")
    tmp = marker.with_name(f".{marker.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(str(built.stat().st_size))
        os.replace(tmp, marker)  # atomic: a reader sees no marker or a whole one
    except OSError:
        pass  # the marker only saves the next process ninja's round trip
    return module


def extension():
    """The loaded C++ module (building it on first use); raises RuntimeError if it cannot be had."""
    global _extension, _failure, _description
    if _extension is not None:
        return _extension
    with _lock:
        if _extension is None and _failure is None:
            try:
                config = _build_config()
                capability = config.target_capability()
                module = _prebuilt(config, capability)
                origin = "prebuilt xcodec_fast._C"
                if module is None:
                    module = _compile(config, capability)
                    origin = f"built in {cache_dir()}"
                info = _info(module)
                _description = f"C++ CPU kernels ({info['capability']}, sin: {info['sin']}; {origin})"
                _extension = module
            except Exception as exc:  # compiler errors, missing tools, unreadable cache...
                message = str(exc).strip().splitlines()
                _failure = f"{type(exc).__name__}: {message[-1] if message else ''}"[:500]
        if _extension is None:
            raise RuntimeError(f"native kernels unavailable: {_failure}")
    return _extension


def availability(device: torch.device) -> tuple[bool, str]:
    if torch.device(device).type != "cpu":
        return False, "native kernels run on CPU tensors only"
    try:
        extension()
    except RuntimeError as exc:
        return False, str(exc)
    return True, _description


def _kernels():
    """The C++ functions directly (no dispatcher overhead), or their torch.library ops while
    torch.compile traces (it cannot trace pybind functions)."""
    return torch.ops.xcodec_fast_native if torch.compiler.is_compiling() else extension()


def _recording_autograd(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


@register("snake", "native")
def snake(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    if _recording_autograd(x, alpha):
        return eager.snake(x, alpha)
    return _kernels().snake(x, alpha)


@register("add_snake", "native")
def add_snake(x: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if _recording_autograd(x, h, alpha):
        return eager.add_snake(x, h, alpha)
    return tuple(_kernels().add_snake(x, h, alpha))


@register("residual_unit", "native")
def residual_unit(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2) -> torch.Tensor:
    if _recording_autograd(x, alpha1, weight1, bias1, alpha2, weight2, bias2):
        return eager.residual_unit(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2)
    if torch.compiler.is_compiling():
        return torch.ops.xcodec_fast_native.residual_unit(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2)
    return _tuned_residual_unit(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2)


@register("snake_conv1d", "native")
def snake_conv1d(x, alpha, weight, bias, stride, padding) -> torch.Tensor:
    if _recording_autograd(x, alpha, weight, bias):
        return eager.snake_conv1d(x, alpha, weight, bias, stride, padding)
    if torch.compiler.is_compiling():
        return torch.ops.xcodec_fast_native.snake_conv1d(x, alpha, weight, bias, stride, padding)
    return _tuned_snake_conv1d(x, alpha, weight, bias, stride, padding)


@register("snake_conv_transpose1d", "native")
def snake_conv_transpose1d(x, alpha, weight, bias, stride, padding, output_padding) -> torch.Tensor:
    # the kernels' task spans assume the padding lies within the kernel (every decoder's does)
    if _recording_autograd(x, alpha, weight, bias) or int(padding) >= weight.shape[-1]:
        return eager.snake_conv_transpose1d(x, alpha, weight, bias, stride, padding, output_padding)
    if torch.compiler.is_compiling():
        return torch.ops.xcodec_fast_native.snake_conv_transpose1d(x, alpha, weight, bias, stride, padding,
                                                                   output_padding)
    return _tuned_snake_conv_transpose1d(x, alpha, weight, bias, stride, padding, output_padding)


def snake_conv_transpose1d_on_grid(x, alpha, weight, bias, stride, padding, output_padding, block) -> torch.Tensor:
    """The transposed conv with every output frame independent of the input's width (see
    ops.snake_conv_transpose1d_on_grid): fp32 on the chunked GEMM's oneDNN engine, each output frame
    one brgemm dot product over the same inputs in the same order whatever the width or chunking;
    other dtypes as the measured dispatch runs them, on the grid's blocks."""
    fits = (x.dtype == weight.dtype == torch.float32 and weight.dim() == 3 and weight.shape[0] == x.shape[1]
            and int(padding) < weight.shape[-1])
    if not fits or _recording_autograd(x, alpha, weight, bias):
        return grid.blocked_snake_conv_transpose1d(snake_conv_transpose1d, x, alpha, weight, bias, stride, padding,
                                                   output_padding, block)
    ext = extension()
    return ext.snake_conv_transpose1d_gemm(
        x, alpha, weight, bias, int(stride), int(padding), int(output_padding), 0,
        packed(weight, "native_transposed_rows", ext.pack_conv_transpose1d_weight_rows), onednn=True)


def snake_conv1d_on_grid(x, alpha, weight, bias, padding, block) -> torch.Tensor:
    """``conv1d(snake(x))``, stride 1, with every output frame independent of the input's width:
    fp32 on the chunked GEMM's oneDNN engine and bf16 on the bf16 brgemm kernel (each output one
    dot product in a fixed order; for the decoder's 64 -> 1 last conv also 4x faster than Snake then
    oneDNN's conv), else Snake then the conv on the grid's blocks."""
    fits = weight.dim() == 3 and weight.shape[1] == x.shape[1] and x.dtype == weight.dtype
    if fits and not _recording_autograd(x, alpha, weight, bias):
        if x.dtype == torch.float32:
            ext = extension()
            return ext.snake_conv1d_gemm(x, alpha, weight, bias, 1, int(padding), 0,
                                         packed(weight, "native_phases_s1", lambda w: ext.pack_conv1d_weight(w, 1)),
                                         onednn=True)
        if x.dtype == torch.bfloat16 and x.shape[1] % 2 == 0 and brgemm_bf16_available():
            return snake_conv1d_brgemm(x, alpha, weight, bias, 1, padding)
    return grid.blocked_conv1d(snake(x, alpha), weight, bias, int(padding), int(block))


@register("conv1d", "native")
def conv1d(x, weight, bias, stride, padding) -> torch.Tensor:
    """ATen's conv1d, or for bf16 the brgemm implicit GEMM where it measures faster (oneDNN's bf16
    1-D convs spend most of their time reordering layouts on the CPUs measured). fp32 stays on
    ATen: bit-equal to eager, so fp32 codes are untouched."""
    if (_recording_autograd(x, weight, bias) or torch.compiler.is_compiling() or x.dtype != torch.bfloat16
            or weight.dtype != x.dtype):
        return eager.conv1d(x, weight, bias, stride, padding)
    rest = (weight, bias, int(stride), int(padding))
    candidates = {"aten": lambda v: eager.conv1d(v, *rest)}
    if x.shape[1] * int(stride) % 2 == 0 and brgemm_bf16_available():
        candidates["brgemm"] = lambda v: snake_conv1d_brgemm(v, None, *rest)
    if x.shape[1] == 1:
        # one input channel (the waveform): oneDNN's bf16 conv took 84 ms for HuBERT's first layer
        # on 10 s, as frames-by-taps windows times the (C_out, k) weight 1.8 ms
        candidates["unfold"] = lambda v: _single_channel_conv1d(v, *rest)
    if len(candidates) == 1:
        return eager.conv1d(x, *rest)
    key = "|".join(["conv1d", f"{x.shape[1]}->{weight.shape[0]}", f"k{weight.shape[-1]}", f"s{int(stride)}",
                    str(x.dtype).replace("torch.", "")])
    return tuner().pick(key, candidates, x, default=candidates["aten"])


def _single_channel_conv1d(x, weight, bias, stride: int, padding: int) -> torch.Tensor:
    """conv1d of a one-channel x as a matmul of the weight (C_out, k) with x's (k, frames) windows."""
    windows = F.pad(x[:, 0], (padding, padding)).unfold(-1, weight.shape[-1], stride).transpose(1, 2)
    kernel = weight[:, 0].expand(x.shape[0], *weight[:, 0].shape)
    if bias is None:
        return torch.bmm(kernel, windows)
    return torch.baddbmm(bias[None, :, None].expand(x.shape[0], weight.shape[0], windows.shape[-1]), kernel, windows)


# Below this many values per polyphase block row (stride x C_in) the windows are gathered into an
# im2col instead: HuBERT's first layer (one channel, 10 taps, stride 5) would make K=5 GEMMs.
_IM2COL_MAX_WIDTH = 64


@register("conv1d_time_major", "native")
def conv1d_time_major(x, weight, bias, stride, padding=0, groups=1) -> torch.Tensor:
    """The time-major conv as polyphase GEMMs: output frame t reads input frames [t·s, t·s + k),
    so taps [a, a + s) of every output are one (T, s·C_in) matrix with row stride s·C_in straight
    out of x (no im2col copy), times those taps' (s·C_in, C_out) weight block; the blocks' products
    add up. On oneDNN (weights reordered once) or ATen's GEMM; or oneDNN's channels-last conv (x
    already is that layout), the only fast one for the grouped positional conv; or eager's
    transposed conv: whichever measures faster. On a Zen 5 EPYC HuBERT's 512-channel layers ran at
    1.6x eager's conv, its positional conv (k=128, 16 groups) at 2.2x."""
    if (_recording_autograd(x, weight, bias) or torch.compiler.is_compiling() or x.dtype == torch.float16
            or weight.dtype != x.dtype):
        return eager.conv1d_time_major(x, weight, bias, stride, padding, groups)
    rest = (weight, bias, int(stride), int(padding))
    candidates = {"eager": lambda v: eager.conv1d_time_major(v, *rest, groups).contiguous(),
                  "channels-last": lambda v: _channels_last_conv(v, *rest, groups)}
    if groups == 1:
        candidates["aten"] = lambda v: _time_major_gemms(v, *rest, onednn=False)
        if _onednn_linear_available(x.dtype):
            candidates["onednn"] = lambda v: _time_major_gemms(v, *rest, onednn=True)
    c_out, c_in, kernel = weight.shape
    key = "|".join(["conv1d_time_major", f"{c_in * groups}->{c_out}", f"k{kernel}", f"s{int(stride)}",
                    *([f"p{int(padding)}"] if padding else []), *([f"g{int(groups)}"] if groups > 1 else []),
                    str(x.dtype).replace("torch.", "")])

    def probe() -> torch.Tensor:  # one item of ~4M output values, whatever the call's length
        frames = max(64, min(16384, (1 << 22) // max(c_in * groups, c_out)))
        return torch.randn(1, max(1, (frames - 1) * int(stride) + kernel - 2 * int(padding)), c_in * groups,
                           generator=torch.Generator().manual_seed(0)).to(x.dtype)

    default = candidates.get("onednn", candidates.get("aten", candidates["channels-last"]))
    return tuner().pick(key, candidates, x, default=default, probe=probe)


def _channels_last_conv(x, weight, bias, stride: int, padding: int, groups: int) -> torch.Tensor:
    """(B, N, C) is (B, C, 1, N) in channels-last memory: oneDNN's 2-D conv reads it as it lies and
    writes (B, T, C) the same way."""
    image = x.contiguous().transpose(1, 2).unsqueeze(2)
    kernel = packed(weight, "channels_last_2d", lambda w: w.unsqueeze(2).contiguous(memory_format=torch.channels_last))
    out = F.conv2d(image, kernel, bias, stride=(1, stride), padding=(0, padding), groups=groups)
    return out.squeeze(2).transpose(1, 2).contiguous()


def _time_major_gemms(x, weight, bias, stride: int, padding: int, onednn: bool) -> torch.Tensor:
    x = F.pad(x, (0, 0, padding, padding)) if padding else x.contiguous()
    batch, frames, c_in = x.shape
    c_out, _, kernel = weight.shape
    out_frames = conv_output_length(frames, kernel, stride)
    im2col = stride * c_in < _IM2COL_MAX_WIDTH
    taps = [(0, kernel)] if im2col else [(a, min(kernel, a + stride)) for a in range(0, kernel, stride)]

    def weight_blocks(w: torch.Tensor) -> list[torch.Tensor]:  # (C_out, taps·C_in), tap-major like x's rows
        blocks = [w[:, :, a:e].permute(0, 2, 1).reshape(c_out, (e - a) * c_in).contiguous() for a, e in taps]
        if onednn:
            blocks = [torch.ops.mkldnn._reorder_linear_weight(b, out_frames) for b in blocks]
        return blocks

    blocks = packed(weight, f"time_major_s{stride}_{'onednn' if onednn else 'aten'}", weight_blocks)
    items = []
    for item in x:
        if im2col:
            rows = [item.unfold(0, kernel, stride).transpose(1, 2).reshape(out_frames, kernel * c_in)]
        else:
            rows = [item.as_strided((out_frames, (e - a) * c_in), (stride * c_in, 1), item.storage_offset() + a * c_in)
                    for a, e in taps]
        if onednn:
            y = torch.ops.mkldnn._linear_pointwise(rows[0], blocks[0], bias, "none", [], "")
            for r, b in zip(rows[1:], blocks[1:]):
                y.add_(torch.ops.mkldnn._linear_pointwise(r, b, None, "none", [], ""))
        else:
            y = rows[0] @ blocks[0].t() if bias is None else torch.addmm(bias, rows[0], blocks[0].t())
            for r, b in zip(rows[1:], blocks[1:]):
                y.addmm_(r, b.t())
        items.append(y)
    return items[0][None] if batch == 1 else torch.stack(items)


@functools.cache  # a fact of the build and CPU, asked on every Linear call
def _onednn_linear_available(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN's linear for ``dtype`` here: bf16 needs AVX-512 (BW/VL/DQ), AVX-NE-CONVERT or AMX, so
    an AVX2-only CPU (Zen 3) refuses it in the weight reorder."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


@register("linear", "native")
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """ATen's linear (MKL sgemm for fp32) or oneDNN's on a weight reordered once into its blocked
    layout, whichever measures faster here: MKL's fp32 GEMM runs at 0.4x oneDNN's on some AMD
    CPUs (163 vs 401 GFLOP/s on a 2-core EPYC Zen 5), while on others the two are close."""
    if (_recording_autograd(x, weight, bias) or torch.compiler.is_compiling() or x.dtype == torch.float16
            or not _onednn_linear_available(x.dtype)):
        return eager.linear(x, weight, bias)
    rows = max(1, x.numel() // max(x.shape[-1], 1))

    def onednn(v: torch.Tensor) -> torch.Tensor:
        packed_weight = packed(weight, "onednn_linear",
                               lambda w: torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), rows))
        return torch.ops.mkldnn._linear_pointwise(v.contiguous(), packed_weight, bias, "none", [], "")

    candidates = {"onednn": onednn, "aten": lambda v: eager.linear(v, weight, bias)}
    # Which GEMM wins depends on the row count as well (2-core Xeon, bf16 3072 -> 768: 500 rows aten
    # 1.4 vs oneDNN 2.4 ms, 2730 rows 10.7 vs 10.7): one choice per power-of-two bucket of rows,
    # measured at the bucket's size (64 to 4096 rows).
    probe_rows = min(max(1 << (rows - 1).bit_length(), 64), 4096)
    key = "|".join(["linear", f"{weight.shape[1]}->{weight.shape[0]}", "bias" if bias is not None else "nobias",
                    f"rows{probe_rows}", str(x.dtype).replace("torch.", "")])

    def probe() -> torch.Tensor:  # built only when the site is measured
        return torch.randn(probe_rows, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(x.dtype)

    # untuned default (tuning off): oneDNN, the faster of the two where measured; tuning decides elsewhere
    return tuner().pick(key, candidates, x, default=onednn, probe=probe)


@register("rvq_encode", "native")
def rvq_encode(x: torch.Tensor, codebooks: torch.Tensor, codebook_sq_norms: torch.Tensor,
               num_quantizers: int) -> torch.Tensor:
    """The reference's residual VQ with its codeword products on oneDNN's GEMM (each codebook
    reordered once into oneDNN's layout) or on ATen's, whichever measures faster here: the
    products are nearly all of its time, and MKL's fp32 GEMM ran them at 0.4x oneDNN's on a Zen 5
    EPYC. Only the products' rounding differs from eager's, so codes differ only at near ties.
    fp32 only: in bf16, scores of 1024-dim frames round so coarsely that half of the frames of a
    random test are near ties, and another GEMM would pick another code at each."""
    if (_recording_autograd(x, codebooks) or torch.compiler.is_compiling() or x.dtype != torch.float32
            or not _onednn_linear_available(x.dtype)):
        return eager.rvq_encode(x, codebooks, codebook_sq_norms, num_quantizers)
    rows = x.shape[0] * x.shape[2]

    def onednn(v: torch.Tensor) -> torch.Tensor:
        books = packed(codebooks, "onednn_linear_per_codebook", lambda c: [
            torch.ops.mkldnn._reorder_linear_weight(c[q].contiguous(), rows) for q in range(c.shape[0])])
        return eager.nearest_codes(
            v, codebooks, num_quantizers,
            products=lambda flat, q: torch.ops.mkldnn._linear_pointwise(flat, books[q], None, "none", [], ""),
            sq_norms=lambda q: codebook_sq_norms[q][None])

    candidates = {"onednn": onednn, "aten": lambda v: eager.rvq_encode(v, codebooks, codebook_sq_norms, num_quantizers)}
    # one choice per codebook geometry (not per length): an item alone and in a padded batch then
    # take the same GEMM; timed on 512 frames, about a 10 s clip
    key = "|".join(["rvq_encode", f"D{codebooks.shape[2]}", f"K{codebooks.shape[1]}", f"q{int(num_quantizers)}",
                    str(x.dtype).replace("torch.", "")])

    def probe() -> torch.Tensor:
        return torch.randn(1, x.shape[1], 512, generator=torch.Generator().manual_seed(0)).to(x.dtype)

    return tuner().pick(key, candidates, x, default=onednn, probe=probe)


# ---- measured dispatch (xcodec_fast.ops.tuning): per shape, the fastest implementation here -----


_source_digest: str | None = None


def source_digest() -> str:
    """Digest of the kernel sources of the loaded extension (part of the dispatch table's key)."""
    global _source_digest
    if _source_digest is None:
        _source_digest = _info(extension())["source"]
    return _source_digest


def tuner() -> tuning.Tuner:
    """This machine's dispatch table for the kernels loaded now."""
    return tuning.tuner(source_digest())


def _tuned(op: str, x, geometry: tuple, rest: tuple, onednn, eager_fn, gemm, default, packs=None, extra=None,
           onednn_packs=None):
    """Run ``op`` on ``x`` (other arguments ``rest``) with this site's measured implementation:
    Snake + oneDNN, plain eager, or the chunked GEMM (``gemm`` None where it cannot run) with its
    products on MKL ("gemm") or on oneDNN ("gemm-onednn"), reading the weights ``packs()`` (or
    ``onednn_packs()``) returns, packed once per weight tensor; ``extra``: further candidates by
    name, each taking ``x``."""
    candidates = {"onednn": lambda v: onednn(v, *rest), "eager": lambda v: eager_fn(v, *rest)}
    if gemm is not None:
        candidates["gemm"] = lambda v: gemm(v, *rest, 0, *packs())
        candidates["gemm-onednn"] = lambda v: gemm(v, *rest, 0, *(onednn_packs or packs)(), onednn=True)
    candidates.update(extra or {})
    key = "|".join([op, *map(str, geometry), str(x.dtype).replace("torch.", "")])
    return tuner().pick(key, candidates, x, default=lambda v: default(v, *rest))


def _tuned_residual_unit(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2):
    ext = extension()
    c = x.shape[1]
    # the chunked implicit GEMM needs a square unit with an odd kernel, all in x's dtype
    square = (weight1.dim() == 3 and tuple(weight1.shape[:2]) == (c, c) and weight1.shape[2] % 2 == 1
              and tuple(weight2.shape) == (c, c, 1) and alpha2.numel() == c and weight1.dtype == weight2.dtype == x.dtype)
    rest = (alpha1, weight1, bias1, int(dilation), alpha2, weight2, bias2)
    # Measured dispatch chooses among the tile sizes allowed now (F(4,7) is opt-in, see winograd.py);
    # an error study may force any of them.
    fast = winograd.fast_tiles_enabled()
    sizes = winograd.TILE_SIZES if tuning.forced_choice("residual_unit") else winograd.dispatch_tile_sizes(fast)
    extra = {}
    for m in sizes if square else ():
        extra[f"winograd{m}"] = lambda v, m=m: residual_unit_winograd(v, *rest, m=m)
        extra[f"winograd{m}-onednn"] = lambda v, m=m: residual_unit_winograd(v, *rest, m=m, onednn=True)
    if square and x.dtype == torch.bfloat16 and c % 2 == 0 and brgemm_bf16_available():
        extra["brgemm"] = lambda v: residual_unit_brgemm(v, *rest)
    # the opt-in tiles are measured under their own key: switching modes must not overwrite choices
    geometry = (f"C{c}", f"k{weight1.shape[-1]}", f"d{int(dilation)}", *(("fast-winograd",) if fast else ()))
    return _tuned("residual_unit", x, geometry, rest,
                  ext.residual_unit_onednn, eager.residual_unit, ext.residual_unit_gemm if square else None,
                  ext.residual_unit,
                  lambda: (packed(weight1, "native_taps_last", ext.pack_residual_weight),
                           packed(weight2, "native_taps_last", ext.pack_residual_weight)), extra)


def residual_unit_winograd(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, m: int = 2,
                           chunk: int = 0, onednn: bool = False) -> torch.Tensor:
    """The residual unit with its k-tap conv as Winograd F(m, k) (see :mod:`.winograd`), weights
    transformed once per weight tensor; its products on oneDNN's GEMM if ``onednn``, else MKL's."""
    ext = extension()
    filter_ = packed(weight1, f"native_winograd{m}", lambda w: winograd.transform_filter(w, m))
    input_transform, output_transform = winograd.kernel_transforms(m, weight1.shape[-1])
    return ext.residual_unit_winograd(x, alpha1, weight1, bias1, int(dilation), alpha2, weight2, bias2, chunk,
                                      filter_, packed(weight2, "native_taps_last", ext.pack_residual_weight),
                                      input_transform, output_transform, onednn)


_brgemm_bf16: bool | None = None


def brgemm_bf16_available() -> bool:
    """Whether this CPU and torch build run bf16 GEMMs on matrix units (oneDNN brgemm: AMX or
    AVX512-BF16), which :func:`residual_unit_brgemm` needs."""
    global _brgemm_bf16
    if _brgemm_bf16 is None:
        _brgemm_bf16 = bool(extension().brgemm_bf16_available())
    return _brgemm_bf16


def residual_unit_brgemm(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2, chunk: int = 0) -> torch.Tensor:
    """The bf16 residual unit with bf16 GEMM operands and fp32 accumulation (see
    kernels/bf16_brgemm.cpp), weights packed once per weight tensor."""
    ext = extension()
    return ext.residual_unit_brgemm(x, alpha1, weight1, bias1, int(dilation), alpha2, weight2, bias2, chunk,
                                    packed(weight1, "native_taps_last_bf16", ext.pack_residual_weight_bf16),
                                    packed(weight2, "native_taps_last_bf16", ext.pack_residual_weight_bf16))


def snake_conv1d_brgemm(x, alpha, weight, bias, stride, padding, chunk: int = 0):
    """The bf16 strided conv with bf16 GEMM operands and fp32 accumulation (see
    kernels/bf16_brgemm.cpp), the weight packed once per weight tensor."""
    ext = extension()
    stride = int(stride)
    return ext.snake_conv1d_brgemm(x, alpha, weight, bias, stride, int(padding), chunk,
                                   packed(weight, f"native_phases_s{stride}_bf16",
                                          lambda w: ext.pack_conv1d_weight_bf16(w, stride)))


def _tuned_snake_conv1d(x, alpha, weight, bias, stride, padding):
    ext = extension()
    fits = x.dtype == weight.dtype and weight.dim() == 3 and weight.shape[1] == x.shape[1]
    rest = (alpha, weight, bias, int(stride), int(padding))
    extra = {}
    if fits and x.dtype == torch.bfloat16 and x.shape[1] * int(stride) % 2 == 0 and brgemm_bf16_available():
        extra["brgemm"] = lambda v: snake_conv1d_brgemm(v, *rest)
    return _tuned("snake_conv1d", x, (f"{x.shape[1]}->{weight.shape[0]}", f"k{weight.shape[-1]}", f"s{int(stride)}"),
                  rest, ext.snake_conv1d_onednn, eager.snake_conv1d,
                  ext.snake_conv1d_gemm if fits else None, ext.snake_conv1d,
                  lambda: (packed(weight, f"native_phases_s{int(stride)}",
                                  lambda w: ext.pack_conv1d_weight(w, int(stride))),), extra)


def snake_conv_transpose1d_brgemm(x, alpha, weight, bias, stride, padding, output_padding, chunk: int = 0):
    """The bf16 transposed conv with bf16 GEMM operands and fp32 accumulation (see
    kernels/bf16_brgemm.cpp), the weight packed once per weight tensor."""
    ext = extension()
    return ext.snake_conv_transpose1d_brgemm(x, alpha, weight, bias, int(stride), int(padding), int(output_padding),
                                             chunk, packed(weight, "native_transposed_bf16",
                                                           ext.pack_conv_transpose1d_weight_bf16))


def _tuned_snake_conv_transpose1d(x, alpha, weight, bias, stride, padding, output_padding):
    ext = extension()
    # the chunked GEMM's task spans assume the padding lies within the kernel (the decoder's does)
    fits = (x.dtype == weight.dtype and weight.dim() == 3 and weight.shape[0] == x.shape[1]
            and int(padding) < weight.shape[-1])
    rest = (alpha, weight, bias, int(stride), int(padding), int(output_padding))
    extra = {}
    if fits and x.dtype == torch.bfloat16 and x.shape[1] % 2 == 0 and brgemm_bf16_available():
        extra["brgemm"] = lambda v: snake_conv_transpose1d_brgemm(v, *rest)
    return _tuned("snake_conv_transpose1d", x,
                  (f"{x.shape[1]}->{weight.shape[1]}", f"k{weight.shape[-1]}", f"s{int(stride)}"),
                  rest, ext.snake_conv_transpose1d_onednn, eager.snake_conv_transpose1d,
                  ext.snake_conv_transpose1d_gemm if fits else None, ext.snake_conv_transpose1d,
                  lambda: (weight if weight.dtype == torch.float32 and weight.is_contiguous()
                           else packed(weight, "native_float", ext.pack_conv_transpose1d_weight),), extra,
                  lambda: (packed(weight, "native_transposed_rows", ext.pack_conv_transpose1d_weight_rows),))


# torch.library registrations, so that torch.compile / torch.export can treat the kernels as opaque
# ops: torch.ops.xcodec_fast_native.<op>. The dispatch above calls the C++ functions directly, which
# skips the dispatcher's per-call overhead.
_LIB = "xcodec_fast_native"


@torch.library.custom_op(f"{_LIB}::snake", mutates_args=(), device_types="cpu")
def _snake_op(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return extension().snake(x, alpha)


@_snake_op.register_fake
def _(x, alpha):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op(f"{_LIB}::add_snake", mutates_args=(), device_types="cpu")
def _add_snake_op(x: torch.Tensor, h: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(extension().add_snake(x, h, alpha))


@_add_snake_op.register_fake
def _(x, h, alpha):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(2))


@torch.library.custom_op(f"{_LIB}::residual_unit", mutates_args=(), device_types="cpu")
def _residual_unit_op(
    x: torch.Tensor,
    alpha1: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor | None,
    dilation: int,
    alpha2: torch.Tensor,
    weight2: torch.Tensor,
    bias2: torch.Tensor | None,
) -> torch.Tensor:
    return _tuned_residual_unit(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2)


@_residual_unit_op.register_fake
def _(x, alpha1, weight1, bias1, dilation, alpha2, weight2, bias2):
    padding = (weight1.shape[-1] - 1) * dilation // 2
    frames = x.shape[-1] + 2 * padding - dilation * (weight1.shape[-1] - 1)
    return x.new_empty(x.shape[0], weight2.shape[0], frames)


@torch.library.custom_op(f"{_LIB}::snake_conv1d", mutates_args=(), device_types="cpu")
def _snake_conv1d_op(
    x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    return _tuned_snake_conv1d(x, alpha, weight, bias, stride, padding)


@_snake_conv1d_op.register_fake
def _(x, alpha, weight, bias, stride, padding):
    frames = conv_output_length(x.shape[-1], weight.shape[-1], stride, padding)
    return x.new_empty(x.shape[0], weight.shape[0], frames)


@torch.library.custom_op(f"{_LIB}::snake_conv_transpose1d", mutates_args=(), device_types="cpu")
def _snake_conv_transpose1d_op(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int,
    output_padding: int,
) -> torch.Tensor:
    return _tuned_snake_conv_transpose1d(x, alpha, weight, bias, stride, padding, output_padding)


@_snake_conv_transpose1d_op.register_fake
def _(x, alpha, weight, bias, stride, padding, output_padding):
    frames = conv_transpose_output_length(x.shape[-1], weight.shape[-1], stride, padding, output_padding)
    return x.new_empty(x.shape[0], weight.shape[1], frames)
