"""The C++ CPU SoCD kernel's own paths: a row split over threads (fewer rows than threads) gives
the same bits as one thread, and the radix select of the threshold at its edges (ties at the
threshold, across thread boundaries and in the low key bits, -inf rows and keys, k = V, k = 1)."""

from __future__ import annotations

import math

import pytest
import torch

from detox_kernels import socd
from detox_kernels.ops import socd as socd_module
from detox_kernels.reference import DIVERGENCES

from backends import available_backends
from socd_check import check_against_reference, make_logits

pytestmark = pytest.mark.skipif("cpu" not in available_backends(socd_module), reason="C++ CPU kernel not built")


def _run(x, y, threads, **kw):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return socd(x, y, return_stats=True, backend="cpu", **kw)
    finally:
        torch.set_num_threads(old)


def _same(a, b):
    (oa, sa), (ob, sb) = a, b
    assert torch.equal(oa.view(torch.int16 if oa.element_size() == 2 else torch.int32),
                       ob.view(torch.int16 if ob.element_size() == 2 else torch.int32))
    assert torch.equal(sa.alpha, sb.alpha) and torch.equal(sa.k, sb.k)
    assert torch.equal(sa.divergence.nan_to_num(7.0), sb.divergence.nan_to_num(7.0))


@pytest.mark.parametrize("v", [8192, 20001, 49152, 151936])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_split_row_is_bit_identical_to_one_thread(v, dtype):
    # B = 1 and B = 3 rows with 4 and 3 threads: each row split over the threads (uneven chunks)
    for b, threads in ((1, 4), (3, 4), (1, 3)):
        x, y = make_logits(b, v, getattr(torch, dtype), seed=v % 97 + b)
        for div in DIVERGENCES:
            one = _run(x, y, 1, divergence=div)
            many = _run(x, y, threads, divergence=div)
            _same(one, many)
        check_against_reference(*many, x, y, divergence=div, k_min=10, k_max=None, k_rounding="ceil",
                                subtract="abs")


def test_split_row_in_place_padded_and_strided():
    v, pad = 30000, 37
    x, y = make_logits(2, v, torch.float32, seed=5, pad=pad)
    wide = torch.cat([x, torch.zeros(2, 11)], 1)[:, : v + pad]  # strided rows
    expect = _run(x, y, 1, vocab_size=v)
    got = _run(wide, y, 4, vocab_size=v)
    _same(expect, got)
    inplace = x.clone()
    out, st = _run(inplace, y, 4, vocab_size=v, out=inplace)
    assert out.data_ptr() == inplace.data_ptr()
    _same(expect, (out, st))


def _tie_rows(v, g):
    """Rows whose k-th largest key sits inside a long run of equal keys."""
    rows = []
    x = torch.zeros(v)
    y = torch.randint(0, 3, (v,), generator=g).float()  # keys 0, 1, 2: huge ties
    rows.append((x, y))
    # equal keys only in the low bits (the third radix round decides): y = x + 1 + j ulp
    x = torch.randn(v, generator=g)
    base = torch.full((v,), 1.0)
    steps = torch.randint(0, 5, (v,), generator=g).float()
    y = x + base + steps * 2.0**-20
    rows.append((x, y))
    # -inf in x where y is finite: +inf keys, all tied at the top
    x = torch.randn(v, generator=g)
    y = torch.randn(v, generator=g)
    x[torch.randperm(v, generator=g)[: v // 3]] = -math.inf
    rows.append((x, y))
    return rows


@pytest.mark.parametrize("v", [1271, 49152])
@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("k", ["1", "V", "17", "half"])
def test_radix_select_edges(v, threads, k):
    g = torch.Generator().manual_seed(v + threads)
    rows = _tie_rows(v, g)
    x = torch.stack([r[0] for r in rows])
    y = torch.stack([r[1] for r in rows])
    kv = {"1": 1, "V": v, "17": 17, "half": v // 2}[k]
    for b in range(x.shape[0]):  # one row at a time: B = 1 takes the split path with threads > 1
        xb, yb = x[b:b + 1], y[b:b + 1]
        out, st = _run(xb, yb, threads, k_min=kv, k_max=kv)
        check_against_reference(out, st, xb, yb, divergence="l2", k_min=kv, k_max=kv, k_rounding="ceil",
                                subtract="abs")
        _same((out, st), _run(xb, yb, 1, k_min=kv, k_max=kv))


@pytest.mark.parametrize("threads", [1, 4])
def test_non_finite_rows_split(threads):
    v = 40000
    x, y = make_logits(1, v, torch.float32, seed=1)
    cases = []
    a = x.clone()
    a[:] = -math.inf  # an all -inf row: unchanged, NaN divergence
    cases.append((a, y))
    b = y.clone()
    b[0, 123] = math.nan
    cases.append((x, b))
    c = x.clone()
    c[0, 39999] = math.inf
    cases.append((c, y))
    for xi, yi in cases:
        out, st = _run(xi, yi, threads, check_nan=False)
        assert torch.equal(out.view(torch.int32), xi.view(torch.int32))
        assert st.k.item() == 0 and st.alpha.item() == 0 and math.isnan(st.divergence.item())


def test_zero_k_and_few_candidates_split():
    v = 49152
    x, y = make_logits(1, v, torch.float32, seed=2)
    out, st = _run(x, y, 4, k_min=0, k_max=0)
    assert torch.equal(out, x) and st.k.item() == 0
    # y = x + const except 5 tokens: exactly 5 candidates, fewer than k
    y2 = x + 0.5
    y2[0, [3, 9000, 20000, 30001, 49151]] += 4.0
    out, st = _run(x, y2, 4, k_min=100, k_max=100)
    assert st.k.item() == 5
    check_against_reference(out, st, x, y2, divergence="l2", k_min=100, k_max=100, k_rounding="ceil",
                            subtract="abs")
