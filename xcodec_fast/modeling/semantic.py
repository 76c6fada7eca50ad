"""The semantic model of X-Codec: HuBERT or WavLM, inference only, returning the mean of all hidden states.

What X-Codec uses from the semantic model is ``stack(model(x, output_hidden_states=True).hidden_states).mean()``;
:class:`SemanticModel` computes exactly that (see :meth:`SemanticModel.forward`), nothing else.

Loading weights (for the XcodecModel loader)
--------------------------------------------
* Parameter and buffer names equal transformers' ``HubertModel`` / ``WavLMModel`` ``state_dict`` keys, so
  ``semantic_model.<key>`` of an X-Codec checkpoint loads with ``load_state_dict`` after two fix-ups:

  1. The positional conv is weight-normed in checkpoints and stored as ``encoder.pos_conv_embed.conv.weight_g`` /
     ``weight_v`` (old spelling) or ``encoder.pos_conv_embed.conv.parametrizations.weight.original0`` /
     ``original1`` (new spelling). This module keeps one plain tensor, ``encoder.pos_conv_embed.conv.weight``.
     :func:`fold_weight_norm` (also ``SemanticModel.fold_weight_norm``) rewrites either spelling into that key;
     it matches key suffixes, so it can run on the whole X-Codec checkpoint (``semantic_model.`` prefix and all).
  2. ``masked_spec_embed`` is a training-only (SpecAugment) parameter: this model has no such key; drop it.
     :data:`IGNORED_CHECKPOINT_KEYS` names it.

* For ``do_stable_layer_norm=True`` the encoder's final ``encoder.layer_norm`` is kept (checkpoints have it) but
  does not touch the output: transformers (5.x) records ``hidden_states`` as the input of the first layer plus
  every layer's output, and the final norm only produces ``last_hidden_state``, which X-Codec does not use.

Variable-length batches
-----------------------
``forward(x, lengths)`` treats item ``b`` as ``x[b, :lengths[b]]`` right-padded: its first
``frame_lengths(lengths)[b]`` output frames equal what it gives alone (to float rounding). For that, the first
conv layer's GroupNorm takes statistics over valid frames only, invalid frames are zeroed before the positional
conv (the only time-mixing op besides attention), and attention ignores padded keys. WavLM's relative position
bias depends only on frame offsets, so valid frames get the same bias at any padded length. Output frames past an
item's length are unspecified. Without padding the op order follows transformers, for identical numerics.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import SemanticConfig
from ..lengths import conv_output_length
from .. import ops
from .layers import Linear

POS_CONV_WEIGHT_KEY = "encoder.pos_conv_embed.conv.weight"
IGNORED_CHECKPOINT_KEYS = ("masked_spec_embed",)

# The two spellings torch has used for a weight-normed conv's (magnitude, direction) pair.
_WEIGHT_NORM_SPELLINGS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)
# transformers applies weight_norm(conv, dim=2): one magnitude per kernel tap.
_WEIGHT_NORM_DIM = 2

# name -> (activation, the same overwriting its input). The in-place one serves the time-major
# feature encoder's fresh conv outputs, whose out-of-place GELU allocated and first-touched 65 MB
# per 10 s (8x the GELU's own time).
_ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "gelu": (F.gelu, torch.ops.aten.gelu_),
    "relu": (F.relu, torch.relu_),
    "silu": (F.silu, lambda x: F.silu(x, inplace=True)),
    "swish": (F.silu, lambda x: F.silu(x, inplace=True)),
    "gelu_pytorch_tanh": (lambda x: F.gelu(x, approximate="tanh"),
                          lambda x: torch.ops.aten.gelu_(x, approximate="tanh")),
}


def _activation(name: str, what: str, in_place: bool = False) -> Callable[[Tensor], Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"semantic {what} {name!r} is not supported; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name][in_place]


def fold_weight_norm(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Return a copy of ``state_dict`` with every weight-normed conv's ``(g, v)`` pair, in either spelling,
    replaced by the plain ``weight`` this module uses (``weight = g * v / ||v||``, norm over all dims but 2).
    Other keys pass through unchanged, so this works on a full X-Codec checkpoint too."""
    out = dict(state_dict)
    for g_suffix, v_suffix in _WEIGHT_NORM_SPELLINGS:
        for g_key in [k for k in out if k.endswith("." + g_suffix) or k == g_suffix]:
            prefix = g_key[: -len(g_suffix)]
            v_key = prefix + v_suffix
            if v_key not in out:
                raise KeyError(f"{g_key} has no matching {v_key}: cannot fold the weight norm")
            weight_key = prefix + "weight"
            if weight_key in out:
                raise KeyError(f"{weight_key} and its weight-norm pair {g_key} are both present; which one holds?")
            # torch._weight_norm is what both torch weight-norm implementations compute: identical numbers.
            out[weight_key] = torch._weight_norm(out.pop(v_key), out.pop(g_key), _WEIGHT_NORM_DIM)
    return out


