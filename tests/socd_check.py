"""Input generators and the backend-vs-reference comparison for the SoCD tests.

The comparison is exact where the contract is exact and tolerant only where float32
rounding may legitimately move a boundary (see detox_kernels/reference/socd.py):
- alpha and the divergence agree with the float64 reference to float32-accumulation accuracy;
- the backend's count ``k`` lies in the range the reference allows once alpha*V and the
  candidate cut-off ``c`` are perturbed by that accuracy (a single value almost always);
- given that count, the changed set is exactly the reference's: the ``k`` largest keys with
  ties broken by the lower token id; outputs match the float64 formula;
- padded columns are bit-identical to the input.
"""

from __future__ import annotations

import math

import torch

from detox_kernels.reference import socd_key_reference, socd_reference, socd_select_reference

ROW_KINDS = ("random", "close", "ties", "neginf", "constant", "peaked", "onehot")


def make_row(kind: str, v: int, g: torch.Generator):
    if kind == "random":
        x = torch.randn(v, generator=g, dtype=torch.float64) * 3
        y = torch.randn(v, generator=g, dtype=torch.float64) * 3
    elif kind == "close":
        x = torch.randn(v, generator=g, dtype=torch.float64) * 2
        y = x + torch.randn(v, generator=g, dtype=torch.float64) * 0.2
    elif kind == "ties":  # integer logits: many exactly equal keys
        x = torch.randint(-3, 4, (v,), generator=g).double()
        y = torch.randint(-3, 4, (v,), generator=g).double()
    elif kind == "neginf":
        x = torch.randn(v, generator=g, dtype=torch.float64) * 3
        y = torch.randn(v, generator=g, dtype=torch.float64) * 3
        mx = torch.rand(v, generator=g) < 0.1
        my = torch.rand(v, generator=g) < 0.1
        x[mx] = -math.inf
        x[0] = 0.0 if v > 1 else x[0]
        y[my & mx] = -math.inf  # -inf in both only where x is -inf: fkl stays finite
    elif kind == "constant":
        x = torch.full((v,), 1.5, dtype=torch.float64)
        y = torch.full((v,), -0.25, dtype=torch.float64)
    elif kind == "peaked":
        x = torch.randn(v, generator=g, dtype=torch.float64)
        y = torch.randn(v, generator=g, dtype=torch.float64)
        idx = torch.randint(0, v, (3,), generator=g)
        x[idx] += 15
        y[idx[:1]] += 20
    elif kind == "onehot":  # a toxic model that is -inf except on a few tokens: infinite fkl
        x = torch.randn(v, generator=g, dtype=torch.float64) * 2
        y = torch.full((v,), -math.inf, dtype=torch.float64)
        y[torch.randint(0, v, (2,), generator=g)] = 5.0
    else:
        raise ValueError(kind)
    return x, y


def make_logits(b: int, v: int, dtype: torch.dtype, seed: int, pad: int = 0, kinds=ROW_KINDS):
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for i in range(b):
        x, y = make_row(kinds[(i + seed) % len(kinds)], v, g)
        if pad:
            x = torch.cat([x, torch.randn(pad, generator=g, dtype=torch.float64) * 5])
            y = torch.cat([y, torch.randn(pad, generator=g, dtype=torch.float64) * 5])
        xs.append(x)
        ys.append(y)
    return torch.stack(xs).to(dtype), torch.stack(ys).to(dtype)


def allowed_counts(x, y, alpha64, d64, *, k_min, k_max, k_rounding, v):
    """Range [lo, hi] of the changed-token count a float32 backend may report per row."""
    valid = torch.isfinite(d64)
    s = alpha64 * v
    tol = 2e-4 * s + 1e-3
    rnd = torch.ceil if k_rounding == "ceil" else torch.floor

    def clip(t):
        return torch.clamp(torch.clamp(t, min=k_min), max=k_max)

    k_lo, k_hi = clip(rnd(s - tol)), clip(rnd(s + tol))
    key = socd_key_reference(x, y)
    lse_x = torch.logsumexp(x.double(), -1)
    lse_y = torch.logsumexp(y.double(), -1)
    c = (lse_y - lse_x).unsqueeze(-1)
    ctol = (1e-5 * (1 + lse_x.abs() + lse_y.abs())).unsqueeze(-1)
    npos_lo = (key > c + ctol).sum(-1)
    npos_hi = (key > c - ctol).sum(-1)
    zero = torch.zeros_like(npos_lo)
    lo = torch.where(valid, torch.minimum(k_lo.long(), npos_lo), zero)
    hi = torch.where(valid, torch.minimum(k_hi.long(), npos_hi), zero)
    return lo, hi


def check_against_reference(out, stats, x, y, *, divergence, k_min, k_max, k_rounding, subtract, vocab_size=None):
    """Assert that ``(out, stats)`` from a backend follows the contract for inputs ``x, y``."""
    width = x.shape[1]
    v = width if vocab_size is None else vocab_size
    if k_max is None:
        k_max = v // 2
    ref_out, alpha64, d64, m_ref = socd_reference(
        x, y, divergence=divergence, k_min=k_min, k_max=k_max, k_rounding=k_rounding, subtract=subtract, vocab_size=v
    )
    assert out.shape == x.shape and out.dtype == x.dtype
    assert stats.alpha.dtype == torch.float32 and stats.divergence.dtype == torch.float32
    assert stats.k.dtype == torch.int32
    alpha_b = stats.alpha.double().cpu()
    d_b = stats.divergence.double().cpu()
    k_b = stats.k.long().cpu()
    out = out.cpu()

    valid_ref = torch.isfinite(d64)
    assert torch.equal(torch.isfinite(d_b), valid_ref), f"validity differs: ref d={d64}, backend d={d_b}"
    torch.testing.assert_close(alpha_b, alpha64, rtol=2e-4, atol=1e-6, msg="alpha")
    torch.testing.assert_close(d_b[valid_ref], d64[valid_ref], rtol=2e-4, atol=2e-5, msg="divergence")
    assert torch.all(alpha_b[~valid_ref] == 0) and torch.all(k_b[~valid_ref] == 0)

    lo, hi = allowed_counts(x[:, :v], y[:, :v], alpha64, d64, k_min=k_min, k_max=k_max, k_rounding=k_rounding, v=v)
    bad = (k_b < lo) | (k_b > hi)
    assert not bad.any(), f"k outside the allowed range in rows {bad.nonzero().flatten().tolist()}: k={k_b[bad]}, lo={lo[bad]}, hi={hi[bad]}, ref={m_ref[bad]}"
    # Almost always the count is exactly the reference's.
    assert (k_b == m_ref).double().mean() >= 0.5 or len(k_b) < 4

    expect = socd_select_reference(x[:, :v], y[:, :v], alpha_b, k_b, subtract=subtract)
    got = out[:, :v]
    if x.dtype == torch.float32:
        torch.testing.assert_close(got.double(), expect, rtol=1e-6, atol=1e-5, equal_nan=True)
    else:  # one rounding of the float32 result to 16 bits; the reference rounds the float64 one
        eps = 2.0**-7 if x.dtype == torch.bfloat16 else 2.0**-10
        torch.testing.assert_close(got.double(), expect.to(x.dtype).double(), rtol=eps, atol=1e-3, equal_nan=True)
    assert torch.equal(out[:, v:], x[:, v:]), "padded columns must be copied unchanged"
