"""X-Codec's residual vector quantizer (RVQ), inference only.

State-dict keys equal transformers': ``quantizers.{q}.codebook.embed`` (K, D). For the ops the Q
codebooks live in one stacked (Q, K, D) buffer and each ``embed`` is a view of it (no copy);
:meth:`ResidualVectorQuantizer.refresh` rebuilds the stack and the other derived buffers and must
run after the codebooks (or fc2) change — the loaders and ``XcodecModel.refresh_derived`` do it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops
from ..config import XcodecConfig


class Codebook(nn.Module):
    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.register_buffer("embed", torch.zeros(codebook_size, dim))


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.codebook = Codebook(codebook_size, dim)


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, config: XcodecConfig):
        super().__init__()
        self.quantizers = nn.ModuleList(
            [VectorQuantizer(config.codebook_size, config.codebook_dim) for _ in range(config.num_quantizers)]
        )
        # Derived, never saved: stacked codebooks (Q, K, D), their squared norms (Q, K), and the
        # codebooks projected by fc2 (Q, K, D_acoustic) for backends that gather pre-projected rows.
        self.register_buffer("codebooks", None, persistent=False)
        self.register_buffer("codebook_sq_norms", None, persistent=False)
        self.register_buffer("projected_codebooks", None, persistent=False)

    @property
    def num_quantizers(self) -> int:
        return len(self.quantizers)

    @property
    def codebook_size(self) -> int:
        return self.quantizers[0].codebook.embed.shape[0]

    @torch.no_grad()
    def refresh(self, proj_weight: Tensor) -> None:
        """Rebuild the derived buffers from the per-quantizer ``embed`` tensors and fc2's weight."""
        stacked = torch.stack([q.codebook.embed for q in self.quantizers]).contiguous()
        self.codebooks = stacked
        for index, quantizer in enumerate(self.quantizers):
            quantizer.codebook.embed = stacked[index]
        wide = stacked.float()
        self.codebook_sq_norms = wide.pow(2).sum(-1).to(stacked.dtype)
        self.projected_codebooks = (wide @ proj_weight.float().t()).to(stacked.dtype)

    def _apply(self, fn, recurse=True):
        # .to()/.half() convert each buffer separately; re-point the embeds into the converted stack
        # so the codebooks are not held twice.
        super()._apply(fn, recurse)
        if self.codebooks is not None:
            for index, quantizer in enumerate(self.quantizers):
                quantizer.codebook.embed = self.codebooks[index]
        return self

    def encode(self, embeddings: Tensor, num_quantizers: int) -> Tensor:
        """embeddings (B, D, T) -> codes (B, num_quantizers, T) int64."""
        return ops.rvq_encode(embeddings, self.codebooks, self.codebook_sq_norms, num_quantizers)

    def decode_project(self, codes: Tensor, proj_weight: Tensor, proj_bias: Tensor) -> Tensor:
        """codes (B, n_q, T) -> Linear(proj)(Σ_q codeword) as (B, D_out, T)."""
        return ops.dequantize_project(codes, self.codebooks, proj_weight, proj_bias, self.projected_codebooks)
