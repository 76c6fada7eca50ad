"""Every Triton kernel compiles for sm_90 and sm_80 at the launch configurations the dispatch
uses, without spilling, and the half-precision matmul paths run on tensor cores.

Needs no GPU: Triton compiles on the host (ptxas ships in its wheel). The interpreter that the
other tests run under replaces @triton.jit functions, so compiling happens in a subprocess
without TRITON_INTERPRET (xcodec_fast.ops.triton._compile). Compiles are cached by Triton
(~/.triton/cache): the first run takes minutes on two cores, later ones seconds.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

import xcodec_fast.ops as ops  # noqa: E402

if not ops.availability("triton", "cuda" if torch.cuda.is_available() else "cpu")[0]:
    pytest.skip("triton backend unavailable", allow_module_level=True)

from xcodec_fast.ops.triton import _compile, _launch, _math, conv, gather_sum, residual_unit, rvq_encode, snake  # noqa: E402,E501

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARCHS = (90, 80)
CONFIGS = _compile.collect()

if not os.access(_compile._tool("cuobjdump"), os.X_OK):
    pytest.skip("Triton's wheel has no NVIDIA tools (cuobjdump) to read the cubins", allow_module_level=True)


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    code = "import sys; from xcodec_fast.ops.triton._compile import main; sys.exit(main(sys.argv[1:]))"
    args = ["--json", "--arch", *map(str, ARCHS)]
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=3600)
    try:
        results = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"compile run produced no report (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return {(r["name"], r["arch"]): r for r in results}


def test_configs_are_registered_and_unique():
    names = [c.name for c in CONFIGS]
    assert len(names) == len(set(names)), "config names must be unique"
    kernels = {_compile.kernel_name(c.kernel) for c in CONFIGS}
    assert {"_snake_kernel", "_rvq_encode_kernel", "_gather_sum_kernel"} <= kernels


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_kernel_compiles_without_spills(compiled, cfg, arch):
    r = compiled[(cfg.name, f"sm_{arch}")]
    assert "error" not in r, r.get("error")
    assert r["spill_loads"] == 0 and r["spill_stores"] == 0, (
        f"{cfg.name} on sm_{arch} spills: {r['regs']} regs, stack {r['stack']} B, "
        f"{r['spill_loads']} LDL / {r['spill_stores']} STL"
    )
    if cfg.expect_tensor_cores:
        assert r["tensor_core"] > 0, f"{cfg.name} on sm_{arch}: no HMMA/HGMMA; ops {r['ops']}"


def _record_launches(monkeypatch, kernels, execute=True):
    """Wrap each kernel's run() to record (kernel, pointer dtypes, constexprs, num_warps, num_stages);
    with execute=False the kernel does not run (launch plans on meta tensors of any size)."""
    seen = []
    for kernel in kernels:
        run = kernel.run
        names = _compile._arg_names(kernel)

        def wrapper(*args, _run=run, _kernel=kernel, _names=names, **kwargs):
            ptrs = {n: "*" + _compile.TRITON_TYPES[a.dtype] for n, a in zip(_names, args) if isinstance(a, torch.Tensor)}
            consts = {k: v for k, v in kwargs.items() if k in _names}
            seen.append((_kernel, ptrs, consts, kwargs.get("num_warps", 4), kwargs.get("num_stages", 3)))
            return _run(*args, **kwargs) if execute else None

        monkeypatch.setattr(kernel, "run", wrapper)
    return seen


def _covered(launch) -> bool:
    kernel, ptrs, consts, warps, stages = launch
    for c in CONFIGS:
        if c.kernel is not kernel or c.num_warps != warps or c.num_stages != stages:
            continue
        if all(c.signature[n] == t for n, t in ptrs.items()) and all(c.constexprs.get(k) == v for k, v in consts.items()):
            return True
    return False


def test_configs_cover_what_the_launchers_run(monkeypatch):
    """The compile check is only as good as its configs: plan the snake and RVQ launches at several
    sizes, in every dtype and frame tile, as a GPU would (meta tensors, kernels not run), and check
    that every launch (dtypes, constexprs, warps, stages) is one of the registered configs."""
    seen = _record_launches(monkeypatch, [snake._snake_kernel, rvq_encode._rvq_encode_kernel,
                                          gather_sum._gather_sum_kernel], execute=False)
    monkeypatch.setattr(_math, "fast_sin", lambda x: x.dtype != torch.float32)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        meta = lambda *shape, dtype=dt: torch.empty(*shape, device="meta", dtype=dtype)  # noqa: E731
        for t in (1, 300, 2000):
            snake._launch(meta(1, 2, t), None, meta(2))
            snake._launch(meta(1, 2, t), meta(1, 2, t), meta(2))
        cb = meta(8, 1024, 1024)
        for block_t in rvq_encode.ENCODE_TILES[dt][2]:
            monkeypatch.setattr(rvq_encode, "_encode_block_t", lambda *args, bt=block_t: bt)
            rvq_encode._encode(meta(2, 1024, 75), cb, meta(8, 1024, dtype=torch.float32), 8)
        codes = meta(2, 8, 75, dtype=torch.long)
        gather_sum._decode(codes, cb)
        for bias in (None, meta(256)):
            gather_sum._dequantize_project(codes, cb, meta(256, 1024), bias, None)  # fp32 projected table
            gather_sum._dequantize_project(codes, cb, meta(256, 1024), bias, meta(8, 1024, 256))
    assert seen
    missing = [(_compile.kernel_name(launch[0]), *launch[1:]) for launch in seen if not _covered(launch)]
    assert not missing, f"launches without a compile config: {missing}"


def test_configs_cover_every_conv_launch_of_the_default_model(monkeypatch):
    """Plan (not run) every conv launch of the published model's sites on meta tensors, as a GPU
    would: each math mode, half precision with MUFU sin, and inputs long enough (2^31 elements)
    to need 64-bit offsets. Every planned launch must have a compile config."""
    seen = _record_launches(monkeypatch, [conv._snake_conv1d_kernel, residual_unit._residual_unit_fused_kernel],
                            execute=False)
    monkeypatch.setattr(_math, "fast_sin", lambda x: x.dtype != torch.float32)
    wide = 0
    for dtype, precision in _launch.MATH_MODES:
        monkeypatch.setattr(_math, "conv_dot_precision", lambda x, p=precision: p)
        for site in _launch.default_model_sites():
            p = site.params
            for long_input in (False, True):
                meta = lambda *shape: torch.empty(*shape, device="meta", dtype=dtype)  # noqa: E731
                if site.op == "snake_conv1d":
                    c_in, c_out, k = p["in_channels"], p["out_channels"], p["kernel"]
                    frames = _launch.INT32_LIMIT // c_in + 1 if long_input else 4 * k
                    conv.snake_conv1d_launch(meta(1, c_in, frames), meta(c_in), meta(c_out, c_in, k), meta(c_out),
                                             p["stride"], p["padding"])
                elif site.op == "residual_unit":
                    c = p["channels"]
                    frames = _launch.INT32_LIMIT // c + 1 if long_input else 100
                    residual_unit.residual_unit_launch(meta(1, c, frames), meta(c), meta(c, c, 7), meta(c), 3, meta(c),
                                                       meta(c, c, 1), meta(c))
                wide += long_input
    assert seen and any(consts["INT64"] for _, _, consts, _, _ in seen) and wide
    missing = [(_compile.kernel_name(launch[0]), *launch[1:]) for launch in seen if not _covered(launch)]
    assert not missing, f"launches without a compile config: {missing}"


def test_int64_offsets_only_past_int32():
    """The 64-bit variant runs exactly when some tensor of the launch reaches 2^31 elements."""
    below = torch.empty(1, 64, _launch.INT32_LIMIT // 64 - 1, device="meta")
    at = torch.empty(1, 64, _launch.INT32_LIMIT // 64, device="meta")
    assert not _launch.needs_int64_offsets(below, None)
    assert _launch.needs_int64_offsets(below, at)
