"""Convolutions on the decode grid: blocks of one shape on a grid from frame 0, so that a window of
the input that starts on the grid computes each of its frames exactly as the whole input does.

oneDNN (and cuDNN) choose a convolution's algorithm, so its summation order, by the input's width
and batch; a call on blocks of one shape, a fixed number per call, keeps one choice. Used by the
decoder (modeling/acoustic.py) for chunked and streamed decode.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# Blocks per call: a fixed batch of blocks (zero blocks fill the last call), since the algorithm
# follows the batch size too (and a call per block ran 2-4x slower than one whole call).
BLOCKS_PER_CALL = 4


def on_blocks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, count: int, size: int, step: int,
              keep: slice, frames: int) -> torch.Tensor:
    """fn on each window of ``size`` frames every ``step`` frames of x (B, C, T), BLOCKS_PER_CALL
    windows per call, the ``keep`` part of each result side by side, cut to ``frames``."""
    batch, channels = x.shape[:2]
    calls = -(-count // BLOCKS_PER_CALL)
    x = F.pad(x, (0, (calls * BLOCKS_PER_CALL - count) * step))
    windows = x.unfold(-1, size, step)  # (B, C, calls·G, size), a view
    pieces = []
    for call in range(calls):
        group = windows[:, :, call * BLOCKS_PER_CALL : (call + 1) * BLOCKS_PER_CALL]
        y = fn(group.permute(0, 2, 1, 3).reshape(batch * BLOCKS_PER_CALL, channels, size))[..., keep]
        pieces.append(y.reshape(batch, BLOCKS_PER_CALL, y.shape[1], y.shape[2]).permute(0, 2, 1, 3).flatten(2))
    return torch.cat(pieces, dim=-1)[..., :frames]


def blocked_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                   block: int) -> torch.Tensor:
    """``F.conv1d(x, weight, bias, padding=padding)`` with output frames computed ``block`` at a
    time (block k from input frames [k·block - padding, (k + 1)·block - padding + K - 1))."""
    kernel = weight.shape[-1]
    out_frames = x.shape[-1] + 2 * padding - kernel + 1
    count = -(-out_frames // block)
    padded = F.pad(x, (padding, count * block + kernel - 1 - padding - x.shape[-1]))
    return on_blocks(lambda v: F.conv1d(v, weight, bias), padded, count, block + kernel - 1, block, slice(None),
                     out_frames)


def blocked_snake_conv_transpose1d(conv, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor,
                                   bias: torch.Tensor | None, stride: int, padding: int, output_padding: int,
                                   block: int) -> torch.Tensor:
    """``conv`` (a snake_conv_transpose1d) with the output of input frames [k·block, (k + 1)·block)
    computed one block at a time, each from those frames and the ones either side that reach it
    (snake(0) = 0, so zero frames around the input are its zero padding)."""
    kernel = weight.shape[-1]
    out_frames = (x.shape[-1] - 1) * stride - 2 * padding + kernel + output_padding
    # Output frame n = i·s + j - p reads input frames i with 0 <= n + p - i·s < K; a block also
    # takes enough frames that its call's output reaches past the kept span (kernel < stride),
    # and none fewer than its own (padding >= kernel): extra frames only add to discarded outputs.
    before = max((kernel - 1 - padding) // stride, 0)
    after = max((stride - 1 + padding) // stride, 1 - (kernel - padding) // stride)
    span = block * stride
    count = -(-out_frames // span)
    padded = F.pad(x, (before, count * block + after - x.shape[-1]))
    first = before * stride + padding
    return on_blocks(lambda v: conv(v, alpha, weight, bias, stride, 0, 0), padded, count, block + before + after,
                     block, slice(first, first + span), out_frames)