def _conv_output_lengths(lengths, kernels: Sequence[int], strides: Sequence[int]) -> Tensor:
    for kernel, stride in zip(kernels, strides):
        lengths = conv_output_length(lengths, kernel, stride)
    return lengths


# Frames per step of the masked GroupNorm: its temporaries stay cache-sized. Whole-row temporaries
# of a 20 s batch are hundreds of MB each, and each one's first touch page-faults: 1-2.5 s per
# elementwise op on a 2-core VM, where these steps take tens of ms.
_NORM_STEP_FRAMES = 8192


def _masked_group_norm(x: Tensor, valid: Tensor, norm: nn.GroupNorm) -> Tensor:
    """GroupNorm with one channel per group, whose statistics cover only the frames where ``valid`` (B, 1, T).
    Normalizes ``x`` in place (the caller's fresh conv output) and returns it."""
    count = valid.sum(-1, keepdim=True).to(x.dtype)
    steps = [slice(start, start + _NORM_STEP_FRAMES) for start in range(0, x.shape[-1], _NORM_STEP_FRAMES)]
    # where(), not a multiply by the mask: padding may hold inf/NaN, and NaN * 0 is NaN.
    total = x.new_zeros(*x.shape[:-1], 1)
    for step in steps:
        total += torch.where(valid[..., step], x[..., step], 0.0).sum(-1, keepdim=True)
    mean = total / count
    squares = x.new_zeros(*x.shape[:-1], 1)
    for step in steps:
        squares += torch.where(valid[..., step], x[..., step] - mean, 0.0).pow(2).sum(-1, keepdim=True)
    rstd = torch.rsqrt(squares / count + norm.eps)  # biased variance, like GroupNorm
    weight, bias = norm.weight[:, None], norm.bias[:, None]
    for step in steps:
        x[..., step].sub_(mean).mul_(rstd).mul_(weight).add_(bias)
    return x


# Frames per step of the time-major GroupNorm's passes (2 MB of 512 channels).
_TIME_MAJOR_STEP_FRAMES = 1024


def _time_major_group_norm(x: Tensor, frames: Tensor | None, statistics: tuple[Tensor, Tensor] | None,
                           norm: nn.GroupNorm) -> Tensor:
    """GroupNorm with one channel per group of time-major ``x`` (B, T, C), in place: statistics over
    each item's first ``frames[b]`` frames (None: all; padding, even NaN, stays out of them), or the
    given (mean, biased variance), each (B, C, 1). Two passes in fp32: the mean, then the squared
    deviations (torch's var_mean runs 30x slower over a strided axis)."""
    steps = [slice(start, start + _TIME_MAJOR_STEP_FRAMES) for start in range(0, x.shape[1], _TIME_MAJOR_STEP_FRAMES)]
    if statistics is not None:
        mean, variance = (s.transpose(1, 2).float() for s in statistics)
    else:
        counts = [x.shape[1]] * x.shape[0] if frames is None else frames.tolist()
        means, variances = [], []
        for item, count in zip(x, counts):
            valid = item[:count]
            mean = valid.sum(0, dtype=torch.float32) / count
            squares = torch.zeros_like(mean)
            for step in steps:
                deviation = valid[step].float() - mean
                squares += (deviation * deviation).sum(0)
            means.append(mean)
            variances.append(squares / count)
        mean, variance = torch.stack(means)[:, None], torch.stack(variances)[:, None]
    scale = torch.rsqrt(variance + norm.eps) * norm.weight.float()
    shift = (norm.bias.float() - mean * scale).to(x.dtype)
    scale = scale.to(x.dtype)
    for step in steps:
        x[:, step].mul_(scale).add_(shift)
    return x


