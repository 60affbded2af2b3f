"""Current HuggingFace conventions: no deprecation warnings from transformers on a normal run, and
processors that leave generate's raw logits alone.

A deprecation shows up two ways in transformers 5.x: ``warnings.warn(..., FutureWarning)`` from
``deprecate_kwarg`` (e.g. ``past_key_values=`` passed to a forward) and a ``logger.warning_once``
(e.g. reading ``output.past_key_values``). The first is turned into an error; the second is
captured from the ``transformers`` logger, with ``warning_once``'s memo cleared first so that a
message emitted earlier in the session is emitted (and seen) again.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import pytest
import torch
from transformers import LogitsProcessorList

from detox.generation import AuxiliaryLM, SoCDLogitsProcessor
from test_generation import (
    PAD,
    PROMPTS,
    full_logits,
    left_pad,
    make_processor,
    tiny_llama,
)

KINDS = ["socd", "cd-obrien", "cd-li", "dexperts", "unidetox"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def no_deprecations():
    """Deprecation/Future warnings raise; transformers' logged warnings are collected and must be none."""
    memo = getattr(logging.Logger.warning_once, "cache_clear", None)
    if memo is not None:
        memo()  # a warning_once already emitted in this session would otherwise stay silent
    rec = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(rec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", PendingDeprecationWarning)
            yield rec
    finally:
        logger.removeHandler(rec)
    assert rec.messages == [], rec.messages


def test_the_guard_catches_both_kinds_of_deprecation():
    """The checker itself fails on the two forms transformers uses (so the tests below can fail)."""
    base = tiny_llama(0)
    ids, mask = left_pad(PROMPTS)
    with pytest.raises(FutureWarning, match="past_key_values"):
        with no_deprecations():
            base(input_ids=ids, attention_mask=mask, past_key_values=None, use_cache=True)
    out = base(input_ids=ids, attention_mask=mask, use_cache=True)
    with pytest.raises(AssertionError, match="deprecated"):
        with no_deprecations():
            out.past_key_values


@pytest.fixture(scope="module")
def models():
    return tiny_llama(0), tiny_llama(1), tiny_llama(2)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("do_sample", [False, True])
def test_processors_emit_no_deprecation_warning(models, kind, do_sample):
    ids, mask = left_pad(PROMPTS)
    proc, _, _ = make_processor(kind, models, mask)
    with no_deprecations():
        out = models[0].generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4,
                                 logits_processor=LogitsProcessorList([proc]), pad_token_id=PAD,
                                 do_sample=do_sample, top_p=1.0)
    assert out.shape == (3, ids.shape[1] + 4)


@torch.no_grad()
def _per_step_logits(model, seq, mask, prompt_len, steps):
    """The model's own next-token logits at each step of a generated sequence (a plain forward)."""
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=seq, attention_mask=mask, position_ids=pos).logits.float()
    return [logits[:, prompt_len - 1 + s] for s in range(steps)]


@pytest.mark.parametrize("kind", KINDS)
def test_raw_logits_are_the_models_own_and_scores_the_processed_ones(models, kind):
    steps = 4
    ids, mask = left_pad(PROMPTS)
    proc, aux, rule = make_processor(kind, models, mask)
    # no min_new_tokens: its processor would run first and hand the processors a copy of the logits
    out = models[0].generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps,
                             logits_processor=LogitsProcessorList([proc]), pad_token_id=PAD, do_sample=False,
                             top_p=1.0, output_logits=True, output_scores=True, return_dict_in_generate=True)
    seq = out.sequences
    full_mask = torch.cat([mask, torch.ones(seq.shape[0], steps, dtype=mask.dtype)], 1)
    lp = ids.shape[1]
    x = _per_step_logits(models[0], seq, full_mask, lp, steps)
    ys = [_per_step_logits(m, seq, full_mask, lp, steps) for m in aux]
    assert len(out.logits) == len(out.scores) == steps
    for s in range(steps):
        torch.testing.assert_close(out.logits[s], x[s], atol=1e-5, rtol=1e-5, msg=lambda m, s=s: f"raw logits, step {s}: {m}")
        want = rule(x[s], [y[s] for y in ys])
        torch.testing.assert_close(out.scores[s], want, atol=1e-4, rtol=1e-4, msg=lambda m, s=s: f"scores, step {s}: {m}")
        # the processors changed the scores, not the raw logits
        assert not torch.equal(out.scores[s], out.logits[s])
    # the recorded tensors are distinct objects (nothing written later over an earlier step)
    assert len({t.data_ptr() for t in out.scores}) == steps


