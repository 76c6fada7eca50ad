"""snake and add_snake (xcodec_fast.ops) on every backend that implements them, against eager.

Native runs CPU tensors at the model's sizes; Triton runs under its interpreter on CPU (tiny
shapes, tests/conftest.py sets TRITON_INTERPRET=1) or natively on a GPU at larger sizes too.
"""

import pytest
import torch

import tolerances
from op_cases import (
    CUDA,
    DEVICES,
    TRITON_DTYPES,
    assert_snake_within_ulps,
    backend_params,
    make_input,
    run,
    snake_inputs,
)
from xcodec_fast import ops
from xcodec_fast.ops import eager

HALF = (torch.bfloat16, torch.float16)
NATIVE_CASES = [((b, c, t), torch.float32) for b in (1, 2) for c in (1, 3, 64, 96) for t in (1, 7, 321, 16001)]
NATIVE_CASES += [((2, c, t), dtype) for c in (3, 64) for t in (7, 321, 16001) for dtype in HALF]
TRITON_SHAPES = [(2, 3, 1), (1, 64, 7), (2, 3, 321), (1, 96, 300)]
if CUDA:
    TRITON_SHAPES += [(2, 1024, 50), (3, 64, 16001), (1, 32, 100003)]
TRITON_CASES = [(shape, dtype) for shape in TRITON_SHAPES for dtype in TRITON_DTYPES]
CASES = backend_params("native", NATIVE_CASES) + backend_params("triton", TRITON_CASES)


def inputs(backend, shape, dtype, seed):
    """(x, h, alpha) as each backend's cases have always been drawn."""
    if backend == "native":
        x, alpha = make_input(*shape, dtype, seed=seed)
        h, _ = make_input(*shape, dtype, seed=seed + 1)
        return x, h, alpha
    return snake_inputs(shape, dtype, seed)


def assert_matches_fp32_eager(out, x_used, alpha, backend, dtype):
    """Within the backend's bounds (tests/tolerances.py) of eager evaluated in fp32 on the same inputs."""
    expected = eager.snake(x_used.float(), alpha.float())
    assert out.dtype == dtype and out.shape == expected.shape and out.is_contiguous()
    close, ulps = tolerances.SNAKE.get((backend, dtype)), tolerances.SNAKE_ULPS.get((backend, dtype))
    assert close or ulps, f"tests/tolerances.py states no snake bound for {backend} {dtype}"
    if close:
        tolerances.assert_close(out.float(), expected, close)
    if ulps:
        assert_snake_within_ulps(out, expected, alpha, ulps)


@pytest.mark.parametrize("backend,shape,dtype", CASES)
def test_snake_matches_eager(backend, shape, dtype):
    x, _, alpha = inputs(backend, shape, dtype, seed=0)
    assert_matches_fp32_eager(run(backend, "snake", x, alpha), x, alpha, backend, dtype)


@pytest.mark.parametrize("backend,shape,dtype", CASES)
def test_add_snake_matches_eager(backend, shape, dtype):
    x, h, alpha = inputs(backend, shape, dtype, seed={"native": 0, "triton": 1}[backend])  # each file's seed
    y, s = run(backend, "add_snake", x, h, alpha)
    y_ref, _ = eager.add_snake(x, h, alpha)
    tolerances.assert_close(y, y_ref, tolerances.ADD_SNAKE_SUM[backend, dtype])
    assert_matches_fp32_eager(s, y_ref, alpha, backend, dtype)


@pytest.mark.parametrize("backend,shape,dtype", backend_params("native", [c for c in NATIVE_CASES if c[1] in HALF]))
def test_half_snake_is_near_eagers_step_by_step_result(backend, shape, dtype):
    # Rounded once from fp32, so within a few ulps of eager's rounding after every step.
    x, _, alpha = inputs(backend, shape, dtype, seed=0)
    tolerances.assert_close(run(backend, "snake", x, alpha).float(), eager.snake(x, alpha).float(),
                            tolerances.SNAKE_HALF_VS_EAGER_STEPS[backend, dtype])


