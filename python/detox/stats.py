"""Bootstrap confidence intervals over prompts for the harness's metrics (``docs/harness.md``).

The unit that is resampled is the prompt: a prompt's N continuations (and, with several seeds,
its continuations under every seed) stay together, because they are not independent of each
other. Every metric here is a ratio of sums over prompts, ``f(Σ_i num[s, i] / Σ_i den[s, i])``
averaged over the seeds ``s``:

- EMT: ``num`` = the prompt's maximum score, ``den`` = 1;
- TP (any of N): ``num`` = 1 if some continuation is above the threshold, ``den`` = 1;
- toxic rate: ``num`` = continuations above the threshold, ``den`` = N;
- PPL, token-weighted: ``num`` = the prompt's summed NLL, ``den`` = its tokens, ``f = exp``;
- PPL, per-sample mean: ``num`` = the sum of the kept samples' perplexities, ``den`` = their count.

A resample draws P prompts with replacement; it is a vector of counts ``w`` (how often each prompt
was drawn), so that a resampled sum is ``num @ w``: all resamples at once are one matrix product.
``bootstrap_ci`` gives the percentile interval of one method; ``paired_bootstrap`` applies the
same resamples to two methods evaluated on the same prompts and gives the interval of their
difference and a two-sided p-value, ``(2 · min(#{d* <= 0}, #{d* >= 0}) + 1) / (R + 1)`` capped at 1
(twice the share of resampled differences on the far side of zero; ``+1`` keeps it above zero for
a finite R).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METRICS = ("emt", "tp", "tp_rate", "ppl")


@dataclass
class PromptValues:
    """One metric of one method: ``num`` and ``den`` are ``[seeds, prompts]``; ``f`` maps the
    ratio of sums to the metric (``"id"`` or ``"exp"``)."""

    num: np.ndarray
    den: np.ndarray
    f: str = "id"

    def value(self, weights: np.ndarray) -> np.ndarray:
        """The metric under each resample: ``weights`` is ``[R, prompts]``; returns ``[R]`` (mean
        over seeds; NaN where a resample has no denominator)."""
        n = self.num @ weights.T  # [S, R]
        d = self.den @ weights.T
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(d > 0, n / np.where(d > 0, d, 1.0), np.nan)
        if self.f == "exp":
            r = np.exp(r)
        return r.mean(axis=0)


def prompt_values(scores: list[list[float]], nll: list[tuple[float, int]] | None = None, *,
                  threshold: float = 0.5, strict: bool = True, ppl_variant: str = "token",
                  max_ppl: float = 1e4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-prompt numerators and denominators of every metric for one seed. ``scores[i][j]``: the
    score of continuation j of prompt i; ``nll``: (summed NLL, tokens) per continuation, in the same
    order flattened (the PPL rule of :func:`detox.metrics.perplexity_from_nll`: samples without
    tokens do not count, samples with PPL >= ``max_ppl`` are dropped)."""
    s = np.asarray(scores, dtype=np.float64)  # [P, N]
    if s.ndim != 2 or s.size == 0:
        raise ValueError("scores must be a non-empty [prompts][samples] list with the same N for every prompt")
    above = s > threshold if strict else s >= threshold
    ones = np.ones(s.shape[0])
    out = {"emt": (s.max(axis=1), ones), "tp": (above.any(axis=1).astype(np.float64), ones),
           "tp_rate": (above.sum(axis=1).astype(np.float64), np.full(s.shape[0], float(s.shape[1])))}
    if nll is not None:
        a = np.asarray(nll, dtype=np.float64).reshape(s.shape[0], s.shape[1], 2)
        tot, tok = a[..., 0], a[..., 1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            per = np.where(tok > 0, np.exp(tot / np.where(tok > 0, tok, 1.0)), np.inf)
        kept = (tok > 0) & (per < max_ppl)
        if ppl_variant == "token":
            out["ppl"] = ((tot * kept).sum(axis=1), (tok * kept).sum(axis=1))
        elif ppl_variant == "sample":
            out["ppl"] = (np.where(kept, per, 0.0).sum(axis=1), kept.sum(axis=1).astype(np.float64))
        else:
            raise ValueError(f"ppl_variant must be 'token' or 'sample', got {ppl_variant!r}")
    return out


def stack_seeds(per_seed: list[dict], ppl_variant: str = "token") -> dict[str, PromptValues]:
    """The per-seed dicts of :func:`prompt_values` (same prompts) as one ``PromptValues`` per metric."""
    out = {}
    for k in per_seed[0]:
        num = np.stack([d[k][0] for d in per_seed])
        den = np.stack([d[k][1] for d in per_seed])
        out[k] = PromptValues(num, den, "exp" if (k == "ppl" and ppl_variant == "token") else "id")
    return out


def resample_weights(n_prompts: int, resamples: int, seed=0) -> np.ndarray:
    """``[resamples, n_prompts]`` counts: row r says how often each prompt was drawn in resample r
    (``seed``: an int or a ``numpy.random.Generator`` to draw from)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    idx = rng.integers(0, n_prompts, size=(resamples, n_prompts))
    flat = (idx + n_prompts * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * n_prompts).reshape(resamples, n_prompts).astype(np.float64)


def _percentiles(x: np.ndarray, level: float) -> tuple[float, float]:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    lo, hi = np.quantile(x, [a, 1 - a])
    return float(lo), float(hi)


def _chunks(n_prompts, resamples, seed, chunk):
    """The resamples in blocks of at most ``chunk`` rows (memory: chunk x prompts floats), drawn
    from one seeded stream."""
    rng = np.random.default_rng(seed)
    for s in range(0, resamples, chunk):
        yield resample_weights(n_prompts, min(chunk, resamples - s), rng)


def resampled(values: list[PromptValues], *, resamples: int = 1000, seed: int = 0, chunk: int = 256
              ) -> list[np.ndarray]:
    """Every metric of ``values`` (same prompts) under the same ``resamples`` resamples: one
    ``[resamples]`` array each; the resamples are drawn once for all of them."""
    p = values[0].num.shape[1]
    for v in values:
        if v.num.shape[1] != p:
            raise ValueError(f"paired bootstrap needs the same prompts: {p} against {v.num.shape[1]}")
    out = [[] for _ in values]
    for w in _chunks(p, resamples, seed, chunk):
        for o, v in zip(out, values):
            o.append(v.value(w))
    return [np.concatenate(o) for o in out]


def _interval(values: PromptValues, boot: np.ndarray, level: float) -> dict:
    est = float(values.value(np.ones((1, values.num.shape[1])))[0])
    lo, hi = _percentiles(boot, level)
    return {"estimate": est, "low": lo, "high": hi}


def _paired(a: PromptValues, b: PromptValues, boot_a: np.ndarray, boot_b: np.ndarray, level: float) -> dict:
    one = np.ones((1, a.num.shape[1]))
    est = float(a.value(one)[0] - b.value(one)[0])
    d = boot_a - boot_b
    lo, hi = _percentiles(d, level)
    d = d[~np.isnan(d)]
    if d.size == 0:
        pv = math.nan
    else:
        pv = min(1.0, (2 * min(int((d <= 0).sum()), int((d >= 0).sum())) + 1) / (d.size + 1))
    return {"difference": est, "low": lo, "high": hi, "p_value": pv}


def bootstrap_ci(values: PromptValues, *, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The metric on all prompts and its percentile bootstrap interval over prompts."""
    return _interval(values, resampled([values], resamples=resamples, seed=seed)[0], level)


def paired_bootstrap(a: PromptValues, b: PromptValues, *, resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict:
    """``a - b`` on the same prompts: the difference on all prompts, its percentile interval under
    the same resamples of prompts for both, and a two-sided bootstrap p-value for "no difference"."""
    ba, bb = resampled([a, b], resamples=resamples, seed=seed)
    return _paired(a, b, ba, bb, level)


def report(per_prompt: dict[str, list[dict]], *, ppl_variant: str = "token", baseline: str = "none",
           resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """``per_prompt[method]``: one :func:`prompt_values` dict per seed. Returns the intervals of
    every method and metric and, when ``baseline`` was run, every method's paired difference to it."""
    stacked = {m: stack_seeds(v, ppl_variant) for m, v in per_prompt.items()}
    out = {"resamples": resamples, "level": level, "seed": seed, "unit": "prompt", "baseline": None,
           "intervals": {}, "paired": {}}
    keys = [(m, k) for m, vals in stacked.items() for k in vals]
    boots = dict(zip(keys, resampled([stacked[m][k] for m, k in keys], resamples=resamples, seed=seed)))
    for m, vals in stacked.items():
        out["intervals"][m] = {k: _interval(v, boots[m, k], level) for k, v in vals.items()}
    if baseline in stacked:
        out["baseline"] = baseline
        for m, vals in stacked.items():
            if m == baseline:
                continue
            out["paired"][m] = {k: _paired(v, stacked[baseline][k], boots[m, k], boots[baseline, k], level)
                                for k, v in vals.items() if k in stacked[baseline]}
    return out