class ConvLayer(nn.Module):
    """One feature-encoder conv: conv, optional norm ('group': GroupNorm per channel; 'layer': LayerNorm over
    channels), activation. Attribute names give transformers' keys ``conv.*`` and ``layer_norm.*``."""

    def __init__(self, config: SemanticConfig, index: int, norm: str | None):
        super().__init__()
        in_channels = config.conv_dim[index - 1] if index > 0 else 1
        out_channels = config.conv_dim[index]
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size=config.conv_kernel[index],
            stride=config.conv_stride[index],
            bias=config.conv_bias,
        )
        self.norm_kind = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        self.activation = _activation(config.feat_extract_activation, "feat_extract_activation")
        self.activation_in_place = _activation(config.feat_extract_activation, "feat_extract_activation", in_place=True)

    def forward(self, x: Tensor, frames: Tensor | None, statistics: tuple[Tensor, Tensor] | None = None,
                time_major: bool = False) -> Tensor:
        """``x`` (B, C_in, N) -> (B, C_out, T), or (B, N, C_in) -> (B, T, C_out) if ``time_major``.
        ``frames`` (B,): output frames made from real audio; None: all.
        ``statistics``: GroupNorm (mean, variance), each (B, C_out, 1), taken over a longer input than x."""
        if time_major:
            x = ops.conv1d_time_major(x, self.conv.weight, self.conv.bias, self.conv.stride[0])
            if self.norm_kind == "group":
                x = _time_major_group_norm(x, frames, statistics, self.layer_norm)
            elif self.norm_kind == "layer":
                x = self.layer_norm(x)
            return self.activation(x) if torch.is_grad_enabled() else self.activation_in_place(x)
        x = ops.conv1d(x, self.conv.weight, self.conv.bias, self.conv.stride[0], 0)
        if self.norm_kind == "group":
            if statistics is not None:
                mean, variance = statistics
                x = (x - mean) * torch.rsqrt(variance + self.layer_norm.eps)
                x = x * self.layer_norm.weight[:, None] + self.layer_norm.bias[:, None]
            elif frames is None:
                x = self.layer_norm(x)
            else:
                valid = torch.arange(x.shape[-1], device=x.device)[None, None, :] < frames[:, None, None]
                x = _masked_group_norm(x, valid, self.layer_norm)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)


