"""Float64 reference of the fused sampling op :func:`detox_kernels.sample_top_k_top_p`.

Kernel contract (every backend implements exactly this; tested token for token):

Per row ``b`` of ``logits`` ``[B, V]`` and ``u = uniform[b]`` in ``[0, 1)``:

1. **Temperature**: ``x = float32(logits) / float32(temperature)`` (float32 division, as
   HuggingFace's ``TemperatureLogitsWarper`` on float32 scores). NaN scores count as ``-inf``.
2. **Top-k** (off when ``top_k <= 0`` or ``top_k >= V``): ``t_k`` = the ``top_k``-th largest
   ``x`` (duplicates counted); keep every token with ``x >= t_k``, so *all* ties at the
   ``top_k``-th value are kept (HuggingFace's ``TopKLogitsWarper``). Off: every token is kept.
3. **Top-p** (off when ``top_p >= 1``): ``p`` = softmax of ``x`` over the tokens top-k kept.
   Rank the kept tokens by descending ``x``, ties by **ascending token id** (the lower id ranks
   higher). A token is kept iff the probability mass of the tokens ranked strictly above it is
   ``< top_p``; the top-ranked token is always kept. This is HuggingFace's ``TopPLogitsWarper``
   (ascending sort, remove where the ascending cumulative probability is ``<= 1 - top_p``, keep
   at least one) with its order among equal probabilities fixed by the tie rule above.
4. **Sampling**: ``q`` = softmax of ``x`` over the kept tokens; accumulate ``q`` over the kept
   tokens in token-id order and return the first id whose cumulative sum exceeds ``u`` (the last
   kept id if rounding leaves ``u`` above the total). This is inverse-CDF sampling, so with
   ``u ~ U[0, 1)`` the token has the distribution of HuggingFace's warper chain followed by
   ``torch.multinomial``.
5. A row whose ``x`` is entirely ``-inf`` (or NaN) returns token ``0``.

The compiled and Triton backends compute in float32 without sorting (radix selects on the float
bits); they agree with this reference token for token except where ``u`` or the top-p cut-off lies
within float32 rounding of a boundary of the cumulative distribution.
"""

from __future__ import annotations

import torch


def warped_scores_reference(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0,
                            temperature: float = 1.0) -> torch.Tensor:
    """The float64 scores after temperature, top-k and top-p (removed tokens ``-inf``); items 1-3
    of the contract."""
    x = (logits.to(torch.float32) / torch.tensor(float(temperature), dtype=torch.float32)).to(torch.float64)
    x = torch.where(torch.isnan(x), torch.full_like(x, float("-inf")), x)
    b, v = x.shape
    ninf = torch.full_like(x, float("-inf"))
    if 0 < top_k < v:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = torch.where(x >= kth, x, ninf)
    if top_p < 1.0 and v > 0:
        # descending, ties by ascending id: a stable sort of -x
        order = torch.sort(-x, dim=-1, stable=True).indices
        xs = torch.gather(x, 1, order)
        m = xs[:, :1]
        e = torch.where(torch.isfinite(xs), torch.exp(xs - torch.where(torch.isfinite(m), m, torch.zeros_like(m))),
                        torch.zeros_like(xs))
        z = e.sum(-1, keepdim=True)
        above = torch.cumsum(e, -1) - e  # mass ranked strictly above
        keep_sorted = above < float(top_p) * z
        keep_sorted[:, 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
        x = torch.where(keep, x, ninf)
    return x


def sample_top_k_top_p_reference(logits: torch.Tensor, uniform: torch.Tensor, *, top_k: int = 0,
                                 top_p: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    """The sampled token ids ``[B]`` int64 (on ``logits``' device) of the contract above."""
    if logits.dim() != 2:
        raise ValueError("logits must be [B, V]")
    b, v = logits.shape
    x = warped_scores_reference(logits, top_k=top_k, top_p=top_p, temperature=temperature)
    out = torch.zeros(b, dtype=torch.int64, device=logits.device)
    if v == 0 or b == 0:
        return out
    m = x.max(-1, keepdim=True).values
    ok = torch.isfinite(m)
    e = torch.where(torch.isfinite(x), torch.exp(x - torch.where(ok, m, torch.zeros_like(m))), torch.zeros_like(x))
    c = torch.cumsum(e, -1)
    z = c[:, -1:]
    target = uniform.to(torch.float64).reshape(b, 1).to(x.device) * z
    idx = torch.searchsorted(c.contiguous(), target.contiguous(), right=True).reshape(b)
    ids = torch.arange(v, device=x.device).expand(b, v)
    last = torch.where(e > 0, ids, torch.full_like(ids, -1)).max(-1).values
    idx = torch.minimum(idx, last)
    return torch.where(ok.reshape(b), idx, out)
