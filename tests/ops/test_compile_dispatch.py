"""torch.compile(fullgraph=True) traces through the dispatch point on every CPU backend."""

import pytest
import torch

import tolerances
import xcodec_fast.ops as ops


@pytest.mark.parametrize("backend", ["eager", "native", "auto"])
def test_fullgraph_compile_through_ops(backend):
    ok, reason = ops.availability(backend, "cpu")
    if not ok:
        pytest.skip(reason)
    ops.prepare("cpu")
    x = torch.randn(2, 3, 17)
    alpha = torch.rand(3) + 0.5
    weight = torch.randn(3, 3, 7) * 0.3
    weight2 = torch.randn(3, 3, 1) * 0.3
    bias = torch.randn(3) * 0.1

    def block(x):
        y = ops.residual_unit(x, alpha, weight, bias, 3, alpha, weight2, bias)
        return ops.snake(y, alpha)

    expected = ops.eager.snake(ops.eager.residual_unit(x, alpha, weight, bias, 3, alpha, weight2, bias), alpha)
    with ops.use_backend(backend):
        compiled = torch.compile(block, fullgraph=True, backend="eager")
        tolerances.assert_close(compiled(x), expected, tolerances.COMPILED_VS_EAGER)


def test_backend_change_is_seen_by_compiled_code():
    ops.prepare("cpu")
    x = torch.randn(1, 2, 5)
    alpha = torch.rand(2) + 0.5
    seen = []

    def spy(x, alpha):
        seen.append("spy")
        return ops.eager.snake(x, alpha)

    impls = ops.backend._registry["snake"]
    original = impls.get("native")
    compiled = torch.compile(lambda x: ops.snake(x, alpha), fullgraph=True, backend="eager")
    try:
        impls["native"] = spy
        if not ops.availability("native", "cpu")[0]:
            pytest.skip("native backend unavailable")
        with ops.use_backend("eager"):
            compiled(x)
        assert seen == []
        with ops.use_backend("native"):
            compiled(x)
        assert seen == ["spy"]  # the guard on the backend setting forced a retrace
    finally:
        if original is not None:
            impls["native"] = original
