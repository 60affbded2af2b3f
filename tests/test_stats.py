"""Bootstrap intervals over prompts (detox.stats) on cases that can be checked by hand, against an
explicit resampling loop, and against the harness's own metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detox import metrics as M
from detox import stats as S


def _vals(scores, nll=None, **kw):
    return S.stack_seeds([S.prompt_values(scores, nll, **kw)], kw.get("ppl_variant", "token"))


def test_a_constant_sample_has_a_zero_width_interval():
    scores = [[0.2, 0.7, 0.1]] * 20  # every prompt the same: every resample gives the same metrics
    v = _vals(scores)
    for k, want in (("emt", 0.7), ("tp", 1.0), ("tp_rate", 1 / 3)):
        ci = S.bootstrap_ci(v[k], resamples=300)
        assert ci["estimate"] == pytest.approx(want)
        assert ci["low"] == pytest.approx(want) and ci["high"] == pytest.approx(want)


def test_a_paired_shift_gives_the_shift_with_a_zero_width_interval():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.0, 0.5, size=(40, 5))
    shifted = base + 0.25  # every continuation 0.25 more toxic: every prompt's max moves by 0.25
    a, b = _vals(shifted.tolist())["emt"], _vals(base.tolist())["emt"]
    d = S.paired_bootstrap(a, b, resamples=999)
    assert d["difference"] == pytest.approx(0.25)
    assert d["low"] == pytest.approx(0.25) and d["high"] == pytest.approx(0.25)
    assert d["p_value"] == pytest.approx(1 / 1000)  # (2 * 0 + 1) / (999 + 1): no resample on the far side of zero
    same = S.paired_bootstrap(b, b, resamples=999)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0 and same["p_value"] == 1.0


def test_the_estimates_are_the_harness_metrics():
    rng = np.random.default_rng(2)
    scores = rng.uniform(size=(13, 4)).tolist()
    nll = [(float(rng.uniform(0.5, 40)), int(rng.integers(0, 6))) for _ in range(13 * 4)]
    nll[3] = (100.0, 1)  # PPL e^100: dropped by both
    for variant in ("token", "sample"):
        v = _vals(scores, nll, threshold=0.6, strict=False, ppl_variant=variant)
        one = np.ones((1, 13))
        assert v["emt"].value(one)[0] == pytest.approx(M.emt(scores))
        assert v["tp"].value(one)[0] == pytest.approx(M.toxicity_probability(scores, threshold=0.6, strict=False))
        assert v["tp_rate"].value(one)[0] == pytest.approx(
            M.toxicity_probability(scores, threshold=0.6, strict=False, variant="rate"))
        assert v["ppl"].value(one)[0] == pytest.approx(M.perplexity_from_nll(nll, variant=variant).value)


def test_resampled_values_match_an_explicit_resampling_loop():
    rng = np.random.default_rng(3)
    P = 17
    scores = [rng.uniform(size=3).tolist() for _ in range(P)]
    nll = [(float(rng.uniform(1, 20)), int(rng.integers(1, 5))) for _ in range(P * 3)]
    v = _vals(scores, nll)
    idx = np.random.default_rng(7).integers(0, P, size=(25, P))
    w = np.stack([np.bincount(row, minlength=P) for row in idx]).astype(float)
    emt, ppl = v["emt"].value(w), v["ppl"].value(w)
    for r, row in enumerate(idx):
        sub = [scores[i] for i in row]
        sub_nll = [nll[i * 3 + j] for i in row for j in range(3)]
        assert emt[r] == pytest.approx(M.emt(sub))
        assert ppl[r] == pytest.approx(M.perplexity_from_nll(sub_nll).value)


def test_the_interval_has_the_width_of_the_standard_error():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=(800, 1))  # EMT of one sample per prompt = the mean of x
    ci = S.bootstrap_ci(_vals(x.tolist())["emt"], resamples=2000, seed=5)
    half = (ci["high"] - ci["low"]) / 2
    assert half == pytest.approx(1.96 * x.std(ddof=1) / math.sqrt(len(x)), rel=0.12)
    assert ci["low"] < x.mean() < ci["high"]


def test_seeds_average_and_resample_the_same_prompts():
    s0 = [[0.1, 0.9], [0.2, 0.3], [0.6, 0.4]]
    s1 = [[0.5, 0.5], [0.0, 0.1], [0.7, 0.2]]
    n0 = [(2.0, 2), (3.0, 1), (1.0, 1), (4.0, 2), (2.0, 1), (6.0, 3)]
    n1 = [(1.0, 1), (2.0, 2), (3.0, 3), (1.0, 2), (5.0, 5), (2.0, 1)]
    v = S.stack_seeds([S.prompt_values(s0, n0), S.prompt_values(s1, n1)])
    est = S.bootstrap_ci(v["ppl"], resamples=50)["estimate"]
    want = (M.perplexity_from_nll(n0).value + M.perplexity_from_nll(n1).value) / 2  # mean over seeds
    assert est == pytest.approx(want)
    assert S.bootstrap_ci(v["emt"], resamples=50)["estimate"] == pytest.approx((M.emt(s0) + M.emt(s1)) / 2)


def test_report_covers_every_method_and_pairs_with_none():
    a = [[0.1, 0.2], [0.3, 0.9], [0.5, 0.6], [0.05, 0.1]]
    b = [[0.0, 0.1], [0.2, 0.3], [0.4, 0.1], [0.05, 0.0]]
    nll = [(2.0, 2)] * 8
    rep = S.report({"none": [S.prompt_values(a, nll)], "x": [S.prompt_values(b, nll)]}, resamples=200)
    assert rep["baseline"] == "none" and set(rep["intervals"]) == {"none", "x"} and set(rep["paired"]) == {"x"}
    for k in S.METRICS:
        iv = rep["intervals"]["x"][k]
        assert iv["low"] <= iv["estimate"] <= iv["high"]
    assert rep["paired"]["x"]["emt"]["difference"] == pytest.approx(M.emt(b) - M.emt(a))
    assert rep["paired"]["x"]["ppl"]["difference"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same prompts"):
        S.paired_bootstrap(_vals(a)["emt"], _vals(a[:3])["emt"])
    assert S.report({"x": [S.prompt_values(b, nll)]}, resamples=10)["paired"] == {}  # no baseline run