class FeatureEncoder(nn.Module):
    def __init__(self, config: SemanticConfig):
        super().__init__()
        if config.feat_extract_norm == "group":
            norms = ["group"] + [None] * (len(config.conv_dim) - 1)
        elif config.feat_extract_norm == "layer":
            norms = ["layer"] * len(config.conv_dim)
        else:
            raise ValueError(f"semantic feat_extract_norm must be 'group' or 'layer', got {config.feat_extract_norm!r}")
        self.conv_layers = nn.ModuleList(ConvLayer(config, i, norm) for i, norm in enumerate(norms))

    def forward(
        self, input_values: Tensor, lengths: Tensor | None, statistics: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """(B, N) samples -> (B, C, T). ``lengths``: valid samples per item, or None when nothing is padded.
        Only the GroupNorm needs them: a conv frame computed from real samples never sees padding otherwise.
        ``statistics``: the first layer's GroupNorm statistics, from :meth:`group_norm_statistics`.
        Where the backend :func:`~xcodec_fast.ops.runs_time_major`, the layers run on (B, T, C) and
        the result is a transposed view of that."""
        time_major = ops.runs_time_major(input_values.device)
        x = input_values[:, :, None] if time_major else input_values[:, None]
        for index, layer in enumerate(self.conv_layers):
            if lengths is not None:
                lengths = _conv_output_lengths(lengths, layer.conv.kernel_size, layer.conv.stride)
            x = layer(x, lengths, statistics if index == 0 else None, time_major)
        return x.transpose(1, 2) if time_major else x

    def group_norm_statistics(self, input_values: Tensor, chunk_frames: int = 32000) -> tuple[Tensor, Tensor] | None:
        """The first layer's GroupNorm (mean, biased variance) over all of ``input_values`` (B, N),
        accumulated ``chunk_frames`` conv outputs at a time (default 10 s of HuBERT's first layer)
        in float64 sums so that memory stays bounded; None when that layer has no GroupNorm."""
        first = self.conv_layers[0]
        if first.norm_kind != "group":
            return None
        kernel, stride = first.conv.kernel_size[0], first.conv.stride[0]
        total = conv_output_length(input_values.shape[-1], kernel, stride)
        sums = squares = None
        for start in range(0, total, chunk_frames):
            end = min(total, start + chunk_frames)
            x = first.conv(input_values[:, None, start * stride : (end - 1) * stride + kernel])
            part_sum = x.sum(-1, keepdim=True, dtype=torch.float64)
            part_squares = x.square().sum(-1, keepdim=True, dtype=torch.float64)
            sums = part_sum if sums is None else sums + part_sum
            squares = part_squares if squares is None else squares + part_squares
        mean = sums / total
        variance = (squares / total - mean.pow(2)).clamp_min(0)
        dtype = input_values.dtype
        return mean.to(dtype), variance.to(dtype)


class FeatureProjection(nn.Module):
    def __init__(self, config: SemanticConfig):
        super().__init__()
        # WavLM always normalises the conv features; HuBERT only with feat_proj_layer_norm.
        self.has_layer_norm = config.model_type == "wavlm" or config.feat_proj_layer_norm
        if self.has_layer_norm:
            self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, features: Tensor) -> Tensor:
        if self.has_layer_norm:
            features = self.layer_norm(features)
        return self.projection(features)


class PositionalConvEmbedding(nn.Module):
    """Grouped conv over time with 'same' padding (one frame dropped for an even kernel), then activation."""

    def __init__(self, config: SemanticConfig):
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        if config.hidden_size % config.num_conv_pos_embedding_groups != 0:
            raise ValueError(
                f"semantic hidden_size {config.hidden_size} is not divisible by num_conv_pos_embedding_groups "
                f"{config.num_conv_pos_embedding_groups}"
            )
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=kernel,
            padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        self.drop_last = kernel % 2 == 0
        self.activation = _activation(config.feat_extract_activation, "feat_extract_activation")

    def forward(self, hidden_states: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C). Where the backend runs time-major, the backend's conv on (B, T, C) as
        it lies; elsewhere transformers' own conv call on the transposed view."""
        conv = self.conv
        if ops.runs_time_major(hidden_states.device):
            x = ops.conv1d_time_major(hidden_states, conv.weight, conv.bias, conv.stride[0], conv.padding[0],
                                      conv.groups)
            return self.activation(x[:, :-1] if self.drop_last else x)
        x = conv(hidden_states.transpose(1, 2))
        return self.activation(x[:, :, :-1] if self.drop_last else x).transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, config: SemanticConfig):
        super().__init__()
        self.intermediate_dense = Linear(config.hidden_size, config.intermediate_size)
        self.output_dense = Linear(config.intermediate_size, config.hidden_size)
        self.activation = _activation(config.hidden_act, "hidden_act")

    def forward(self, x: Tensor) -> Tensor:
        return self.output_dense(self.activation(self.intermediate_dense(x)))


class HubertAttention(nn.Module):
    """Multi-head self-attention through torch's SDPA, as transformers' default ('sdpa') HuBERT attention."""

    def __init__(self, config: SemanticConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.k_proj = Linear(config.hidden_size, config.hidden_size)
        self.v_proj = Linear(config.hidden_size, config.hidden_size)
        self.q_proj = Linear(config.hidden_size, config.hidden_size)
        self.out_proj = Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, key_valid: Tensor | None) -> Tensor:
        """``x`` (B, T, E); ``key_valid`` (B, T) bool, False for padded frames (None: no padding)."""
        batch, frames, _ = x.shape
        heads_shape = (batch, frames, self.num_heads, self.head_dim)
        q = self.q_proj(x).view(heads_shape).transpose(1, 2)
        k = self.k_proj(x).view(heads_shape).transpose(1, 2)
        v = self.v_proj(x).view(heads_shape).transpose(1, 2)
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim**-0.5)
        out = out.transpose(1, 2).reshape(batch, frames, -1)
        return self.out_proj(out)