def test_socd_leaves_its_input_unchanged(models):
    ids, mask = left_pad(PROMPTS)
    proc = SoCDLogitsProcessor(models[1], attention_mask=mask)
    scores = full_logits(models[0], ids, mask)
    before = scores.clone()
    new = proc(ids, scores)
    assert torch.equal(scores, before)
    assert not torch.equal(new, before)
    assert new.data_ptr() != scores.data_ptr()


def test_auxiliaries_accessor(models):
    base, tox, expert = models
    ids, mask = left_pad(PROMPTS)
    for kind in ["socd", "cd-obrien", "unidetox"]:
        proc, _, _ = make_processor(kind, models, mask)
        (a,) = proc.auxiliaries
        assert isinstance(a, AuxiliaryLM) and a.model is tox
    proc, _, _ = make_processor("dexperts", models, mask)
    assert [a.model for a in proc.auxiliaries] == [expert, tox]
    from detox.generation import DExpertsLogitsProcessor

    anti_only = DExpertsLogitsProcessor(None, tox, attention_mask=mask)
    assert [a.model for a in anti_only.auxiliaries] == [tox]


@pytest.mark.parametrize("kind", ["socd", "dexperts"])
def test_primed_auxiliary_equals_unprimed(models, kind):
    """``prime(cache, mask)`` with a cache over all prompt positions but the last gives the same
    generation (and scores) as letting the processor prefill the prompt itself."""
    from detox.generation.processors import cache_keyword, model_cache

    steps = 5
    ids, mask = left_pad(PROMPTS)
    plain_proc, _, _ = make_processor(kind, models, mask)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps, pad_token_id=PAD,
              do_sample=False, top_p=1.0, output_scores=True, return_dict_in_generate=True)
    plain = models[0].generate(logits_processor=LogitsProcessorList([plain_proc]), **kw)
    proc, _, _ = make_processor(kind, models, mask)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with no_deprecations():
        for a in proc.auxiliaries:
            with torch.no_grad():
                out = a.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                              use_cache=True, **{cache_keyword(a.model): None})
            a.prime(model_cache(out), mask)
        primed = models[0].generate(logits_processor=LogitsProcessorList([proc]), **kw)
    assert torch.equal(primed.sequences, plain.sequences)
    for s in range(steps):
        torch.testing.assert_close(primed.scores[s], plain.scores[s], atol=1e-5, rtol=1e-5)


def test_prime_rejects_a_cache_of_the_wrong_length(models):
    from detox.generation.processors import cache_keyword, model_cache

    ids, mask = left_pad(PROMPTS)
    tox = models[1]
    with torch.no_grad():
        out = tox(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_keyword(tox): None})
    a = AuxiliaryLM(tox, mask)
    with pytest.raises(ValueError, match="all prompt positions but the last"):
        a.prime(model_cache(out), mask)  # covers the last position too


# ------------------------------------------------- the other generation paths, on tiny saved models

from tiny_models import tiny_llama_dir, tiny_tokenizer  # noqa: E402

