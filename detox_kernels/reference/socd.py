"""Float64 PyTorch reference for the SoCD op (Soft Contrastive Decoding: suppress the tokens a
toxic model prefers over the base model, by an amount set by the two distributions' divergence).

This is the definition every backend (C++ CPU, Triton, CUDA) is tested against. It is
vectorised over rows (no Python loop) and computes everything in float64, except the
selection key, which is *defined* as the float32 difference ``y - x`` (see below).

Kernel contract (identical for every backend)
---------------------------------------------
Inputs ``x`` (base) and ``y`` (toxic) are ``[B, Vp]``, fp32/fp16/bf16, same dtype; only the
first ``V = vocab_size`` columns take part, columns ``>= V`` are copied unchanged. Per row:

1. If any of ``x[:V]``, ``y[:V]`` is NaN or ``+inf``, or a row is entirely ``-inf``, the
   divergence is NaN. Otherwise ``p = softmax(x)``, ``q = softmax(y)`` and ``d = f(p, q)`` with
   ``f`` one of ``fkl, rkl, skl, jsd, tvd, l2`` (terms with ``p_j = 0`` contribute 0 to
   ``sum p log(p/q)``; ``p_j > 0`` with ``q_j = 0`` gives ``+inf``).
2. If ``d`` is not finite the row is unchanged: ``alpha = 0``, ``k = 0`` (stats keep ``d``).
3. ``alpha = log1p(d') / (1 + log1p(d'))`` with ``d' = max(d, 0)``.
4. ``k = clip(ceil(alpha * V), k_min, k_max)`` (``floor`` with ``k_rounding="floor"``), where
   ``clip(v, lo, hi) = min(max(v, lo), hi)``.
5. Selection key ``key_j = y_j - x_j`` computed in float32 from the (upcast) inputs, the same
   IEEE operation on every backend, so ties are the same everywhere. ``c = lse(y) - lse(x)``.
   Token ``j`` is a candidate iff ``key_j > c`` (i.e. ``delta_j = log q_j - log p_j > 0``);
   a NaN key (both inputs ``-inf``) is never a candidate, ``x_j = -inf < y_j`` gives ``+inf``.
6. ``m = min(k, #candidates)``; the selected set ``I`` is the ``m`` candidates with the
   largest key, ties broken by the lower token id.
7. ``out_j = x_j - alpha * |y_j|`` (``subtract="abs"``) or ``x_j - alpha * y_j``
   (``"signed"``) for ``j in I``, ``out_j = x_j`` otherwise; computed in float32 by the kernels
   and rounded to the input dtype.
8. Stats: ``alpha`` (float32), ``divergence`` (float32, ``d`` before clamping), ``k = m`` (int32).

Kernels compute ``alpha``, ``c`` and ``d`` in float32, so when ``alpha * V`` lies within
rounding of an integer, or a key within rounding of ``c``, a backend's ``m`` may differ from
the reference's by one. ``socd_select_reference`` lets tests rebuild the reference output for
a given ``m`` to check the selection exactly in that case.
"""

from __future__ import annotations

import torch

DIVERGENCES = ("fkl", "rkl", "skl", "jsd", "tvd", "l2")


def _log_softmax64(z: torch.Tensor) -> torch.Tensor:
    # log_softmax on rows that may contain -inf; fully -inf rows give NaN (handled by caller).
    return torch.log_softmax(z, dim=-1)


def socd_divergence_reference(x: torch.Tensor, y: torch.Tensor, divergence: str) -> torch.Tensor:
    """Per-row divergence ``d = f(softmax(x), softmax(y))`` in float64 (NaN for invalid rows)."""
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {DIVERGENCES}")
    x = x.double()
    y = y.double()
    logp = _log_softmax64(x)
    logq = _log_softmax64(y)
    p = logp.exp()
    q = logq.exp()
    zero = torch.zeros((), dtype=torch.float64, device=x.device)

    def kl(pa, logpa, logpb):
        # sum_j pa_j (log pa_j - log pb_j), terms with pa_j == 0 contribute 0
        return torch.where(pa > 0, pa * (logpa - logpb), zero).sum(-1)

    if divergence == "fkl":
        d = kl(p, logp, logq)
    elif divergence == "rkl":
        d = kl(q, logq, logp)
    elif divergence == "skl":
        d = 0.5 * (kl(p, logp, logq) + kl(q, logq, logp))
    elif divergence == "jsd":
        mix = 0.5 * (p + q)
        logm = torch.log(mix)
        d = 0.5 * kl(p, logp, logm) + 0.5 * kl(q, logq, logm)
    elif divergence == "tvd":
        d = 0.5 * (p - q).abs().sum(-1)
    else:  # l2
        d = (p - q).pow(2).sum(-1).sqrt()

    invalid = (
        torch.isnan(x).any(-1)
        | torch.isnan(y).any(-1)
        | (x == float("inf")).any(-1)
        | (y == float("inf")).any(-1)
        | (x == float("-inf")).all(-1)
        | (y == float("-inf")).all(-1)
    )
    return torch.where(invalid, torch.full_like(d, float("nan")), d)


