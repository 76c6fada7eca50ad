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

from xcodec_fast.ops.triton import _compile, rvq, snake  # noqa: E402

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


def _record_launches(monkeypatch, kernels):
    """Wrap each kernel's run() to record (kernel, pointer dtypes, constexprs, num_warps)."""
    seen = []
    for kernel in kernels:
        run = kernel.run
        names = _compile._arg_names(kernel)

        def wrapper(*args, _run=run, _kernel=kernel, _names=names, **kwargs):
            ptrs = {n: "*" + _compile.TRITON_TYPES[a.dtype] for n, a in zip(_names, args) if isinstance(a, torch.Tensor)}
            consts = {k: v for k, v in kwargs.items() if k in _names}
            seen.append((_kernel, ptrs, consts, kwargs.get("num_warps", 4)))
            return _run(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", wrapper)
    return seen


def _covered(launch) -> bool:
    kernel, ptrs, consts, warps = launch
    for c in CONFIGS:
        if c.kernel is not kernel or c.num_warps != warps:
            continue
        if all(c.signature[n] == t for n, t in ptrs.items()) and all(c.constexprs.get(k) == v for k, v in consts.items()):
            return True
    return False


def test_configs_cover_what_the_launchers_run(monkeypatch):
    """The compile check is only as good as its configs: run the ops at several sizes and check
    that every launch (dtypes, constexprs, warps) is one of the registered configs."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    seen = _record_launches(monkeypatch, [snake._snake_kernel, rvq._rvq_encode_kernel, rvq._gather_sum_kernel])
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if dev == "cuda" else [])
    with ops.use_backend("triton"):
        for dt in dtypes:
            for t in (1, 300, 2000):
                x = torch.randn(1, 2, t, device=dev, dtype=dt)
                alpha = torch.ones(2, device=dev, dtype=dt)
                ops.snake(x, alpha)
                ops.add_snake(x, x, alpha)
            cb = torch.randn(2, 20, 16, device=dev, dtype=dt)
            for t in (1, 40):
                x = torch.randn(1, 16, t, device=dev, dtype=dt)
                codes = ops.rvq_encode(x, cb, cb.float().pow(2).sum(-1), 2)
                ops.rvq_decode(codes, cb)
                w = torch.randn(8, 16, device=dev, dtype=dt)
                ops.dequantize_project(codes, cb, w, torch.zeros(8, device=dev, dtype=dt))
                ops.dequantize_project(codes, cb, w, torch.zeros(8, device=dev, dtype=dt),
                                       torch.matmul(cb, w.t()))
                ops.dequantize_project(codes, cb, w, None)
    assert seen
    missing = [(_compile.kernel_name(k), p, c, w) for k, p, c, w in seen if not _covered((k, p, c, w))]
    assert not missing, f"launches without a compile config: {missing}"
