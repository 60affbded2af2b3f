"""Float64 PyTorch reference for the SASA re-weighting op (the candidates' margins against a linear
toxicity subspace, and the re-weighting of their next-token scores by them).

This is the definition every backend (C++ CPU, Triton, CUDA) is tested against. Vectorised over
rows, everything in float64.

Kernel contract (identical for every backend)
---------------------------------------------
Inputs: ``logits [B, V]`` (fp32/fp16/bf16, last dim contiguous), ``ids [B, K]`` (int64 or
int32 candidate token ids), ``hidden [B, K, D]`` (fp32/fp16/bf16, the LM's hidden state of
``prefix + ids[b, k]``), ``direction [D]`` and ``midpoint [D]`` (float32), ``beta [B]``
(float32, one strength per row), ``valid [B, K]`` (bool). Per row ``b``:

1. ``margin[b, k] = sum_d (hidden[b, k, d] - midpoint[d]) * direction[d]`` for every ``k``
   (written to the ``margins`` output, float32, whether or not the candidate is valid).
2. Candidate ``k`` takes part iff ``valid[b, k]`` and ``0 <= ids[b, k] < V``.
3. Weights over the candidates that take part: ``softmax`` mode
   ``weight = exp(margin - max) / sum exp(margin - max)``; ``tilt`` mode ``weight = margin``.
   Candidates that do not take part get weight 0.
4. Duplicate ids: every occurrence is its own candidate (it counts in the softmax); the weights
   of all occurrences of one id are summed (in ``k`` order) and added once:
   ``logits[b, id] += beta[b] * sum_{k: ids[b,k] = id, taking part} weight[b, k]``
   (computed in float32 by the kernels, then rounded to the logits' dtype). ``-inf`` logits stay
   ``-inf``; every other logit is unchanged, bit for bit.
5. A row with no candidate taking part is unchanged. NaN hidden states of a candidate that takes
   part make that row's weights NaN (``softmax``) or that candidate's (``tilt``); the public op
   raises on CPU (see ``detox_kernels.ops.sasa``).

The kernels compute margins in float32 (other summation orders than this reference), so they
agree with it to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import torch

MODES = ("softmax", "tilt")


def sasa_margins_reference(hidden: torch.Tensor, direction: torch.Tensor, midpoint: torch.Tensor) -> torch.Tensor:
    """``(hidden - midpoint) @ direction`` in float64: ``[..., D] -> [...]``."""
    return (hidden.double() - midpoint.double()) @ direction.double()


def sasa_weights_reference(margins: torch.Tensor, take: torch.Tensor, mode: str = "softmax") -> torch.Tensor:
    """Per-candidate weights (float64, ``[B, K]``) over the candidates in ``take`` (bool ``[B, K]``)."""
    if mode not in MODES:
        raise ValueError(f"unknown SASA mode {mode!r}; choose one of {', '.join(MODES)}")
    m = margins.double()
    if mode == "tilt":
        return torch.where(take, m, torch.zeros_like(m))
    ninf = torch.full_like(m, float("-inf"))
    masked = torch.where(take, m, ninf)
    mx = masked.amax(dim=1, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    e = torch.where(take, torch.exp(masked - mx), torch.zeros_like(m))
    s = e.sum(dim=1, keepdim=True)
    return torch.where(take, e / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(m))


def sasa_reweight_reference(
    logits: torch.Tensor,
    ids: torch.Tensor,
    hidden: torch.Tensor,
    direction: torch.Tensor,
    midpoint: torch.Tensor,
    beta,
    *,
    mode: str = "softmax",
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract above: returns ``(new_logits, margins)``; ``new_logits`` in the logits' dtype
    (computed in float64 and rounded once), ``margins`` float64 ``[B, K]``. Does not modify inputs."""
    b, v = logits.shape
    k = ids.shape[1]
    margins = sasa_margins_reference(hidden, direction, midpoint)
    take = (ids >= 0) & (ids < v)
    if valid is not None:
        take = take & valid.bool()
    w = sasa_weights_reference(margins, take, mode)
    beta_t = torch.as_tensor(beta, dtype=torch.float64, device=logits.device).reshape(-1)
    beta_t = beta_t.expand(b) if beta_t.numel() == 1 else beta_t
    delta = torch.zeros(b, v, dtype=torch.float64, device=logits.device)
    safe = torch.where(take, ids.long(), torch.zeros_like(ids, dtype=torch.long))
    delta.scatter_add_(1, safe, w * beta_t[:, None])
    # scatter_add, not scatter_: the non-participating entries also point at id 0, and with a plain
    # scatter their False could overwrite the True of a real candidate with id 0
    touched = torch.zeros(b, v, dtype=torch.long, device=logits.device).scatter_add_(1, safe, take.long()) > 0
    new = torch.where(touched, (logits.double() + delta).to(logits.dtype), logits)
    del k
    return new, margins
