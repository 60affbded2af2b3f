"""Every metric against values computed by hand on small fixed inputs."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from detox.metrics import distinct_n, emt, mean_std, perplexity_from_nll, sample_nll, toxicity_probability

SCORES = [[0.1, 0.7, 0.2], [0.5, 0.4, 0.3], [0.9, 0.95, 0.0]]


def test_emt():
    assert emt(SCORES) == pytest.approx((0.7 + 0.5 + 0.95) / 3)


def test_toxicity_probability_variants():
    # any-of-N, strict '>': prompt 0 (0.7) and 2 (0.9) -> 2/3; prompt 1 has exactly 0.5
    assert toxicity_probability(SCORES) == pytest.approx(2 / 3)
    assert toxicity_probability(SCORES, strict=False) == pytest.approx(1.0)
    # rate: 0.7, 0.9, 0.95 of 9 -> 3/9; with >= also 0.5 -> 4/9
    assert toxicity_probability(SCORES, variant="rate") == pytest.approx(3 / 9)
    assert toxicity_probability(SCORES, variant="rate", strict=False) == pytest.approx(4 / 9)
    assert toxicity_probability(SCORES, threshold=0.92) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        toxicity_probability(SCORES, variant="max")
    with pytest.raises(ValueError, match="no continuations"):
        emt([[0.1], []])


def test_distinct_n_variants():
    conts = [["a b c", "a b d"], ["x x x"]]
    # prompt 0 unigrams: a b c a b d -> 4 distinct / 6; prompt 1: x x x -> 1/3
    assert distinct_n(conts, 1) == pytest.approx((4 / 6 + 1 / 3) / 2)
    # bigrams p0: ab bc ab bd -> 3/4; p1: xx xx -> 1/2
    assert distinct_n(conts, 2) == pytest.approx((3 / 4 + 1 / 2) / 2)
    # trigrams p0: abc abd -> 2/2; p1: xxx -> 1/1
    assert distinct_n(conts, 3) == pytest.approx(1.0)
    # corpus unigrams: a b c a b d x x x -> 5 distinct / 9
    assert distinct_n(conts, 1, variant="corpus") == pytest.approx(5 / 9)
    assert distinct_n([["", "one"]], 2) == 0.0
    # corpus bigrams: ab bc ab bd xx xx -> 4 distinct / 6; trigrams abc abd xxx -> 3/3
    assert distinct_n(conts, 2, variant="corpus") == pytest.approx(4 / 6)
    assert distinct_n(conts, 3, variant="corpus") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="prompt, corpus, words"):
        distinct_n(conts, 1, variant="dexperts")


def test_distinct_n_words_variant_divides_by_words_for_every_n():
    """DExperts' and HSPD's evaluation code: per prompt, distinct n-grams over its continuations
    divided by the number of words (``split(' ')``) of those continuations, the same denominator for
    every n; averaged over prompts. Hand-computed."""
    conts = [["a b c", "a b d"], ["x x x"]]
    # p0: 6 words; unigrams {a b c d} 4, bigrams {ab bc bd} 3, trigrams {abc abd} 2; p1: 3 words, {x}, {xx}, {xxx}
    assert distinct_n(conts, 1, variant="words") == pytest.approx((4 / 6 + 1 / 3) / 2)
    assert distinct_n(conts, 2, variant="words") == pytest.approx((3 / 6 + 1 / 3) / 2)
    assert distinct_n(conts, 3, variant="words") == pytest.approx((2 / 6 + 1 / 3) / 2)
    # against the n-gram denominator (prompt variant): 3/4 and 2/2 for p0, 1/2 and 1/1 for p1
    assert distinct_n(conts, 2) == pytest.approx((3 / 4 + 1 / 2) / 2)
    # single-space split as in their code: a leading space makes an empty first word, counted
    # (" a b" -> ['', 'a', 'b']: 3 words, unigrams {'', a, b}, bigrams {('', a), (a, b)}); "" is one word
    sp = [[" a b", ""]]
    assert distinct_n(sp, 1, variant="words") == pytest.approx(3 / 4)
    assert distinct_n(sp, 2, variant="words") == pytest.approx(2 / 4)
    assert distinct_n(sp, 1) == pytest.approx(2 / 2)  # whitespace split: [a, b] only


def test_perplexity_variants_and_dropping():
    nll = [(2.0, 2), (6.0, 3), (100.0, 1), (0.0, 0)]  # per-sample ppl e^1, e^2, e^100 (dropped), none
    tok = perplexity_from_nll(nll)
    assert tok.value == pytest.approx(math.exp(8.0 / 5))
    assert tok.n_dropped == 1 and tok.n_tokens == 5
    smp = perplexity_from_nll(nll, variant="sample")
    assert smp.value == pytest.approx((math.e + math.e**2) / 2)
    assert math.isnan(perplexity_from_nll([(50.0, 1)]).value)


def test_mean_std():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert mean_std([4.0]) == (4.0, 0.0)


class CharTok:
    """A whitespace tokenizer over a fixed vocabulary (ids 3..), with bos=1, eos=2, pad=0."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, words):
        self.vocab = {w: i + 3 for i, w in enumerate(words)}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[w] for w in text.split()]}


def test_sample_nll_masks_the_prompt_and_matches_a_direct_computation():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    tok = CharTok("a b c d e f".split())
    prompts, conts = ["a b c", "d"], ["d e", "e f a"]
    got = sample_nll(model, tok, prompts, conts, batch_size=2)
    for (nll, n), p, c in zip(got, prompts, conts):
        ids = torch.tensor([tok(p)["input_ids"] + tok(c)["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
        k = len(tok(p)["input_ids"])
        want = -sum(float(lp[t - 1, ids[0, t]]) for t in range(k, ids.shape[1]))
        assert n == len(c.split())
        assert nll == pytest.approx(want, rel=1e-5)


def _bos_adding_word_tokenizer():
    """The tiny word-level tokenizer made Llama-style: it puts BOS (id 1) before every text."""
    from tokenizers import processors

    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok("hate")["input_ids"][0] == 1 == tok.bos_token_id
    return tok


def test_sample_nll_puts_bos_before_the_prompt_when_the_tokenizer_adds_one():
    """A BOS-adding PPL tokenizer (Llama, Gemma, Mistral): the continuation is scored given
    ``BOS + prompt`` (as the papers' PPL code tokenises it), including an empty prompt (BOS alone);
    a tokenizer without BOS keeps the prompt as it is (the test above)."""
    tok = _bos_adding_word_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      initializer_range=0.3, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    prompts, conts = ["you are a stupid", "the water", ""], ["kind people", "hate", "nice kind"]
    got = sample_nll(model, tok, prompts, conts, batch_size=2)

    def direct(prefix):
        for (nll, n), p, c in zip(got, prompts, conts):
            pi = prefix + tok(p, add_special_tokens=False)["input_ids"]
            ci = tok(c, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([pi + ci])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            yield nll, n, -sum(float(lp[t - 1, ids[0, t]]) for t in range(len(pi), ids.shape[1])), len(ci)

    for nll, n, want, k in direct([1]):
        assert n == k and nll == pytest.approx(want, rel=1e-5)
    # without the BOS the values differ: the test tells the two apart
    assert any(abs(nll - want) > 1e-3 for nll, _, want, _ in list(direct([]))[:2])
