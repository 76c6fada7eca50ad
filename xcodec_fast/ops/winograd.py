"""Winograd minimal filtering F(m, r) for the residual units' dilated k=7 convolutions.

A dilated conv with dilation d is d interleaved undilated convs (one per phase t mod d), so each
phase runs Winograd as usual: m outputs of an r-tap filter from α = m + r - 1 inputs take α
channel GEMMs instead of m·r, for

    y = Aᵀ [(G g) ⊙ (Bᵀ x)]        (per tile: x the α inputs, g the r taps, y the m outputs)

F(2,7): 8 GEMMs per 2 outputs instead of 14 (1.75x fewer multiply-adds), F(4,7): 10 per 4
(2.8x). Fewer multiplies cost accuracy: the transforms amplify rounding, more so the larger the
tile. The matrices come from Toom-Cook interpolation at the points below (plus ∞), computed
exactly in rationals; the filter transform G·W is done once per weight in float64 and rounded to
fp32 once. ``python -m xcodec_fast.benchmark.winograd`` measures each tile's error on the real site shapes; the
tests hold the kernel to the bound that measurement documents.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch

# Interpolation points (∞ is implied): small integers and their reciprocals keep the transforms'
# entries near 1, which is what bounds the rounding they add.
POINTS: dict[int, tuple[Fraction, ...]] = {
    2: tuple(map(Fraction, ("0", "1", "-1", "2", "-2", "1/2", "-1/2"))),
    3: tuple(map(Fraction, ("0", "1", "-1", "2", "-2", "1/2", "-1/2", "3"))),
    4: tuple(map(Fraction, ("0", "1", "-1", "2", "-2", "1/2", "-1/2", "3", "-3"))),
}
TILE_SIZES = tuple(POINTS)
TAPS = 7  # the residual units' kernel size; the transforms are built for any r
# The tile sizes the native dispatch may pick: those that keep a decode well within the 1e-5
# bound against the reference (python -m xcodec_fast.benchmark.winograd; full size, vs float64:
# direct 8.7e-7, F(2,7) 1.4e-6, F(3,7) 5.3e-6, F(4,7) 8.5e-6). F(3,7) and F(4,7) are faster (up to
# 2x the direct GEMM at C=512 against F(2,7)'s 1.45x) but not accurate enough. (Chunked decode no
# longer limits this: its windows start on the tile grid, see tile_period.)
DISPATCH_TILE_SIZES = (2,)


def tile_period(dilation: int) -> int:
    """Frames after which the dispatched Winograd residual units' rounding repeats: tiles of
    m·dilation frames start on multiples of m·dilation from an input's first frame, and an output's
    rounding follows its place in its tile. Windows of a decode that start on multiples of this (in
    that layer's frames) compute every frame as the whole decode does."""
    return math.lcm(*(m * dilation for m in DISPATCH_TILE_SIZES))


def _solve_exact(rows: list[list[Fraction]], rhs: list[list[Fraction]]) -> list[list[Fraction]]:
    """X with rows·X = rhs (an overdetermined, consistent system) by exact Gauss-Jordan elimination."""
    n_unknown = len(rows[0])
    aug = [list(r) + list(b) for r, b in zip(rows, rhs)]
    pivots = []
    row = 0
    for col in range(n_unknown):
        pivot = next((i for i in range(row, len(aug)) if aug[i][col] != 0), None)
        if pivot is None:
            raise ValueError("Winograd points give a singular system: choose distinct points")
        aug[row], aug[pivot] = aug[pivot], aug[row]
        inv = 1 / aug[row][col]
        aug[row] = [v * inv for v in aug[row]]
        for i in range(len(aug)):
            if i != row and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [a - f * b for a, b in zip(aug[i], aug[row])]
        pivots.append(row)
        row += 1
    if any(v != 0 for r in aug[row:] for v in r[n_unknown:]):
        raise ValueError("Winograd system is inconsistent: the transforms do not compute the correlation")
    return [aug[i][n_unknown:] for i in pivots]


@lru_cache(maxsize=None)
def transforms(m: int, r: int = TAPS) -> tuple[tuple, tuple, tuple]:
    """Exact (Aᵀ: m×α, G: α×r, Bᵀ: α×α) as nested tuples of Fractions, α = m + r - 1."""
    if m not in POINTS or len(POINTS[m]) < m + r - 2:
        raise ValueError(f"no Winograd points for F({m}, {r}); tile sizes available: {TILE_SIZES}")
    alpha = m + r - 1
    pts = POINTS[m][: alpha - 1]
    if len(set(pts)) != len(pts):
        raise ValueError(f"F({m}, {r}): interpolation points must be distinct, got {pts}")
    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for j, p in enumerate(pts):
        f = Fraction(1)
        for k, q in enumerate(pts):
            if k != j:
                f *= p - q
        g.append([p ** k / f for k in range(r)])
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    # Bᵀ from the identity Σ_j Aᵀ[i][j] G[j][k] Bᵀ[j][l] = [l == i + k], column by column of Bᵀ.
    rows = [[at[i][j] * g[j][k] for j in range(alpha)] for i in range(m) for k in range(r)]
    rhs = [[Fraction(int(l == i + k)) for l in range(alpha)] for i in range(m) for k in range(r)]
    bt = _solve_exact(rows, rhs)
    as_tuple = lambda mat: tuple(tuple(row) for row in mat)  # noqa: E731
    return as_tuple(at), as_tuple(g), as_tuple(bt)


def matrices(m: int, r: int = TAPS, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """(Aᵀ, G, Bᵀ) as tensors of ``dtype``."""
    return tuple(torch.tensor([[float(v) for v in row] for row in mat], dtype=dtype) for mat in transforms(m, r))


def transform_filter(weight: torch.Tensor, m: int) -> torch.Tensor:
    """A (C_out, C_in, r) conv weight as the kernel reads it: (α, C_out, C_in) fp32, G·W in float64."""
    if weight.dim() != 3:
        raise ValueError(f"Winograd filter transform needs a (C_out, C_in, k) weight, got shape {tuple(weight.shape)}")
    _, g, _ = matrices(m, weight.shape[-1])
    w = weight.detach().to(torch.float64)
    return torch.einsum("ak,oik->aoi", g, w).to(torch.float32).contiguous()


@lru_cache(maxsize=None)
def kernel_transforms(m: int, r: int = TAPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(Bᵀ, Aᵀ) in fp32, as the native kernel applies them to each tile."""
    at, _, bt = matrices(m, r, torch.float32)
    return bt.contiguous(), at.contiguous()


def conv1d(x: torch.Tensor, weight: torch.Tensor, dilation: int, m: int) -> torch.Tensor:
    """Winograd "same" conv (padding (r-1)·d/2, no bias) in x's dtype with torch ops, tiled as the
    native kernel tiles it: a check of the transforms, and an error study in any precision."""
    frames = x.shape[-1]
    r = weight.shape[-1]
    alpha = m + r - 1
    at, g, bt = (t.to(x.dtype) for t in matrices(m, r))
    u = torch.einsum("ak,oik->aoi", g, weight.to(x.dtype))
    pad = (r - 1) * dilation // 2
    blocks = -(-frames // (m * dilation))  # blocks of m·d outputs, d tiles each
    need = (blocks * m + alpha - m) * dilation
    xp = torch.nn.functional.pad(x, (pad, need - frames - pad))
    # tile (q, res) reads xp[q·m·d + res + p·d] for p < α and writes outputs q·m·d + i·d + res, i < m
    q = torch.arange(blocks)[:, None, None]
    res = torch.arange(dilation)[None, :, None]
    p = torch.arange(alpha)[None, None, :]
    windows = xp[:, :, q * m * dilation + res + p * dilation]  # (B, C_in, blocks, d, α)
    v = torch.einsum("ap,bcqdp->bcqda", bt, windows)
    prod = torch.einsum("aoi,biqda->boqda", u, v)
    y = torch.einsum("ma,boqda->boqmd", at, prod)
    return y.reshape(*y.shape[:2], -1)[..., :frames]