@pytest.mark.parametrize("backend", backend_params("native"))
def test_fp32_is_bit_identical_to_eager(backend):
    # Same op order, no FMA contraction and torch.sin's own sin: native's docstring promises bit equality.
    x, h, alpha = inputs(backend, (2, 96, 16001), torch.float32, seed=0)
    assert torch.equal(run(backend, "snake", x, alpha), eager.snake(x, alpha))
    for got, want in zip(run(backend, "add_snake", x, h, alpha), eager.add_snake(x, h, alpha)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", backend_params("native"))
def test_non_contiguous_inputs_match_eager(backend):
    x, alpha = make_input(2, 64, 400)
    close = tolerances.SNAKE[backend, torch.float32]
    sliced = torch.randn(2, 64, 500)[..., 37:437]  # unit stride in time, row strides of 500
    strided = torch.randn(2, 400, 64).transpose(1, 2)  # time stride 64: copied to contiguous
    every_other = torch.randn(2, 64, 800)[..., ::2]
    for t in (sliced, strided, every_other, x.permute(1, 0, 2).contiguous().permute(1, 0, 2)):
        tolerances.assert_close(run(backend, "snake", t, alpha), eager.snake(t, alpha), close)
        y, s = run(backend, "add_snake", t, sliced, alpha)
        tolerances.assert_close(y, t + sliced, close)
        tolerances.assert_close(s, eager.snake(t + sliced, alpha), close)
    tolerances.assert_close(run(backend, "snake", x, alpha.reshape(1, -1, 1)), eager.snake(x, alpha), close)


@pytest.mark.parametrize("backend", backend_params("triton"))
def test_non_contiguous_input_gives_the_contiguous_result(backend):
    from xcodec_fast.ops.triton import snake as triton_snake

    device = DEVICES[backend]
    b, c, t = 2, 5, 33
    x = torch.randn(b, t, c).to(device).transpose(1, 2)  # (B, C, T) view, T not contiguous
    assert not x.is_contiguous()
    alpha = (torch.rand(1, c, 1) + 0.5).to(device)  # the model's parameter shape
    h = torch.randn(b, c, t).to(device)
    out = run(backend, "snake", x, alpha)
    y, s = run(backend, "add_snake", x, h, alpha)
    assert torch.equal(out, run(backend, "snake", x.contiguous(), alpha.reshape(-1)))
    assert torch.equal(y, x + h)
    assert torch.equal(s, triton_snake.snake((x + h).contiguous(), alpha))


@pytest.mark.parametrize("backend", backend_params("native") + backend_params("triton"))
def test_empty_frames(backend):
    x = torch.empty(2, 3, 0, device=DEVICES[backend])
    alpha = torch.ones(3, device=DEVICES[backend])
    assert run(backend, "snake", x, alpha).shape == (2, 3, 0)
    y, s = run(backend, "add_snake", x, x, alpha)
    assert y.shape == s.shape == (2, 3, 0)


@pytest.mark.parametrize("backend", backend_params("native") + backend_params("triton"))
def test_bad_inputs_are_clear_errors(backend):
    # ops checks before any backend's kernel runs: each backend's file listed some of these.
    x = torch.randn(1, 3, 8, device=DEVICES[backend])
    alpha = torch.ones(3, device=DEVICES[backend])
    with ops.use_backend(backend):
        with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
            ops.snake(x.to(torch.int32), alpha)
        with pytest.raises(TypeError, match="float32"):
            ops.snake(x.long(), alpha)
        with pytest.raises(TypeError, match="dtype"):
            ops.snake(x, alpha.half())
        with pytest.raises(TypeError, match="dtype"):
            ops.snake(x, alpha.bfloat16())
        with pytest.raises(ValueError, match="meta"):
            ops.snake(x, alpha.to("meta"))
        with pytest.raises(ValueError, match="4 values for 3 channels"):
            ops.snake(x, torch.ones(4, device=x.device))
        with pytest.raises(ValueError, match="3 dimensions"):
            ops.snake(x[0], alpha)
        with pytest.raises(ValueError, match="shape"):
            ops.add_snake(x, x[..., :4], alpha)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", backend_params("triton"))
def test_device_mix_is_an_error(backend):
    x = torch.randn(1, 3, 8, device="cuda")
    with ops.use_backend(backend), pytest.raises(ValueError, match="is on cpu"):
        ops.snake(x, torch.ones(3))