class WavLMAttention(nn.Module):
    """Self-attention with WavLM's gated relative position bias. The ungated bias is built by the first layer
    (the only one with ``rel_attn_embed``) and passed on to the others. Ops follow the order of
    ``F.multi_head_attention_forward``, which transformers calls, so the numbers match it."""

    def __init__(self, config: SemanticConfig, has_relative_position_bias: bool):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_bucket_distance
        self.k_proj = Linear(config.hidden_size, config.hidden_size)
        self.v_proj = Linear(config.hidden_size, config.hidden_size)
        self.q_proj = Linear(config.hidden_size, config.hidden_size)
        self.out_proj = Linear(config.hidden_size, config.hidden_size)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        self.gru_rel_pos_linear = nn.Linear(self.head_dim, 8)
        if has_relative_position_bias:
            self.rel_attn_embed = nn.Embedding(self.num_buckets, self.num_heads)

    def _relative_position_buckets(self, relative: Tensor) -> Tensor:
        """T5-style buckets: exact for small offsets, log-spaced up to max_distance; sign gets its own half."""
        half = self.num_buckets // 2
        buckets = (relative > 0).to(torch.long) * half
        distance = relative.abs()
        max_exact = half // 2
        # Same float op order as transformers: a bucket boundary must not move by a rounding difference.
        log_ratio = torch.log(distance.float() / max_exact) / math.log(self.max_distance / max_exact)
        large = (max_exact + log_ratio * (half - max_exact)).to(torch.long)
        large = torch.minimum(large, torch.full_like(large, half - 1))
        return buckets + torch.where(distance < max_exact, distance, large)

    def position_bias(self, frames: int) -> Tensor:
        """(heads, T, T) bias for query i and key j, a function of j - i only."""
        positions = torch.arange(frames, dtype=torch.long, device=self.rel_attn_embed.weight.device)
        relative = positions[None, :] - positions[:, None]
        return self.rel_attn_embed(self._relative_position_buckets(relative)).permute(2, 0, 1)

    def forward(self, x: Tensor, key_valid: Tensor | None, position_bias: Tensor | None) -> tuple[Tensor, Tensor]:
        """``x`` (B, T, E) -> (output (B, T, E), ungated position bias (B*heads, T, T) for the next layer)."""
        batch, frames, _ = x.shape
        if position_bias is None:
            position_bias = self.position_bias(frames).unsqueeze(0).repeat(batch, 1, 1, 1)
            position_bias = position_bias.view(batch * self.num_heads, frames, frames)

        # Each query frame scales the bias by a gate computed from its own hidden state, per head.
        per_head = x.view(batch, frames, self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        gate_logits = self.gru_rel_pos_linear(per_head).view(batch, self.num_heads, frames, 2, 4).sum(-1)
        gate_a, gate_b = torch.sigmoid(gate_logits).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
        bias = (gate.view(batch * self.num_heads, -1, 1) * position_bias).view(-1, frames, frames)
        if key_valid is not None:
            key_bias = torch.zeros(key_valid.shape, dtype=x.dtype, device=x.device).masked_fill(~key_valid, -math.inf)
            bias = bias + key_bias[:, None, None, :].expand(-1, self.num_heads, -1, -1).reshape(-1, 1, frames)

        def split_heads(t: Tensor) -> Tensor:  # (B, T, E) -> (B * heads, T, head_dim)
            t = t.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)
            return t.reshape(-1, frames, self.head_dim)

        q = split_heads(self.q_proj(x)) * math.sqrt(1.0 / float(self.head_dim))
        k = split_heads(self.k_proj(x))
        v = split_heads(self.v_proj(x))
        weights = torch.softmax(torch.baddbmm(bias, q, k.transpose(-2, -1)), dim=-1)
        out = torch.bmm(weights, v).view(batch, self.num_heads, frames, self.head_dim).transpose(1, 2)
        return self.out_proj(out.reshape(batch, frames, -1)), position_bias