def socd_alpha_reference(d: torch.Tensor) -> torch.Tensor:
    """``alpha = ln(1+d') / (1 + ln(1+d'))``, ``d' = max(d, 0)``; 0 where ``d`` is not finite."""
    d = d.double()
    l = torch.log1p(d.clamp_min(0.0))
    alpha = l / (1.0 + l)
    return torch.where(torch.isfinite(d), alpha, torch.zeros_like(alpha))


def socd_key_reference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The selection key ``y - x`` in float32 (as every backend computes it), as float64."""
    return (y.float() - x.float()).double()


def socd_select_reference(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: torch.Tensor,
    m: torch.Tensor,
    *,
    subtract: str = "abs",
) -> torch.Tensor:
    """Output (float64, ``[B, V]``) when the ``m[b]`` largest keys of row ``b`` are changed.

    ``m`` must not exceed the number of candidates (it is the count the op reports).
    Ties are broken by the lower token id (stable descending sort).
    """
    x64 = x.double()
    key = socd_key_reference(x, y)
    key = torch.where(torch.isnan(key), torch.full_like(key, float("-inf")), key)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(key.shape[-1], device=key.device).expand_as(key)
    sel_sorted = ranks < m.to(torch.int64).unsqueeze(-1)
    sel = torch.zeros_like(sel_sorted).scatter(-1, order, sel_sorted)
    y64 = y.double()
    sub = y64.abs() if subtract == "abs" else y64
    return torch.where(sel, x64 - alpha.double().unsqueeze(-1) * sub, x64)


def socd_reference(
    base_logits: torch.Tensor,
    toxic_logits: torch.Tensor,
    *,
    divergence: str = "l2",
    k_min: int = 10,
    k_max: int | None = None,
    k_rounding: str = "ceil",
    subtract: str = "abs",
    vocab_size: int | None = None,
):
    """Reference SoCD over ``[B, Vp]`` logits.

    Returns ``(out64, alpha64, d64, m)``: the new logits in float64 (padded columns copied),
    ``alpha``, the divergence and the number of changed tokens per row (int64).
    """
    if base_logits.shape != toxic_logits.shape or base_logits.dim() != 2:
        raise ValueError(
            f"base and toxic logits must both be [B, V]; got {tuple(base_logits.shape)} "
            f"and {tuple(toxic_logits.shape)}"
        )
    vp = base_logits.shape[-1]
    v = vp if vocab_size is None else int(vocab_size)
    if k_max is None:
        k_max = v // 2
    x = base_logits[:, :v]
    y = toxic_logits[:, :v]
    d = socd_divergence_reference(x, y, divergence)
    alpha = socd_alpha_reference(d)
    valid = torch.isfinite(d)
    scaled = alpha * v
    kk = torch.ceil(scaled) if k_rounding == "ceil" else torch.floor(scaled)
    k = torch.clamp(torch.clamp(kk, min=k_min), max=k_max).to(torch.int64)
    key = socd_key_reference(x, y)
    c = torch.logsumexp(y.double(), -1) - torch.logsumexp(x.double(), -1)
    npos = (key > c.unsqueeze(-1)).sum(-1)
    m = torch.where(valid, torch.minimum(k, npos), torch.zeros_like(k))
    head = socd_select_reference(x, y, alpha, m, subtract=subtract)
    out = torch.cat([head, base_logits[:, v:].double()], dim=-1)
    return out, alpha, d, m
