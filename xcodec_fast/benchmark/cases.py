"""The kernel cases: every op at the (channels, frames) it really sees inside X-Codec.

Shapes are derived from the config (channels, strides, kernel sizes of the DAC encoder and
decoder, codebook geometry) and a clip length, never hard-coded. Bytes and FLOPs are counted
analytically: bytes = compulsory traffic (each input read once, each output written once);
FLOPs = the reference algorithm's arithmetic, with sin counted as one operation.
"""

from __future__ import annotations

import math

import torch

from .. import ops
from ..lengths import conv_output_length, conv_transpose_output_length
from ..sites import RESIDUAL_DILATIONS, RESIDUAL_KERNEL, Site, model_sites  # noqa: F401  (re-exported)

# Every op of the dispatch point, each with a site generator, a cost model and a call below.
OPS = ops.OPS
SNAKE_FLOPS = 5  # alpha*x, sin, square, times 1/(alpha+eps), plus x


# ---- analytic cost -----------------------------------------------------------------------------


def cost(site: Site, batch: int, dtype: torch.dtype) -> tuple[int, int]:
    """(bytes, FLOPs) of one call at ``batch`` in ``dtype``."""
    es = torch.tensor([], dtype=dtype).element_size()
    code_bytes = 8  # int64 codes
    p = site.params
    op, b = site.op, batch
    if op in ("snake", "add_snake"):
        n = b * p["channels"] * p["frames"]
        tensors = 2 if op == "snake" else 4  # snake: x in, y out; add_snake: x, h in; sum, snake out
        return (tensors * n + p["channels"]) * es, (SNAKE_FLOPS + (op == "add_snake")) * n
    if op == "residual_unit":
        c, t, k = p["channels"], p["frames"], RESIDUAL_KERNEL
        n = b * c * t
        weights = c * c * k + c * c + 4 * c
        flops = 2 * b * t * c * c * (k + 1) + 2 * SNAKE_FLOPS * n + 3 * n  # two convs, two snakes, biases, residual
        return (2 * n + weights) * es, flops
    if op in ("snake_conv1d", "snake_conv_transpose1d"):
        cin, cout, t, k = p["in_channels"], p["out_channels"], p["frames"], p["kernel"]
        if op == "snake_conv1d":
            t_out = conv_output_length(t, k, p["stride"], p["padding"])
            macs = b * t_out * cout * cin * k
        else:
            t_out = conv_transpose_output_length(t, k, p["stride"], p["padding"], p["output_padding"])
            macs = b * t * cin * cout * k  # each input frame scatters into k output frames
        n_in, n_out = b * cin * t, b * cout * t_out
        return (n_in + n_out + cin * cout * k + cout + cin) * es, 2 * macs + SNAKE_FLOPS * n_in + n_out
    if op in ("conv1d", "conv1d_time_major"):
        cin, cout, t, k = p["in_channels"], p["out_channels"], p["frames"], p["kernel"]
        t_out = conv_output_length(t, k, p["stride"], p["padding"])
        n_in, n_out = b * cin * t, b * cout * t_out
        return (n_in + n_out + cin * cout * k + cout) * es, 2 * b * t_out * cout * cin * k + n_out
    if op == "linear":
        rows, fin, fout = b * p["frames"], p["in_features"], p["out_features"]
        return (rows * fin + fin * fout + fout + rows * fout) * es, 2 * rows * fin * fout + rows * fout
    q, kk, d, t = p["num_quantizers"], p["codebook_size"], p["dim"], p["frames"]
    rows = b * t
    touched = min(kk, rows)  # codewords a gather can touch per codebook
    if op == "rvq_encode":
        # distances (matmul + norms + argmax) and the residual update, per quantizer
        flops = q * (2 * rows * kk * d + 3 * rows * kk + 3 * rows * d)
        return (rows * d + q * kk * d + q * kk) * es + rows * q * code_bytes, flops
    if op == "rvq_decode":
        return rows * q * code_bytes + (q * touched * d + rows * d) * es, q * rows * d
    if op == "dequantize_project":
        out = p["out_dim"]
        flops = q * rows * d + 2 * rows * d * out + rows * out
        return rows * q * code_bytes + (q * touched * d + out * d + out + rows * out) * es, flops
    raise ValueError(f"no cost model for op {op!r}")


