"""top_k and min_new_tokens for every method: min_new_tokens suppresses EOS (HF's own processor
inside generate, the same one in SASA's loop, the generation step of CMD), and top_k is HF's
TopKLogitsWarper over the method's final scores (top_k = 1 sampling is the method's greedy
decoding; SASA with beta = 0 and outside = mask samples generate's top-k tokens exactly)."""

from __future__ import annotations

import pytest
import torch

from detox.generation.driver import Generator

from tiny_models import tiny_llama_dir, tiny_tokenizer

METHODS = ("none", "socd", "cd", "dexperts", "unidetox", "reversal", "sasa", "cmd")
PROMPTS = ["you are such a stupid", "the kind people of the water"]
NEG, POS = "idiot stupid hate kill damn ugly dumb ", "nice kind good happy "


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from detox.sasa import Subspace

    root = tmp_path_factory.mktemp("sampling")
    base = tiny_llama_dir(str(root / "base"), seed=0)
    toxic = tiny_llama_dir(str(root / "toxic"), seed=1)
    g = torch.Generator().manual_seed(0)
    sub = Subspace(1e-3 * torch.randn(32, generator=g, dtype=torch.float64), torch.zeros(32, dtype=torch.float64),
                   base).save(str(root / "sub.safetensors"))
    tok = tiny_tokenizer()
    load = lambda p: AutoModelForCausalLM.from_pretrained(p).eval()  # noqa: E731
    from test_cmd import _tiny_bpe_model  # CMD's chain needs a tokenizer that can spell '#' (stop strings)

    bpe = _tiny_bpe_model(str(root / "bpe"))
    return dict(base=base, toxic=toxic, sub=sub, tok=tok, load=load, bpe=bpe,
                bpe_tok=AutoTokenizer.from_pretrained(bpe))


def _tok(method, tiny):
    return tiny["bpe_tok"] if method == "cmd" else tiny["tok"]


def _base(method, tiny):
    return tiny["load"](tiny["bpe"] if method == "cmd" else tiny["base"])


def _settings(method, tiny, **extra):
    own = {"sasa": {"subspace": tiny["sub"]}, "reversal": {"neg_prefix": NEG, "pos_prefix": POS},
           "cmd": {"guided": False}}.get(method, {})
    return {**own, **extra}


def _generator(method, tiny, model=None, decode="fast", **extra):
    tok = _tok(method, tiny)
    model = model if model is not None else _base(method, tiny)
    toxic = (tiny["load"](tiny["toxic"]), tok)
    return Generator(method, model=(model, tok), toxic_model=toxic, settings=_settings(method, tiny, **extra),
                     model_name="base", toxic_name="toxic", decode=decode)


def _eos_first(method, tiny):
    """The tiny base model with a head that always ranks EOS first and 'hate' second."""
    tok = _tok(method, tiny)
    model = _base(method, tiny)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 0.01)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 200.0
        head.bias[_second(tok)] = 100.0
    model.lm_head = head
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


def _second(tok):
    """A word that is one token of ``tok`` (with its leading space where the tokenizer has them)."""
    for w in (" hate", "hate", " the", " you", " and"):
        ids = tok(w, add_special_tokens=False)["input_ids"]
        if len(ids) == 1 and ids[0] not in tok.all_special_ids and ids[0] != tok.unk_token_id:
            return ids[0]
    raise AssertionError("no one-token word")


@pytest.mark.parametrize("method", METHODS)
def test_min_new_tokens_suppresses_eos(method, tiny):
    tok = _tok(method, tiny)
    assert tok.eos_token_id is not None
    gen = _generator(method, tiny, model=_eos_first(method, tiny))

    def want(n):
        return [[tok.decode([_second(tok)] * n, skip_special_tokens=True).strip()]] * len(PROMPTS)

    def texts(**kw):
        return [[x.strip() for x in t] for t in gen.run_batch(PROMPTS, **kw).texts]

    kw = dict(max_new_tokens=6, do_sample=False, seed=0)
    assert texts(**kw) == want(0)  # EOS at once
    assert texts(min_new_tokens=4, **kw) == want(4)  # then EOS is allowed again
    assert texts(min_new_tokens=3, max_new_tokens=6, seed=1, top_k=50) == want(3)


@pytest.mark.parametrize("method", METHODS)
def test_top_k_one_is_the_methods_greedy_decoding(method, tiny):
    gen = _generator(method, tiny)
    greedy = gen.run_batch(PROMPTS, max_new_tokens=6, do_sample=False, seed=0).texts
    top1 = gen.run_batch(PROMPTS, max_new_tokens=6, do_sample=True, top_k=1, seed=3).texts
    assert top1 == greedy
    # without the filter, sampling on this random model differs from greedy (the test can fail)
    free = [gen.run_batch(PROMPTS, max_new_tokens=6, do_sample=True, top_k=0, top_p=1.0, seed=s).texts
            for s in (3, 4)]
    assert any(f != greedy for f in free)


@pytest.mark.parametrize("k", [3, 7])
def test_sasa_top_k_is_generates_top_k(k, tiny):
    """SASA's own loop with beta = 0, outside = mask and K = top_k samples exactly generate's tokens
    with HF's TopKLogitsWarper (the 'none' method through generate: the fast loop draws with
    another random stream)."""
    sasa = _generator("sasa", tiny, beta=0.0, outside="mask", max_candidates=k)
    plain = _generator("none", tiny, decode="hf")
    kw = dict(max_new_tokens=8, do_sample=True, top_k=k, top_p=0.95, num_samples=2, seed=5)
    assert sasa.run_batch(PROMPTS, **kw).texts == plain.run_batch(PROMPTS, **kw).texts


def test_cli_generate_top_k_and_min_new_tokens(tiny, tmp_path, capsys):
    import json

    from detox.cli import main

    def run(*extra):
        out = tmp_path / f"g{len(list(tmp_path.iterdir()))}.jsonl"
        assert main(["generate", "--method", "none", "--model", tiny["base"], "--prompt", PROMPTS[0], "--num-samples", "1",
                     "--max-new-tokens", "5", "--out", str(out), *extra]) == 0
        return [json.loads(x) for x in open(out)]

    greedy = run("--greedy")
    top1 = run("--top-k", "1", "--min-new-tokens", "5", "--seed", "3")
    assert [r["continuation"] for r in top1] == [r["continuation"] for r in greedy]
    assert top1[0]["settings"]["top_k"] == 1 and top1[0]["settings"]["min_new_tokens"] == 5
    assert greedy[0]["settings"]["top_k"] == 0 and greedy[0]["settings"]["min_new_tokens"] == 0
    capsys.readouterr()
    assert main(["generate", "--model", tiny["base"], "--prompt", PROMPTS[0], "--max-new-tokens", "3",
                 "--min-new-tokens", "4"]) == 2
    assert "--min-new-tokens (4) must be <= --max-new-tokens (3)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", tiny["base"], "--prompt", PROMPTS[0], "--top-k", "-1"])
    assert e.value.code == 2
