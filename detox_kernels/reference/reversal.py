"""Float64 reference of the toxification-reversal op (steer each attention head's output away
from the direction a toxic prefix pushes it, scaled by how strongly and how similarly it does).

The kernel contract, which every backend (C++ CPU, Triton, CUDA) computes, per token row ``b``
of ``o [B, H, D]``, ``delta [B, H, D]`` and ``e_neg [H, D]``:

1. per head ``h``: ``s_norm = (1 + ‖δ[b, h]‖₂) ** norm_exp``;
   ``cos = <e_neg[h], o[b, h]> / (‖e_neg[h]‖ ‖o[b, h]‖)``, taken as 0 when that product of
   norms is 0; ``s_sim = (1 + max(cos, 0)) ** sim_exp``;
   ``o'[b, h] = o[b, h] - s_norm * s_sim * δ[b, h]``;
2. with ``renorm``: ``o'[b] *= ‖o[b]‖ / ‖o'[b]‖``, both norms over all ``H * D`` values of the
   row; a row whose ``‖o'[b]‖`` is 0 is left as ``o'[b]`` (there is nothing to rescale).

``max(cos, 0)`` maps a NaN cosine to 0. NaN or inf inputs make their row non-finite (with
``renorm`` the whole row turns NaN through the rescaling factor); other rows are unaffected.

Backends form ``o'`` in float32 and round the result to the dtype of ``o``; the sums are float32
(the CPU kernel combines float lanes in double). When ``δ`` is exactly 0, ``o' = o`` bit for bit on every backend: the update subtracts
zeros and the two norms are summed in the same order, so the rescaling factor is exactly 1.
No check for NaN / inf: that would need a host synchronisation.
"""

from __future__ import annotations

import torch


def reverse_toxification_reference(head_out: torch.Tensor, delta: torch.Tensor, neg_end: torch.Tensor, *,
                                   norm_exp: float = 0.4, sim_exp: float = 0.6, renorm: bool = True) -> torch.Tensor:
    """The updated head outputs (float64, a new tensor; the inputs are not modified)."""
    o = head_out.double()
    d = delta.double()
    e = neg_end.double().unsqueeze(0)  # [1, H, D]
    dn = torch.linalg.vector_norm(d, dim=-1)  # [B, H]
    s_norm = (1.0 + dn) ** norm_exp
    denom = torch.linalg.vector_norm(e, dim=-1) * torch.linalg.vector_norm(o, dim=-1)
    dot = (e * o).sum(-1)
    cos = torch.where(denom > 0, dot / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(dot))
    s_sim = (1.0 + torch.where(cos > 0, cos, torch.zeros_like(cos))) ** sim_exp  # relu; NaN -> 0
    new = o - (s_norm * s_sim).unsqueeze(-1) * d
    if renorm:
        before = torch.linalg.vector_norm(o.flatten(1), dim=-1)
        after = torch.linalg.vector_norm(new.flatten(1), dim=-1)
        nz = after != 0
        ratio = torch.where(nz, before / torch.where(nz, after, torch.ones_like(after)), torch.ones_like(after))
        new = new * ratio.view(-1, 1, 1)
    return new