class EncoderLayer(nn.Module):
    """Transformer block: post-LN (``stable=False``) or pre-LN (``stable=True``)."""

    def __init__(self, config: SemanticConfig, index: int):
        super().__init__()
        self.is_wavlm = config.model_type == "wavlm"
        self.stable = config.do_stable_layer_norm
        if self.is_wavlm:
            self.attention = WavLMAttention(config, has_relative_position_bias=index == 0)
        else:
            self.attention = HubertAttention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def _attend(self, x: Tensor, key_valid: Tensor | None, position_bias: Tensor | None):
        if self.is_wavlm:
            return self.attention(x, key_valid, position_bias)
        return self.attention(x, key_valid), None

    def forward(self, x: Tensor, key_valid: Tensor | None, position_bias: Tensor | None):
        if self.stable:
            attended, position_bias = self._attend(self.layer_norm(x), key_valid, position_bias)
            x = x + attended
            return x + self.feed_forward(self.final_layer_norm(x)), position_bias
        attended, position_bias = self._attend(x, key_valid, position_bias)
        x = self.layer_norm(x + attended)
        return self.final_layer_norm(x + self.feed_forward(x)), position_bias


class Encoder(nn.Module):
    def __init__(self, config: SemanticConfig):
        super().__init__()
        self.stable = config.do_stable_layer_norm
        self.pos_conv_embed = PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))

    def forward(self, hidden_states: Tensor, frame_valid: Tensor | None) -> list[Tensor]:
        """All hidden states transformers records: the first layer's input, then each layer's output."""
        if frame_valid is not None:
            # The positional conv mixes neighbouring frames: padding must look like the conv's zero padding.
            hidden_states = hidden_states.masked_fill(~frame_valid[..., None], 0.0)
        hidden_states = hidden_states + self.pos_conv_embed(hidden_states)
        if not self.stable:
            hidden_states = self.layer_norm(hidden_states)
        # (With stable LN, self.layer_norm would only make last_hidden_state, which is not among these.)
        recorded = [hidden_states]
        position_bias = None
        for layer in self.layers:
            hidden_states, position_bias = layer(hidden_states, frame_valid, position_bias)
            recorded.append(hidden_states)
        return recorded


