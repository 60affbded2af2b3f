"""CMD's toxic contrastive loss (phase 2 of CMD, docs/methods/context-aware-self-detoxification.md) and the CMD training objective.

``contrastive_loss`` is InfoNCE with cosine similarity and temperature ``tau``: for every group
(one training sample) with an anchor ``z``, a positive ``z+`` and up to K negatives ``z-``,

    L = -log( exp(cos(z, z+)/tau) / sum_{j in {+, negatives}} exp(cos(z, z_j)/tau) ),

averaged over the groups that have at least one negative. Fully vectorised (no loop over
groups, no host synchronisation); ``neg_mask`` marks the real negatives of each padded group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                     neg_mask: torch.Tensor | None = None, tau: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """InfoNCE loss. anchor, positive: [B, H]; negatives: [B, K, H]; neg_mask: [B, K] bool."""
    if anchor.dim() != 2 or positive.shape != anchor.shape:
        raise ValueError(f"anchor and positive must both be [B, H], got {tuple(anchor.shape)} and {tuple(positive.shape)}")
    if negatives.dim() != 3 or negatives.shape[0] != anchor.shape[0] or negatives.shape[2] != anchor.shape[1]:
        raise ValueError(f"negatives must be [B, K, H] = [{anchor.shape[0]}, K, {anchor.shape[1]}], got {tuple(negatives.shape)}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    B, K, _ = negatives.shape
    if neg_mask is None:
        neg_mask = torch.ones(B, K, dtype=torch.bool, device=anchor.device)
    neg_mask = neg_mask.to(torch.bool)
    cands = torch.cat([positive.unsqueeze(1), negatives], dim=1)                      # [B, 1+K, H]
    sim = F.cosine_similarity(anchor.unsqueeze(1), cands, dim=-1, eps=eps) / tau        # [B, 1+K]
    valid = torch.cat([torch.ones_like(neg_mask[:, :1]), neg_mask], dim=1)
    sim = sim.masked_fill(~valid, float("-inf"))
    per_group = torch.logsumexp(sim, dim=1) - sim[:, 0]                                 # [B]
    has_neg = neg_mask.any(dim=1)
    w = has_neg.to(per_group.dtype)
    # groups without a negative contribute 0 (their loss is exactly 0 anyway: log(e^s / e^s))
    return (per_group * w).sum() / w.sum().clamp_min(1.0)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [N, T, H] over the positions where ``mask`` [N, T] is 1."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
