"""The fast decoding loop (detox.generation.fast) against HuggingFace generate with our processors.

Greedy: the same tokens and the same per-step scores (float32 rounding) for every method, with
left-padded prompts of different lengths, EOS in the middle of the generation and min_new_tokens.
Sampling: the same first- and second-step token distributions (and the exact first-step one,
which a wrong warper order would not give). Structure: no host synchronisation in a decode step,
one forward per model per step. CUDA graphs: only where a GPU is present.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from transformers import LogitsProcessorList

import detox_kernels
from detox.generation import (
    ContrastiveDecodingLogitsProcessor,
    DExpertsLogitsProcessor,
    SoCDLogitsProcessor,
)
from detox.generation import fast as fastmod
from detox.generation.fast import FastDecoder, fast_decode, unsupported_reason
from detox.methods.unidetox import UniDetoxLogitsProcessor
from tests.test_generation import PROMPTS, full_logits, left_pad, tiny_llama

PAD = 0


@pytest.fixture(scope="module")
def models():
    return tiny_llama(0), tiny_llama(1), tiny_llama(2)


def procs(toxic, expert, mask):
    c = dict(attention_mask=mask, pad_token_id=PAD)
    return {
        "none": lambda: None,
        "socd": lambda: SoCDLogitsProcessor(toxic, **c),
        "socd-tvd": lambda: SoCDLogitsProcessor(toxic, divergence="tvd", k_min=3, **c),
        "cd-obrien": lambda: ContrastiveDecodingLogitsProcessor(toxic, **c),
        "cd-li": lambda: ContrastiveDecodingLogitsProcessor(toxic, form="li", **c),
        "dexperts": lambda: DExpertsLogitsProcessor(expert, toxic, **c),
        "dexperts-anti-only": lambda: DExpertsLogitsProcessor(None, toxic, **c),
        "unidetox": lambda: UniDetoxLogitsProcessor(toxic, **c),
    }


def hf(model, proc, ids, mask, **kw):
    return model.generate(input_ids=ids, attention_mask=mask,
                          logits_processor=LogitsProcessorList([proc]) if proc is not None else None,
                          output_scores=True, return_dict_in_generate=True, pad_token_id=PAD, **kw)


def fast(model, proc, ids, mask, **kw):
    d = FastDecoder(model, proc, pad_token_id=PAD, record_scores=True)
    return d.run(ids, mask, **kw), d


def assert_scores_close(hf_scores, fast_scores):
    assert len(hf_scores) == len(fast_scores)
    for a, b in zip(hf_scores, fast_scores):
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        fin = torch.isfinite(a)
        torch.testing.assert_close(a[fin], b[fin], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["none", "socd", "socd-tvd", "cd-obrien", "cd-li", "dexperts",
                                  "dexperts-anti-only", "unidetox"])
def test_greedy_same_tokens_and_scores(models, name):
    base, toxic, expert = models
    ids, mask = left_pad(PROMPTS)   # lengths 6, 2, 4: left padding and position ids matter
    make = procs(toxic, expert, mask)[name]
    r = hf(base, make(), ids, mask, do_sample=False, max_new_tokens=12)
    out, d = fast(base, make(), ids, mask, do_sample=False, max_new_tokens=12)
    assert torch.equal(r.sequences, out)
    assert_scores_close(r.scores, d.scores)


def _eos_mid_generation(base, ids, mask, proc):
    """A token that greedy decoding emits in the middle for one row (not at its first step)."""
    r = base.generate(input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]) if proc else None,
                      do_sample=False, max_new_tokens=12, pad_token_id=PAD)
    new = r[:, ids.shape[1]:]
    for col in range(3, 8):
        tok = int(new[0, col])
        if tok not in new[0, :col].tolist() and tok != PAD:
            return tok
    pytest.skip("no suitable mid-generation token")


@pytest.mark.parametrize("name", ["none", "socd", "cd-obrien", "dexperts"])
def test_eos_mid_generation_and_min_new_tokens(models, name):
    base, toxic, expert = models
    ids, mask = left_pad(PROMPTS)
    make = procs(toxic, expert, mask)[name]
    eos = _eos_mid_generation(base, ids, mask, make())
    old = base.generation_config.eos_token_id
    base.generation_config.eos_token_id = eos
    try:
        for min_new in (0, 6):
            r = hf(base, make(), ids, mask, do_sample=False, max_new_tokens=12, min_new_tokens=min_new)
            out, d = fast(base, make(), ids, mask, do_sample=False, max_new_tokens=12, min_new_tokens=min_new)
            assert torch.equal(r.sequences, out), (min_new, r.sequences, out)
            assert_scores_close(r.scores, d.scores)
            new = out[:, ids.shape[1]:]
            if min_new:
                assert not (new[:, :min_new] == eos).any()
            else:
                # the row that emitted EOS continues with the pad id
                row = new[0].tolist()
                assert eos in row and all(t == PAD for t in row[row.index(eos) + 1:])
    finally:
        base.generation_config.eos_token_id = old


def test_all_rows_finish_early_gives_generates_width(models):
    base, toxic, _ = models
    ids, mask = left_pad(PROMPTS)
    first = base.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=1, pad_token_id=PAD)
    old = base.generation_config.eos_token_id
    base.generation_config.eos_token_id = first[:, -1].tolist()   # every row ends at its first token
    try:
        r = hf(base, None, ids, mask, do_sample=False, max_new_tokens=20)
        out, _ = fast(base, None, ids, mask, do_sample=False, max_new_tokens=20)
        assert out.shape == r.sequences.shape == (3, ids.shape[1] + 1)
        assert torch.equal(out, r.sequences)
    finally:
        base.generation_config.eos_token_id = old


def test_num_return_sequences_rows_repeated_like_hf(models):
    base, toxic, _ = models
    ids, mask = left_pad(PROMPTS)
    out, _ = fast(base, SoCDLogitsProcessor(toxic, attention_mask=mask, pad_token_id=PAD), ids, mask,
                  do_sample=True, top_p=0.9, max_new_tokens=5, num_return_sequences=3, seed=1)
    assert out.shape == (9, ids.shape[1] + 5)
    assert torch.equal(out[:, :ids.shape[1]], ids.repeat_interleave(3, dim=0))
    # the samples of one prompt differ (independent draws per row)
    assert len({tuple(r) for r in out[:3, ids.shape[1]:].tolist()}) > 1


# -- sampling: the same distribution ------------------------------------------------------------
def _warp64(scores, temperature, top_k, top_p):
    """HF's order in float64: temperature, top-k, top-p (smallest set with mass >= top_p)."""
    x = scores.double() / temperature
    if top_k:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, -math.inf)
    p = torch.softmax(x, -1)
    sp, idx = torch.sort(p, descending=True, dim=-1)
    before = sp.cumsum(-1) - sp
    keep_sorted = before < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
    x = x.masked_fill(~keep, -math.inf)
    return torch.softmax(x, -1)