# ---- inputs and calls --------------------------------------------------------------------------


def _alpha(channels: int, gen: torch.Generator) -> torch.Tensor:
    return 0.5 + torch.rand(channels, generator=gen)  # positive, like trained Snake alphas


def _weight(*shape: int, fan_in: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) / math.sqrt(fan_in)


def make_params(site: Site, gen: torch.Generator) -> dict:
    """The op's weights (shared by all rotated inputs, as in the model). fp32 on CPU."""
    p = site.params
    if site.op in ("snake", "add_snake"):
        return {"alpha": _alpha(p["channels"], gen)}
    if site.op == "residual_unit":
        c = p["channels"]
        return {
            "alpha1": _alpha(c, gen),
            "weight1": _weight(c, c, RESIDUAL_KERNEL, fan_in=c * RESIDUAL_KERNEL, gen=gen),
            "bias1": 0.01 * torch.randn(c, generator=gen),
            "alpha2": _alpha(c, gen),
            "weight2": _weight(c, c, 1, fan_in=c, gen=gen),
            "bias2": 0.01 * torch.randn(c, generator=gen),
        }
    if site.op == "snake_conv1d":
        cin, cout, k = p["in_channels"], p["out_channels"], p["kernel"]
        return {
            "alpha": _alpha(cin, gen),
            "weight": _weight(cout, cin, k, fan_in=cin * k, gen=gen),
            "bias": 0.01 * torch.randn(cout, generator=gen),
        }
    if site.op in ("conv1d", "conv1d_time_major"):
        cin, cout, k = p["in_channels"], p["out_channels"], p["kernel"]
        return {"weight": _weight(cout, cin, k, fan_in=cin * k, gen=gen), "bias": 0.01 * torch.randn(cout, generator=gen)}
    if site.op == "snake_conv_transpose1d":
        cin, cout, k = p["in_channels"], p["out_channels"], p["kernel"]
        return {
            "alpha": _alpha(cin, gen),
            "weight": _weight(cin, cout, k, fan_in=cin * k // p["stride"], gen=gen),
            "bias": 0.01 * torch.randn(cout, generator=gen),
        }
    if site.op == "linear":
        fin, fout = p["in_features"], p["out_features"]
        return {"weight": _weight(fout, fin, fan_in=fin, gen=gen), "bias": 0.01 * torch.randn(fout, generator=gen)}
    q, k, d = p["num_quantizers"], p["codebook_size"], p["dim"]
    # Codebooks shrink stage by stage, as the residual they quantize does.
    codebooks = torch.randn(q, k, d, generator=gen) * (0.5 ** torch.arange(q)).view(q, 1, 1)
    params = {"codebooks": codebooks}
    if site.op == "dequantize_project":
        params["proj_weight"] = _weight(p["out_dim"], d, fan_in=d, gen=gen)
        params["proj_bias"] = 0.01 * torch.randn(p["out_dim"], generator=gen)
    return params


def make_input(site: Site, batch: int, gen: torch.Generator) -> dict:
    """One set of activations for a call (rotated between calls), fp32 on ``gen``'s device: batch-16
    inputs reach gigabytes, which the device generates far faster than the host."""
    p, device = site.params, gen.device
    if site.op in ("snake", "residual_unit"):
        return {"x": torch.randn(batch, p["channels"], p["frames"], generator=gen, device=device)}
    if site.op == "add_snake":
        shape = (batch, p["channels"], p["frames"])
        return {
            "x": torch.randn(*shape, generator=gen, device=device),
            "h": torch.randn(*shape, generator=gen, device=device),
        }
    if site.op in ("snake_conv1d", "snake_conv_transpose1d", "conv1d"):
        return {"x": torch.randn(batch, p["in_channels"], p["frames"], generator=gen, device=device)}
    if site.op == "conv1d_time_major":
        return {"x": torch.randn(batch, p["frames"], p["in_channels"], generator=gen, device=device)}
    if site.op == "rvq_encode":
        return {"x": torch.randn(batch, p["dim"], p["frames"], generator=gen, device=device)}
    if site.op == "linear":  # (batch, frames, features), as the semantic model's layers see it
        return {"x": torch.randn(batch, p["frames"], p["in_features"], generator=gen, device=device)}
    shape = (batch, p["num_quantizers"], p["frames"])
    return {"codes": torch.randint(0, p["codebook_size"], shape, generator=gen, device=device)}


def to_device(tensors: dict, device: torch.device, dtype: torch.dtype) -> dict:
    return {
        name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype).contiguous()
        for name, t in tensors.items()
    }


