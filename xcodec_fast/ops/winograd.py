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

import contextlib
import math
import os
from fractions import Fraction
from functools import lru_cache
from typing import Iterator

import torch

# Interpolation points (∞ is implied): small integers and simple fractions keep the transforms'
# entries near 1, which bounds the rounding they add, but which of them matters a lot. F(3,7) and
# F(4,7) take the set of lowest fp32 RMS error found by trying every choice of the points beyond
# 0, ±1 from {±2, ±1/2, ±3, ±1/3, ±3/2, ±2/3, ±4, ±1/4} on a random C=128 dilated conv (and
# confirmed at C=512 d=9 and C=64 d=1): F(4,7)'s RMS error went from 6.5e-6 of the output's RMS
# with the points 0, ±1, ±2, ±1/2, ±3 to 2.6e-6, F(3,7)'s from 3.5e-6 to 1.9e-6. F(5,7) and
# F(6,7) (best found: 5.5e-6 and 5.9e-6, single convs up to 1.5e-5 of peak) are not offered.
POINTS: dict[int, tuple[Fraction, ...]] = {
    2: tuple(map(Fraction, ("0", "1", "-1", "2", "-2", "1/2", "-1/2"))),
    3: tuple(map(Fraction, ("0", "1", "-1", "-1/2", "3", "1/3", "3/2", "-3/2"))),
    4: tuple(map(Fraction, ("0", "1", "-1", "-2", "1/2", "3", "-1/3", "3/2", "-2/3"))),
}
TILE_SIZES = tuple(POINTS)
TAPS = 7  # the residual units' kernel size; the transforms are built for any r
# The tile sizes the native dispatch may pick. python -m xcodec_fast.benchmark.winograd, full-size
# decode vs float64 on a 2-core AMD EPYC Zen 5 (PyTorch-default conv init): direct 8.7e-7 of peak,
# F(2,7) 1.6e-6, F(3,7) 2.3e-6, F(4,7) 2.9e-6, all within the 1e-5 bound, encode codes all equal to
# eager's. But the error grows with the tile against the direct conv's (per conv, RMS: 4x for
# F(2,7), 10x for F(4,7)), and on a badly conditioned decoder (the oracle tests' random weights,
# where transformers' own fp32 decode is 2.4e-5 of peak from float64) F(4,7) lands at 4-9e-5, 3-4x
# transformers' own error. So by default only F(2,7) runs (within 2x transformers' fp32 error
# everywhere tested); F(4,7) is opt-in, as bf16 is: XCODEC_FAST_WINOGRAD=fast, or fast_tiles().
# F(3,7) is never dispatched: F(4,7) does fewer multiply-adds per output in every step (GEMMs 2.5 C²
# against 3, input transform α²/m 25 against 27), so it could only win by accident.
DEFAULT_TILE_SIZES = (2,)
FAST_TILE_SIZES = (2, 4)
MODE_ENV = "XCODEC_FAST_WINOGRAD"
_fast_override: bool | None = None


def fast_tiles_enabled() -> bool:
    """Whether the opt-in F(4,7) is allowed now (``fast_tiles()`` or XCODEC_FAST_WINOGRAD=fast)."""
    if _fast_override is not None:
        return _fast_override
    value = os.environ.get(MODE_ENV, "default").strip().lower() or "default"
    if value not in ("default", "fast"):
        raise ValueError(f"environment variable {MODE_ENV}={value!r}: choose default (F(2,7) only) or fast "
                         "(F(4,7) too: faster, ~3x the fp32 reference's error)")
    return value == "fast"


@contextlib.contextmanager
def fast_tiles(enabled: bool = True) -> Iterator[None]:
    """Allow (or forbid) the measured dispatch's F(4,7) inside the block, whatever the environment."""
    global _fast_override
    previous, _fast_override = _fast_override, enabled
    try:
        yield
    finally:
        _fast_override = previous


def dispatch_tile_sizes(fast: bool | None = None) -> tuple[int, ...]:
    """The tile sizes the native dispatch chooses among now (``fast``: :func:`fast_tiles_enabled`
    as the caller already read it)."""
    return FAST_TILE_SIZES if (fast_tiles_enabled() if fast is None else fast) else DEFAULT_TILE_SIZES


def tile_period(dilation: int) -> int:
    """Frames after which a dispatchable Winograd residual unit's rounding repeats: tiles of
    m·dilation frames start on multiples of m·dilation from an input's first frame, and an output's
    rounding follows its place in its tile. Windows of a decode that start on multiples of this (in
    that layer's frames) compute every frame as the whole decode does, in either mode."""
    return math.lcm(*(m * dilation for m in FAST_TILE_SIZES))


@lru_cache(maxsize=None)
def rounding_leak(m: int, r: int = TAPS) -> int:
    """Inputs, beyond an output's own r taps, that enter its rounding: output i of a tile sums
    Aᵀ[i][a]·M[a], and M[a] mixes the inputs p with Bᵀ[a][p] != 0 (found from the exact transforms:
    0 for F(2,7), whose points 0 and ∞ keep each edge input out of the other output, 2 for F(4,7))."""
    at, _, bt = transforms(m, r)
    alpha = m + r - 1
    worst = 0
    for i in range(m):
        inputs = [p for p in range(alpha) if any(at[i][a] != 0 and bt[a][p] != 0 for a in range(alpha))]
        worst = max([worst, *(i - p for p in inputs if p < i), *(p - (i + r - 1) for p in inputs if p > i + r - 1)])
    return worst


def tile_reach(dilation: int) -> int:
    """Frames beyond a dispatched Winograd conv's exact reach (``(k - 1) / 2 · dilation`` each side)
    that still move an output's rounding. A decode window needs this much more context for its kept
    frames to round as in the whole decode."""
    return max(rounding_leak(m) for m in dispatch_tile_sizes()) * dilation


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