def _tv(p, q):
    return 0.5 * (p - q).abs().sum().item()


def _freq(tokens, vocab):
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


@pytest.mark.parametrize("name", ["none", "socd"])
def test_sampling_same_distribution_and_warper_order(models, name):
    base, toxic, expert = models
    prompt = [[5, 17, 33, 8]]
    ids, mask = left_pad(prompt)
    n, temperature, top_k, top_p = 6000, 1.8, 30, 0.6
    kw = dict(do_sample=True, max_new_tokens=2, temperature=temperature, top_k=top_k, top_p=top_p,
              num_return_sequences=n)
    make = procs(toxic, expert, mask)[name]
    out, _ = fast(base, make(), ids, mask, seed=3, **kw)
    torch.manual_seed(3)
    ref = hf(base, make(), ids, mask, **kw).sequences
    vocab = base.config.vocab_size
    L = ids.shape[1]
    # the exact first-step distribution
    x = full_logits(base, ids, mask)
    p = make()
    s = x if p is None else p.combine(x, [full_logits(toxic, ids, mask)])
    exact = _warp64(s, temperature, top_k, top_p)[0]
    wrong = torch.softmax(_warp64(s, 1.0, top_k, top_p).log() / temperature, -1)[0]   # temperature last
    assert _tv(exact, wrong) > 0.15   # the test can tell the orders apart
    f_fast, f_hf = _freq(out[:, L], vocab), _freq(ref[:, L], vocab)
    assert _tv(f_fast, exact) < 0.05, _tv(f_fast, exact)
    assert _tv(f_hf, exact) < 0.05
    assert _tv(f_fast, wrong) > 0.1
    assert ((f_fast > 0) <= (exact > 0)).all()   # never a token outside the top-k/top-p set
    # the second step: both paths' marginals agree
    assert _tv(_freq(out[:, L + 1], vocab), _freq(ref[:, L + 1], vocab)) < 0.08


