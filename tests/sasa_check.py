"""Inputs and the reference comparison shared by the SASA op tests and benchmark."""

from __future__ import annotations

import torch

from detox_kernels.reference import sasa_reweight_reference


def make_sasa_inputs(b, k, d, v, *, logits_dtype=torch.float32, hidden_dtype=torch.float32, seed=0,
                     duplicates=True, invalid=True, neg_inf=True):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, v, generator=g) * 3).to(logits_dtype)
    ids = torch.stack([torch.randperm(v, generator=g)[:k] if k <= v else torch.randint(0, v, (k,), generator=g)
                       for _ in range(b)]) if b else torch.empty(0, k, dtype=torch.long)
    hidden = torch.randn(b, k, d, generator=g).to(hidden_dtype)
    w = torch.randn(d, generator=g)
    w = w / w.norm().clamp_min(1e-12)
    m = torch.randn(d, generator=g) * 0.1
    beta = torch.rand(b, generator=g) * 20 - 2  # per row, some negative
    valid = torch.rand(b, k, generator=g) > 0.1 if invalid else None
    if b and k >= 3 and duplicates:
        ids[0, 2] = ids[0, 0]  # a duplicate id (both valid unless masked)
        if b > 1:
            ids[b - 1, k - 1] = ids[b - 1, 1]
    if b and k >= 2 and invalid:
        ids[0, 1] = -1  # out of range: ignored
        ids[b - 1, 0] = v + 3
    if b and k >= 4 and neg_inf:
        logits[0, ids[0, 3]] = float("-inf")  # a -inf logit stays -inf
        logits[b - 1, 0] = float("-inf")
    return logits, ids, hidden, w, m, beta, valid


def check_against_reference(out, margins, logits, ids, hidden, w, m, beta, valid, mode):
    ref, ref_m = sasa_reweight_reference(logits.cpu(), ids.cpu(), hidden.cpu(), w.cpu(), m.cpu(), beta.cpu(),
                                         mode=mode, valid=None if valid is None else valid.cpu())
    out, margins = out.cpu(), margins.cpu()
    d = hidden.shape[-1]
    # margins: float32 dot products of length D
    tol_m = 1e-5 * (1 + d ** 0.5) if hidden.dtype == torch.float32 else 1e-2 * (1 + d ** 0.5)
    torch.testing.assert_close(margins.double(), ref_m if hidden.dtype == torch.float32 else
                               ref_m, atol=tol_m, rtol=1e-4)
    # untouched entries are bit-identical; -inf stays -inf
    changed = torch.zeros_like(logits, dtype=torch.bool)
    take = (ids >= 0) & (ids < logits.shape[1])
    if valid is not None:
        take &= valid
    changed.scatter_(1, torch.where(take, ids, 0).cpu(), take.cpu())
    assert torch.equal(out[~changed], logits.cpu()[~changed])
    assert torch.equal(torch.isneginf(out), torch.isneginf(ref))
    fin = torch.isfinite(ref)
    if logits.dtype == torch.float32:
        atol = 1e-4 * (1 + beta.abs().max().item()) * (1 + (tol_m * 100 if mode == "tilt" else 0))
        rtol = 1e-5
    else:
        atol, rtol = 2e-2 * (1 + beta.abs().max().item()) * (1 + (tol_m * 10 if mode == "tilt" else 0)), 1e-2
    torch.testing.assert_close(out[fin].double(), ref[fin].double(), atol=atol, rtol=rtol)
