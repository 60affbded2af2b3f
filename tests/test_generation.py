"""The generation processors inside HuggingFace generate, on tiny random-weight models.

Each processor is checked against a straightforward per-step loop that recomputes both models
over the whole sequence (no KV cache) and applies the rule directly; a left-padded batch must
equal the prompts run one by one; neutral settings must reproduce plain generation.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from detox.generation import (
    ContrastiveDecodingLogitsProcessor,
    DExpertsLogitsProcessor,
    SoCDLogitsProcessor,
    top_p_filter,
)
from detox.methods.unidetox import UniDetoxLogitsProcessor
from detox_kernels.reference import socd_reference

VOCAB = 101
PAD = 0


def tiny_llama(seed, vocab=VOCAB):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.3, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.pad_token_id = PAD
    return m


@pytest.fixture(scope="module")
def models():
    return tiny_llama(0), tiny_llama(1), tiny_llama(2)


PROMPTS = [[5, 17, 33, 8, 9, 40], [7, 3], [11, 12, 13, 14]]


def left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def full_logits(model, ids, mask):
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()


def rule_socd(x, ys):
    return socd_reference(x, ys[0])[0].float()


def rule_cd_obrien(x, ys, alpha=0.1, beta=0.5):
    keep = x >= x.max(-1, keepdim=True).values + math.log(alpha)
    return torch.where(keep, (1 + beta) * x - beta * ys[0], torch.tensor(-math.inf))


def rule_cd_li(x, ys, alpha=0.1):
    keep = x >= x.max(-1, keepdim=True).values + math.log(alpha)
    s = torch.log_softmax(x, -1) - torch.log_softmax(ys[0] / 0.5, -1)
    return torch.where(keep, s, torch.tensor(-math.inf))


def rule_dexperts(x, ys, alpha=2.0):
    e, a = ys
    return top_p_filter(x, 0.9) + alpha * (e - a)


def rule_unidetox(x, ys):
    keep = x >= x.max(-1, keepdim=True).values + math.log(0.1)
    return torch.where(keep, x - ys[0], torch.tensor(-math.inf))


def reference_greedy(base, aux, rule, prompts, steps):
    ids, mask = left_pad(prompts)
    for _ in range(steps):
        x = full_logits(base, ids, mask)
        ys = [full_logits(m, ids, mask) for m in aux]
        nxt = rule(x, ys).argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        mask = torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


def make_processor(kind, models, mask):
    base, tox, expert = models
    if kind == "socd":
        return SoCDLogitsProcessor(tox, attention_mask=mask), [tox], rule_socd
    if kind == "cd-obrien":
        return ContrastiveDecodingLogitsProcessor(tox, attention_mask=mask), [tox], rule_cd_obrien
    if kind == "cd-li":
        return ContrastiveDecodingLogitsProcessor(tox, form="li", attention_mask=mask), [tox], rule_cd_li
    if kind == "dexperts":
        return DExpertsLogitsProcessor(expert, tox, attention_mask=mask), [expert, tox], rule_dexperts
    if kind == "unidetox":
        return UniDetoxLogitsProcessor(tox, attention_mask=mask), [tox], rule_unidetox
    raise ValueError(kind)


def run_generate(base, proc, ids, mask, steps, **kw):
    kw.setdefault("do_sample", False)
    return base.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                         logits_processor=LogitsProcessorList([proc]) if proc is not None else None,
                         pad_token_id=PAD, top_p=kw.pop("top_p", 1.0), **kw)


KINDS = ["socd", "cd-obrien", "cd-li", "dexperts", "unidetox"]


@pytest.mark.parametrize("kind", KINDS)
def test_processor_matches_per_step_reference(models, kind):
    steps = 6
    ids, mask = left_pad(PROMPTS)
    proc, aux, rule = make_processor(kind, models, mask)
    got = run_generate(models[0], proc, ids, mask, steps)
    want = reference_greedy(models[0], aux, rule, PROMPTS, steps)
    assert torch.equal(got, want)
    # the processor changed the scores generate sampled from (greedy tokens may coincide)
    proc.reset()
    with_scores = run_generate(models[0], proc, ids, mask, 1, output_scores=True, return_dict_in_generate=True)
    plain = run_generate(models[0], None, ids, mask, 1, output_scores=True, return_dict_in_generate=True)
    assert not torch.equal(with_scores.scores[0], plain.scores[0])


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_equals_one_by_one(models, kind):
    steps = 5
    ids, mask = left_pad(PROMPTS)
    proc, _, _ = make_processor(kind, models, mask)
    batch = run_generate(models[0], proc, ids, mask, steps)
    for i, p in enumerate(PROMPTS):
        one_ids, one_mask = left_pad([p])
        proc1, _, _ = make_processor(kind, models, one_mask)
        one = run_generate(models[0], proc1, one_ids, one_mask, steps)
        assert torch.equal(batch[i, -steps:], one[0, -steps:]), f"row {i}"


def test_num_return_sequences_sampling_matches_expanded_batch(models):
    base, tox, _ = models
    ids, mask = left_pad(PROMPTS)
    torch.manual_seed(123)
    a = run_generate(base, SoCDLogitsProcessor(tox, attention_mask=mask), ids, mask, 5, do_sample=True,
                     num_return_sequences=3, top_p=0.9)
    rids, rmask = ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    torch.manual_seed(123)
    b = run_generate(base, SoCDLogitsProcessor(tox, attention_mask=rmask), rids, rmask, 5, do_sample=True, top_p=0.9)
    assert a.shape == (9, ids.shape[1] + 5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("do_sample", [False, True])
def test_neutral_settings_reproduce_plain_generation(models, do_sample):
    base, tox, expert = models
    ids, mask = left_pad(PROMPTS)
    neutral = {
        "socd-self": SoCDLogitsProcessor(base, attention_mask=mask),  # toxic = base: divergence 0, alpha 0
        "cd-beta0": ContrastiveDecodingLogitsProcessor(tox, alpha=0.0, beta=0.0, attention_mask=mask),
        "dexperts-alpha0": DExpertsLogitsProcessor(expert, tox, alpha=0.0, top_p=1.0, attention_mask=mask),
    }
    torch.manual_seed(7)
    plain = run_generate(base, None, ids, mask, 6, do_sample=do_sample)
    for name, proc in neutral.items():
        torch.manual_seed(7)
        got = run_generate(base, proc, ids, mask, 6, do_sample=do_sample)
        assert torch.equal(got, plain), name


def test_socd_stats_recorded_without_host_sync(models):
    base, tox, _ = models
    ids, mask = left_pad(PROMPTS)
    proc = SoCDLogitsProcessor(tox, attention_mask=mask, record_stats=True)
    run_generate(base, proc, ids, mask, 4)
    assert len(proc.stats) == 4
    assert all(s.alpha.shape == (3,) for s in proc.stats)
    assert any(bool((s.k > 0).any()) for s in proc.stats)


def test_mask_mismatch_is_a_clear_error(models):
    base, tox, _ = models
    ids, mask = left_pad(PROMPTS)
    proc = SoCDLogitsProcessor(tox, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="attention mask"):
        run_generate(base, proc, ids, mask, 2)


def test_padded_toxic_vocabulary(models):
    """A toxic model whose output layer is padded past the real vocabulary still works."""
    base = models[0]
    tox = tiny_llama(1, vocab=VOCAB + 27)
    ids, mask = left_pad(PROMPTS)
    proc = SoCDLogitsProcessor(tox, attention_mask=mask, vocab_size=VOCAB)
    out = run_generate(base, proc, ids, mask, 4)
    assert out.shape == (3, ids.shape[1] + 4)
    assert int(out.max()) < VOCAB


# ---------------------------------------------------------------- the driver, errors, the real model

from detox.generation.driver import Generator  # noqa: E402

from tiny_models import tiny_llama_dir  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    return tiny_llama_dir(str(root / "base"), 0), tiny_llama_dir(str(root / "toxic"), 1)


def test_driver_errors_for_empty_and_too_long_prompts(tiny_dirs):
    gen = Generator("socd", model=tiny_dirs[0], toxic_model=tiny_dirs[1])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen.generate_batch(["the water", "   "], max_new_tokens=3)
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):
        gen.generate_batch(["the " * 126], max_new_tokens=5)
    res = gen.generate_batch(["the water is", "you are"], num_samples=2, max_new_tokens=3, seed=1)
    assert len(res) == 2 and all(len(r) == 2 for r in res)


def test_driver_rejects_a_toxic_model_with_another_vocabulary(tiny_dirs, tmp_path):
    from detox.models import VocabularyMismatchError
    from transformers import AutoTokenizer

    other = tiny_llama_dir(str(tmp_path / "other"), 3)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zzz-extra-token"])  # one more token: a different vocabulary
    tok.save_pretrained(other)
    with pytest.raises(VocabularyMismatchError):
        Generator("socd", model=tiny_dirs[0], toxic_model=other)


@pytest.mark.slow
def test_embedded_smollm2_socd_with_itself_reproduces_plain_greedy():
    """The real embedded model: SoCD against an identical toxic model is the identity."""
    from detox.models import load_causal_lm

    pair = load_causal_lm("smollm2-135m-instruct")
    prompts = ["The weather in London today is", "My neighbour's dog"]
    plain = Generator("none", model=pair).generate_batch(prompts, max_new_tokens=8, do_sample=False)
    socd_self = Generator("socd", model=pair, toxic_model=pair).generate_batch(prompts, max_new_tokens=8, do_sample=False)
    assert plain == socd_self
    assert all(len(p[0].split()) >= 3 for p in plain)  # real, non-empty English continuations


def test_processor_reused_across_generate_calls(models):
    """A processor reused for a second generate call (other prompts, other length) starts over."""
    base, tox, _ = models
    ids1, mask1 = left_pad(PROMPTS)
    ids2, mask2 = left_pad([[9, 8, 7, 6, 5, 4, 3, 21, 22, 23, 24, 25, 26, 27]] * 3)  # longer than the first call
    reused = SoCDLogitsProcessor(tox, attention_mask=mask1)
    run_generate(base, reused, ids1, mask1, 6)
    reused.auxiliaries[0].prompt_mask = mask2
    again = run_generate(base, reused, ids2, mask2, 4)
    fresh = run_generate(base, SoCDLogitsProcessor(tox, attention_mask=mask2), ids2, mask2, 4)
    assert torch.equal(again, fresh)
