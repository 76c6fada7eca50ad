"""The RVQ parity rule shared by the kernel and end-to-end tests: a fast path's codes may differ
from eager's only where the two choices are a float-rounding near tie."""

import torch


def check_near_ties(codes, ref, x, codebooks, tol: float) -> tuple[int, int]:
    """Every code in ``codes`` must be a near-argmax (within ``tol`` of the score scale) of the
    residual along its own path, computed in float64; where it parts from ``ref`` (eager) the two
    scores must be within ``tol`` too. Returns (frames that parted from eager, frames)."""
    nq = codes.shape[1]
    cb = codebooks.double().cpu()
    ours = codes.permute(0, 2, 1).reshape(-1, nq).cpu()
    theirs = ref.permute(0, 2, 1).reshape(-1, nq).cpu()
    residual = x.double().cpu().permute(0, 2, 1).reshape(-1, x.shape[1])
    parted = torch.zeros(ours.shape[0], dtype=torch.bool)
    for q in range(nq):
        norms = (cb[q] * cb[q]).sum(-1)
        scores = 2 * residual @ cb[q].T - norms
        scale = (residual * residual).sum(-1) + norms.max()
        picked = scores.gather(1, ours[:, q : q + 1]).squeeze(1)
        slack = (scores.max(-1).values - picked) / scale
        assert slack.max().item() <= tol, f"stage {q}: a code is {slack.max().item():.3g} below the best score"
        differ = (ours[:, q] != theirs[:, q]) & ~parted
        if differ.any():
            gap = ((picked - scores.gather(1, theirs[:, q : q + 1]).squeeze(1)).abs() / scale)[differ]
            assert gap.max().item() <= tol, f"stage {q}: eager's code differs by a gap of {gap.max().item():.3g}"
        parted |= differ
        residual = residual - cb[q][ours[:, q]]
    return int(parted.sum()), parted.numel()