TEXTS = ["you are such a stupid", "the kind people of the water", "hate"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfconv")
    return tiny_llama_dir(str(root / "base"), 0), tiny_llama_dir(str(root / "toxic"), 1)


@pytest.mark.parametrize("method", ["none", "socd", "cd", "dexperts", "unidetox", "reversal"])
def test_driver_methods_emit_no_deprecation_warning(tiny_dirs, method):
    """(CMD needs stop strings, which the tiny word-level tokenizer cannot do: see the SmolLM2 test.)"""
    from detox.generation.driver import Generator

    gen = Generator(method, model=tiny_dirs[0], toxic_model=tiny_dirs[1])
    for do_sample, n in ((False, 1), (True, 2)):
        with no_deprecations():
            res = gen.generate_batch(TEXTS, num_samples=n, max_new_tokens=3, seed=0, do_sample=do_sample)
        assert len(res) == 3 and all(len(r) == n for r in res)


def test_sasa_decoder_emits_no_deprecation_warning(tiny_dirs):
    from transformers import AutoModelForCausalLM

    from bench.sasa_one_at_a_time import sasa_generate_one_at_a_time
    from detox.generation.sasa import SASADecoder

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[0]).eval()
    enc = tiny_tokenizer()(TEXTS, return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(0)
    w, m = torch.randn(32, generator=g), torch.randn(32, generator=g) * 0.1
    with no_deprecations():
        dec = SASADecoder(model, w / w.norm(), m, max_candidates=8)
        torch.manual_seed(0)
        out = dec.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=4, do_sample=True, pad_token_id=0)
        one = sasa_generate_one_at_a_time(model, enc["input_ids"], enc["attention_mask"], w / w.norm(), m,
                                          max_candidates=8, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape[0] == 3 and one.shape == (3, 4)


def test_reversal_emits_no_deprecation_warning_and_reads_the_cache(tiny_dirs):
    """Inside generate the model's forward gets the cache as ``cache`` (transformers 5.x): the read
    pass must see it (else every step would be taken for a prefill and the logits would differ
    from the step-by-step computation of test_reversal_generation)."""
    from transformers import AutoModelForCausalLM

    from detox.generation.reversal import ToxificationReversal

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs[0]).eval()
    tok = tiny_tokenizer()
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    rev = ToxificationReversal(model, tok, neg_prefix="idiot stupid hate", pos_prefix="nice kind", backend="cpu")
    prefills = []
    read = rev._read

    def spy(input_ids, mask, prefill):
        prefills.append(prefill)
        return read(input_ids, mask, prefill)

    rev._read = spy
    with no_deprecations():
        with rev.active(), torch.no_grad():
            model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert prefills == [True, False, False, False]


@pytest.mark.parametrize("mode", ["prompt", "cd", "socd"])
def test_rewrite_pipeline_emits_no_deprecation_warning(tiny_dirs, tmp_path, mode):
    """Shared prefill (the base cache passed to generate, the toxic processor primed) included."""
    import json

    from detox.rewrite.pipeline import RewriteConfig, Rewriter

    template = tmp_path / "short.json"  # the few-shot template is longer than the tiny models' context
    template.write_text(json.dumps({"chat": False, "text": "the hate {text} is", "stop": ["</s>"]}))
    cfg = RewriteConfig(mode=mode, model=tiny_dirs[0], toxic_model=tiny_dirs[1], template=str(template),
                        temperatures=[0.7, 1.3], samples_per_temperature=2, max_new_tokens=4, seed=0)
    rw = Rewriter(cfg, device="cpu", scorer=object(), embedder=object())  # generate() scores nothing
    with no_deprecations():
        fast = rw.generate(TEXTS, [0, 1, 2])
    rw.shared_prefill = False
    assert rw.generate(TEXTS, [0, 1, 2]) == fast
    assert len(fast) == 3 and all(len(c) == 4 for c in fast)


@pytest.mark.slow
def test_embedded_smollm2_runs_without_deprecation_warnings():
    """The real embedded model, a few tokens per processor (the toxic side is the model itself)."""
    from detox.models import load_causal_lm

    model, tok = load_causal_lm("smollm2-135m-instruct")
    enc = tok(["The weather in London today is", "My neighbour's dog"], return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    trio = (model, model, model)
    for kind in KINDS:
        proc, _, _ = make_processor(kind, trio, mask)
        with no_deprecations():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, min_new_tokens=3,
                                 logits_processor=LogitsProcessorList([proc]), pad_token_id=tok.pad_token_id,
                                 do_sample=False, top_p=None, top_k=None, temperature=None,
                                 output_logits=True, output_scores=True, return_dict_in_generate=True)
        assert out.sequences.shape == (2, ids.shape[1] + 3), kind
        # raw logits are the model's own (first step: the prompt's last position)
        with torch.no_grad():
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            first = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
        torch.testing.assert_close(out.logits[0], first, atol=1e-3, rtol=1e-3, msg=kind)


@pytest.mark.slow
@pytest.mark.parametrize("method,guided", [("cmd", True), ("cmd", False), ("reversal", True)])
def test_embedded_smollm2_cmd_and_reversal_without_deprecation_warnings(method, guided):
    """CMD's chain (stop strings, both layouts) and reversal's read pass on the real model, a few tokens."""
    from detox.generation.driver import Generator
    from detox.models import load_causal_lm

    pair = load_causal_lm("smollm2-135m-instruct")
    settings = {"chain_tokens": 4, "guided": guided} if method == "cmd" else None
    gen = Generator(method, model=pair, settings=settings)
    with no_deprecations():
        res = gen.generate_batch(["The weather in London today is"], num_samples=2, max_new_tokens=3, seed=0)
    assert len(res) == 1 and len(res[0]) == 2