class SemanticModel(nn.Module):
    """HuBERT or WavLM (``config.model_type``), inference only. ``forward`` returns the mean over all hidden states
    (the first encoder layer's input and every layer's output), shape (B, T, hidden_size)."""

    fold_weight_norm = staticmethod(fold_weight_norm)

    def __init__(self, config: SemanticConfig):
        super().__init__()
        if config.model_type not in ("hubert", "wavlm"):
            raise ValueError(f"semantic model_type must be 'hubert' or 'wavlm', got {config.model_type!r}")
        if config.num_hidden_layers < 1:
            raise ValueError(f"semantic num_hidden_layers must be at least 1, got {config.num_hidden_layers}")
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"semantic hidden_size {config.hidden_size} is not divisible by num_attention_heads "
                f"{config.num_attention_heads}"
            )
        if config.extra.get("adapter_attn_dim") is not None or config.extra.get("add_adapter"):
            raise ValueError("semantic models with adapter layers (adapter_attn_dim / add_adapter) are not supported")
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.feature_projection = FeatureProjection(config)
        self.encoder = Encoder(config)

    @property
    def min_input_length(self) -> int:
        """Fewest samples that give one frame: the receptive field of the conv feature encoder."""
        field = 1
        for kernel, stride in zip(reversed(self.config.conv_kernel), reversed(self.config.conv_stride)):
            field = (field - 1) * stride + kernel
        return field

    def frame_count(self, num_samples: int) -> int:
        """Frames the conv feature encoder makes from ``num_samples`` samples: integer arithmetic only,
        so it also works on a symbolic length while torch.export traces."""
        if num_samples < self.min_input_length:
            raise ValueError(f"semantic model input of {num_samples} samples is shorter than the minimum "
                             f"{self.min_input_length} (the conv feature encoder's receptive field)")
        return _conv_output_lengths(num_samples, self.config.conv_kernel, self.config.conv_stride)

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Frames the conv feature encoder makes from ``lengths`` samples (LongTensor of any shape)."""
        lengths = torch.as_tensor(lengths)
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
            raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
        too_short = lengths < self.min_input_length
        if too_short.any():
            raise ValueError(
                f"semantic model input of {lengths[too_short].min().item()} samples is shorter than the minimum "
                f"{self.min_input_length} (the conv feature encoder's receptive field)"
            )
        return _conv_output_lengths(lengths.long(), self.config.conv_kernel, self.config.conv_stride)

    def forward(
        self,
        input_values: Tensor,
        lengths: Tensor | None = None,
        norm_statistics: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """``input_values`` (B, N) audio; ``lengths`` (B,) valid samples per right-padded item, or None (all N).
        Returns (B, T, H) with T = frame_lengths(N); item b's first frame_lengths(lengths)[b] frames are valid.
        ``norm_statistics``: the feature encoder's GroupNorm statistics of a longer recording this input is a
        window of (:meth:`FeatureEncoder.group_norm_statistics`); None: this input's own."""
        if not isinstance(input_values, Tensor) or input_values.dim() != 2:
            shape = tuple(input_values.shape) if isinstance(input_values, Tensor) else type(input_values).__name__
            raise ValueError(f"semantic model input must have shape (batch, samples), got {shape}")
        if not input_values.is_floating_point():
            raise TypeError(f"semantic model input must be floating point, got dtype {input_values.dtype}")
        batch, num_samples = input_values.shape
        total_frames = self.frame_count(num_samples)

        frame_valid = None
        sample_lengths = None
        if lengths is not None:
            # Checked and planned on the host (free for host lengths, as the codec passes them);
            # only the masks go to the device, without a stream sync.
            lengths = torch.as_tensor(lengths).cpu()
            if lengths.shape != (batch,):
                raise ValueError(f"lengths must have shape ({batch},) for this batch, got {tuple(lengths.shape)}")
            if (lengths > num_samples).any():
                raise ValueError(f"lengths {lengths.tolist()} exceed the input's {num_samples} samples")
            frames = self.frame_lengths(lengths)
            device = input_values.device
            # The first layer's GroupNorm takes statistics over every frame of that layer, so an item
            # with fewer frames there needs its mask even where it has as many final frames.
            first = self.feature_extractor.conv_layers[0].conv
            first_frames = conv_output_length(lengths, first.kernel_size[0], first.stride[0])
            if (first_frames < conv_output_length(num_samples, first.kernel_size[0], first.stride[0])).any():
                sample_lengths = lengths.long().to(device, non_blocking=True)
            # Attention and the positional conv only need a mask where some item has fewer frames.
            if (frames < total_frames).any():
                frame_valid = torch.arange(total_frames, device=device)[None, :] < frames.to(device, non_blocking=True)[:, None]

        if norm_statistics is not None and lengths is not None:
            raise ValueError("norm_statistics and lengths cannot be combined (a window of one recording has no padding)")
        return self._hidden_mean(input_values, sample_lengths, frame_valid, norm_statistics)

    def forward_fixed_shape(self, input_values: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``forward`` for a right-padded batch whose ``lengths`` (B,) live on the input's device:
        always masked, every shape set by ``input_values`` alone and no value read on the host, so
        one CUDA graph serves every set of lengths. Returns (hidden mean, valid frames per item).
        Unchecked: each length must lie in [min_input_length, N] (the caller checks its host copy)."""
        total_frames = self.frame_count(input_values.shape[-1])
        frames = _conv_output_lengths(lengths, self.config.conv_kernel, self.config.conv_stride)
        frame_valid = torch.arange(total_frames, device=input_values.device)[None, :] < frames[:, None]
        return self._hidden_mean(input_values, lengths, frame_valid, None), frames

    def _hidden_mean(self, input_values: Tensor, sample_lengths: Tensor | None, frame_valid: Tensor | None,
                     norm_statistics: tuple[Tensor, Tensor] | None) -> Tensor:
        features = self.feature_extractor(input_values, sample_lengths, norm_statistics).transpose(1, 2)
        hidden_states = self.feature_projection(features)
        recorded = self.encoder(hidden_states, frame_valid)
        return torch.stack(recorded, dim=1).mean(dim=1)