def prepare(site: Site, params: dict) -> dict:
    """Derived constants the model computes once at load time and passes to the op."""
    if site.op == "rvq_encode":
        return {**params, "codebook_sq_norms": params["codebooks"].float().pow(2).sum(-1).to(params["codebooks"].dtype)}
    if site.op == "dequantize_project":
        cb, w = params["codebooks"], params["proj_weight"]
        return {**params, "projected_codebooks": (cb.float() @ w.float().t()).to(cb.dtype)}
    return params


def call(site: Site, params: dict, inputs: dict):
    """Run the op through the dispatch point, exactly as the model does."""
    p, a, x = site.params, params, inputs
    if site.op == "snake":
        return ops.snake(x["x"], a["alpha"])
    if site.op == "add_snake":
        return ops.add_snake(x["x"], x["h"], a["alpha"])
    if site.op == "residual_unit":
        return ops.residual_unit(
            x["x"], a["alpha1"], a["weight1"], a["bias1"], p["dilation"], a["alpha2"], a["weight2"], a["bias2"]
        )
    if site.op == "snake_conv1d":
        return ops.snake_conv1d(x["x"], a["alpha"], a["weight"], a["bias"], p["stride"], p["padding"])
    if site.op == "conv1d":
        return ops.conv1d(x["x"], a["weight"], a["bias"], p["stride"], p["padding"])
    if site.op == "conv1d_time_major":
        return ops.conv1d_time_major(x["x"], a["weight"], a["bias"], p["stride"])
    if site.op == "snake_conv_transpose1d":
        return ops.snake_conv_transpose1d(
            x["x"], a["alpha"], a["weight"], a["bias"], p["stride"], p["padding"], p["output_padding"]
        )
    if site.op == "rvq_encode":
        return ops.rvq_encode(x["x"], a["codebooks"], a["codebook_sq_norms"], p["num_quantizers"])
    if site.op == "rvq_decode":
        return ops.rvq_decode(x["codes"], a["codebooks"])
    if site.op == "dequantize_project":
        return ops.dequantize_project(
            x["codes"], a["codebooks"], a["proj_weight"], a["proj_bias"], a["projected_codebooks"]
        )
    if site.op == "linear":
        return ops.linear(x["x"], a["weight"], a["bias"])
    raise ValueError(f"unknown op {site.op!r}")


def agreement(site: Site, result, reference) -> dict:
    """How close a backend's output is to eager's on the same inputs."""
    if site.op == "rvq_encode":
        return {"code_match": float((result == reference).float().mean())}
    outs = result if isinstance(result, tuple) else (result,)
    refs = reference if isinstance(reference, tuple) else (reference,)
    worst = 0.0
    for out, ref in zip(outs, refs):
        scale = float(ref.float().abs().max()) or 1.0
        worst = max(worst, float((out.float() - ref.float()).abs().max()) / scale)
    return {"max_rel_err": worst}