def test_seeded_sampling_reproducible(models):
    base, toxic, _ = models
    ids, mask = left_pad(PROMPTS)
    a, _ = fast(base, None, ids, mask, do_sample=True, max_new_tokens=6, top_p=0.9, seed=5)
    b, _ = fast(base, None, ids, mask, do_sample=True, max_new_tokens=6, top_p=0.9, seed=5)
    c, _ = fast(base, None, ids, mask, do_sample=True, max_new_tokens=6, top_p=0.9, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- structure: no host synchronisation in a step; one forward per model per step ----------------
def test_decode_step_has_no_host_sync(models, monkeypatch):
    base, toxic, expert = models
    ids, mask = left_pad(PROMPTS)
    calls = {"sync": 0, "in_step": False}
    for meth in ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"):
        orig = getattr(torch.Tensor, meth)

        def wrapped(self, *a, _orig=orig, **k):
            if calls["in_step"]:
                calls["sync"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, meth, wrapped)
    orig_step = FastDecoder._decode_step

    def counted(self):
        calls["in_step"] = True
        try:
            orig_step(self)
        finally:
            calls["in_step"] = False

    monkeypatch.setattr(FastDecoder, "_decode_step", counted)
    d = FastDecoder(base, DExpertsLogitsProcessor(expert, toxic, attention_mask=mask, pad_token_id=PAD),
                    pad_token_id=PAD)
    d.run(ids, mask, do_sample=True, top_p=0.9, top_k=20, max_new_tokens=7, min_new_tokens=3)
    assert calls["sync"] == 0
    assert d.forward_calls == 3 * 7   # base, expert, anti-expert: prompt + 6 steps


def test_no_per_step_cat_of_caches_masks_or_ids(models, monkeypatch):
    """The only ``torch.cat`` calls left are the model's own (rotary embedding inside its forward):
    none from the loop, the processors or the KV cache (a DynamicCache concatenates every step)."""
    import sys

    base, toxic, _ = models
    ids, mask = left_pad(PROMPTS)
    callers = []
    orig = torch.cat

    def counting_cat(*a, **k):
        callers.append(os.path.basename(sys._getframe(1).f_code.co_filename))
        return orig(*a, **k)

    monkeypatch.setattr(torch, "cat", counting_cat)
    FastDecoder(base, SoCDLogitsProcessor(toxic, attention_mask=mask, pad_token_id=PAD), pad_token_id=PAD).run(
        ids, mask, do_sample=False, max_new_tokens=8)
    assert callers and set(callers) <= {"modeling_llama.py"}, set(callers)
    # the HF path does concatenate caches and masks (what the check would catch)
    callers.clear()
    hf(base, SoCDLogitsProcessor(toxic, attention_mask=mask, pad_token_id=PAD), ids, mask, do_sample=False,
       max_new_tokens=8)
    assert set(callers) - {"modeling_llama.py"}


# -- when the fast path is (not) used -------------------------------------------------------------
def test_unsupported_configs_go_to_generate(models):
    base, toxic, _ = models
    ids, mask = left_pad(PROMPTS)
    assert unsupported_reason(base, None) is None
    old = base.generation_config.repetition_penalty
    base.generation_config.repetition_penalty = 1.3
    try:
        assert "repetition_penalty" in unsupported_reason(base, None)
        assert fast_decode(base, None, ids, mask, dict(do_sample=False, max_new_tokens=3)) is None
    finally:
        base.generation_config.repetition_penalty = old

    from transformers import LogitsProcessor

    class Mine(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores

    assert "combine" in unsupported_reason(base, Mine())

    class Tweaked(SoCDLogitsProcessor):   # changes __call__ only: the fast loop would skip that
        def __call__(self, input_ids, scores):
            return super().__call__(input_ids, scores) * 2

    assert "overrides __call__" in unsupported_reason(base, Tweaked(toxic, attention_mask=mask, pad_token_id=PAD))
    assert unsupported_reason(base, SoCDLogitsProcessor(toxic, attention_mask=mask, pad_token_id=PAD)) is None
    assert unsupported_reason(base, UniDetoxLogitsProcessor(toxic, attention_mask=mask, pad_token_id=PAD)) is None
    # generate's own refusal (greedy with several return sequences) stays generate's
    assert fast_decode(base, None, ids, mask, dict(do_sample=False, max_new_tokens=3, num_return_sequences=2)) is None


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from tests.tiny_models import tiny_llama_dir

    d = tmp_path_factory.mktemp("fast")
    return tiny_llama_dir(str(d / "base"), 0), tiny_llama_dir(str(d / "toxic"), 1)


@pytest.mark.parametrize("method", ["none", "socd", "cd", "dexperts", "unidetox"])
def test_generator_fast_equals_hf(tiny_dirs, method):
    from detox.generation.driver import Generator

    base, toxic = tiny_dirs
    prompts = ["the a of", "you are such a stupid", "kill"]
    tm = toxic if method != "none" else None
    fast_g = Generator(method, model=base, toxic_model=tm)
    hf_g = Generator(method, model=base, toxic_model=tm, decode="hf")
    calls = []
    orig = fastmod.FastDecoder.run
    fastmod.FastDecoder.run = lambda self, *a, **k: calls.append(1) or orig(self, *a, **k)
    try:
        a = fast_g.generate_batch(prompts, do_sample=False, max_new_tokens=8)
        assert calls, "the fast path was not used"
        n = len(calls)
        b = hf_g.generate_batch(prompts, do_sample=False, max_new_tokens=8)
        assert len(calls) == n, "decode='hf' used the fast path"
    finally:
        fastmod.FastDecoder.run = orig
    assert a == b
    # sampling with several samples runs and gives num_samples texts per prompt
    r = fast_g.generate_batch(prompts, num_samples=3, max_new_tokens=5, seed=2)
    assert [len(x) for x in r] == [3, 3, 3]


def test_generator_rejects_bad_decode(tiny_dirs):
    from detox.errors import UserError
    from detox.generation.driver import Generator

    with pytest.raises(UserError, match="decode must be one of fast, hf"):
        Generator("none", model=tiny_dirs[0], decode="quick")


def test_reversal_keeps_generate(tiny_dirs):
    from detox.methods.reversal import Reversal

    assert Reversal.fast_decoding is False


# -- the embedded model (real logits) -----------------------------------------------------------
def _embedded_toxic_ready():
    """The embedded toxic model's directory where it has been made (never trains one here)."""
    from detox.toxic import resolve_toxic_model

    try:
        return resolve_toxic_model(None, make_if_missing=False)
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("name", ["none", "socd", "dexperts"])
def test_embedded_model_greedy_same_tokens(name):
    from detox.models import load_causal_lm

    model, tok = load_causal_lm("smollm2-135m-instruct")
    toxic_path = _embedded_toxic_ready()
    if name != "none" and toxic_path is None:
        pytest.skip("the embedded toxic model is not made yet")
    toxic = load_causal_lm(toxic_path)[0] if name != "none" else None
    enc = tok(["The city council met on Tuesday to discuss", "You are such a"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    pad = tok.pad_token_id

    def make():
        c = dict(attention_mask=mask, pad_token_id=pad)
        return {"none": None, "socd": SoCDLogitsProcessor(toxic, **c) if toxic is not None else None,
                "dexperts": DExpertsLogitsProcessor(None, toxic, **c) if toxic is not None else None}[name]

    with torch.inference_mode():
        r = model.generate(input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([make()])
                           if name != "none" else None, do_sample=False, max_new_tokens=10, pad_token_id=pad,
                           output_scores=True, output_logits=True, return_dict_in_generate=True)
    d = FastDecoder(model, make(), pad_token_id=pad, record_scores=True)
    out = d.run(ids, mask, do_sample=False, max_new_tokens=10)
    assert torch.equal(r.sequences, out)
    for a, b in zip(r.logits, d.raw):   # the model's logits: float32 rounding of each other
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-4)
    for a, b in zip(r.scores, d.scores):
        # the method's scores: the same, except where rounding moves a token across SoCD's
        # selection boundary (a token at the k-th place), which a handful of entries may do
        fin = torch.isfinite(a) & torch.isfinite(b)
        assert (torch.isfinite(a) != torch.isfinite(b)).sum() <= 4
        close = torch.isclose(a[fin], b[fin], rtol=1e-4, atol=2e-4)
        assert (~close).sum() <= 4, (~close).sum()


# -- CUDA graphs: only on a GPU -------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_same_tokens(models):
    base, toxic, expert = (m.cuda() for m in models)
    ids, mask = (t.cuda() for t in left_pad(PROMPTS))
    for name in ("none", "socd", "dexperts"):
        make = procs(toxic, expert, mask)[name]
        eager = FastDecoder(base, make(), pad_token_id=PAD, graphs=False).run(ids, mask, do_sample=False,
                                                                              max_new_tokens=10)
        with _no_warning():
            graphed = FastDecoder(base, make(), pad_token_id=PAD, graphs=True).run(ids, mask, do_sample=False,
                                                                                   max_new_tokens=10)
        assert torch.equal(eager, graphed)
        a = FastDecoder(base, make(), pad_token_id=PAD, graphs=True).run(ids, mask, do_sample=True, top_p=0.9,
                                                                         max_new_tokens=10, seed=4)
        b = FastDecoder(base, make(), pad_token_id=PAD, graphs=False).run(ids, mask, do_sample=True, top_p=0.9,
                                                                          max_new_tokens=10, seed=4)
        assert a.shape == b.shape


class _no_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *a):
        return self._cm.__exit__(*a)


def test_fused_sampler_is_used(monkeypatch, models):
    """The loop samples with the fused op, with float32 uniforms from its generator."""
    base, _, _ = models
    ids, mask = left_pad(PROMPTS)
    seen = []

    def fake(logits, uniform, *, top_k, top_p, temperature, backend=None):
        seen.append((tuple(logits.shape), uniform.dtype, top_k, top_p, temperature))
        return logits.argmax(-1)

    monkeypatch.setattr(detox_kernels, "sample_top_k_top_p", fake)
    FastDecoder(base, None, pad_token_id=PAD).run(ids, mask, do_sample=True, top_k=7, top_p=0.8, temperature=0.9,
                                                   max_new_tokens=3)
    assert seen == [((3, base.config.vocab_size), torch.float32, 7, 0.8, 0.9)] * 3
