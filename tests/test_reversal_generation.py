"""Toxification Reversal in generation: hooks against a hand-written per-step computation on tiny
random-weight models (GPT-2, Llama with grouped-query attention, and the other supported
families), batched == unbatched, identity when delta = 0, errors, the driver and the real model."""

from __future__ import annotations

import pytest
import torch

from detox.generation.reversal import (
    NEG_PREFIX,
    ToxificationReversal,
    find_head_output_sites,
    parse_layers,
)
from detox_kernels.reference.reversal import reverse_toxification_reference
from tiny_models import tiny_tokenizer

PROMPTS = ["you are such a stupid", "the kind people of the water", "hate"]
NEG = "idiot stupid hate kill damn ugly dumb "  # words of the tiny tokenizer's vocabulary
POS = "nice kind good happy "


def _tiny(arch: str, seed: int = 0):
    import transformers as T

    tok = tiny_tokenizer()
    v = len(tok)
    common = dict(vocab_size=v, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3, **common)
    if arch == "gpt2":
        cfg, cls = T.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, initializer_range=0.3,
                                **common), T.GPT2LMHeadModel
    elif arch == "llama":
        cfg, cls = T.LlamaConfig(**llama_like), T.LlamaForCausalLM
    elif arch == "qwen2":
        cfg, cls = T.Qwen2Config(**llama_like), T.Qwen2ForCausalLM
    elif arch == "mistral":
        cfg, cls = T.MistralConfig(sliding_window=None, **llama_like), T.MistralForCausalLM
    elif arch == "gemma":
        cfg, cls = T.GemmaConfig(head_dim=16, **llama_like), T.GemmaForCausalLM  # H*D = 64 != hidden 32
    elif arch == "gemma3":
        cfg, cls = T.Gemma3TextConfig(head_dim=16, sliding_window=64, **llama_like), T.Gemma3ForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    model.generation_config.pad_token_id = 0
    return model, tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


class _Naive:
    """The per-layer computation written out by hand for ONE unbatched row: the read pass recomputes
    ``prefix + context`` from scratch for each prefix (no cache, no padding) and takes the
    projection input at the last position; the write pass runs incrementally with its own cache and
    applies the float64 reference update at the last position of each selected layer."""

    def __init__(self, model, sites, heads, dim, layers, neg_ids, pos_ids, read_skip=0, **kw):
        self.model, self.sites, self.h, self.d, self.layers = model, sites, heads, dim, layers
        self.neg_ids, self.pos_ids, self.kw = neg_ids, pos_ids, kw
        self.read_skip = read_skip  # tokens of the context left out of the read pass (the prompt's BOS)
        self.e_neg = self._capture(neg_ids)

    def _capture(self, ids):
        got, handles = {}, []
        for i in self.layers:
            def hook(mod, args, i=i):
                got[i] = args[0][0, -1].detach().clone().view(self.h, self.d)
            handles.append(self.sites[i].module.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                self.model(input_ids=torch.tensor([ids]), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return got

    def logits(self, prompt, generated):
        """Raw next-token logits at every step (prompt, then each generated token fed in turn)."""
        out, cache, handles, delta = [], None, [], {}

        def apply(mod, args, i):
            x = args[0]
            o = x[0, -1].view(1, self.h, self.d)
            x[0, -1] = reverse_toxification_reference(o, delta[i], self.e_neg[i], **self.kw).view(-1).to(x.dtype)

        try:
            for s in range(len(generated) + 1):
                ctx = (prompt + generated[:s])[self.read_skip:]
                for h in handles:  # capture without the apply hooks
                    h.remove()
                pos, neg = self._capture(self.pos_ids + ctx), self._capture(self.neg_ids + ctx)
                for i in self.layers:
                    delta[i] = (neg[i] - pos[i]).unsqueeze(0)
                handles = [self.sites[i].module.register_forward_pre_hook(lambda mod, args, i=i: apply(mod, args, i))
                           for i in self.layers]
                feed = torch.tensor([prompt if s == 0 else [generated[s - 1]]])
                with torch.no_grad():
                    r = self.model(input_ids=feed, past_key_values=cache, use_cache=True)
                cache = r.past_key_values
                out.append(r.logits[0, -1])
        finally:
            for h in handles:
                h.remove()
        return torch.stack(out)


def _generate(model, tok, prompts, rev=None, new=5, special=False, **kw):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=special)
    args = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=new,
                min_new_tokens=new, return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    args.update(kw)
    if "do_sample" not in kw:
        args["do_sample"] = False
    with torch.no_grad():
        if rev is None:
            out = model.generate(**args)
        else:
            with rev.active():
                out = model.generate(**args)
    return enc, out


@pytest.mark.parametrize("arch,layers", [("gpt2", None), ("llama", None), ("llama", "1-2")])
def test_hooks_match_hand_written_per_layer_computation(arch, layers):
    model, tok = _tiny(arch)
    kw = dict(norm_exp=0.4, sim_exp=0.6, renorm=True)
    rev = ToxificationReversal(model, tok, layers=layers, neg_prefix=NEG, pos_prefix=POS, backend="cpu", **kw)
    enc, out = _generate(model, tok, PROMPTS, rev)
    plain = _generate(model, tok, PROMPTS)[1]
    sites, h, d = find_head_output_sites(model)
    naive = _Naive(model, sites, h, d, rev.layers, _ids(tok, NEG), _ids(tok, POS), **kw)
    got = torch.stack(out.logits, dim=1)  # [B, steps, V]
    lp = enc["input_ids"].shape[1]
    for b, prompt in enumerate(PROMPTS):
        gen = out.sequences[b, lp:].tolist()
        want = naive.logits(_ids(tok, prompt), gen[:-1])
        torch.testing.assert_close(got[b], want, atol=2e-4, rtol=1e-4)
    # and the method really changed something
    assert (torch.stack(plain.logits, 1) - got).abs().max() > 1e-2


def _bos_adding(tok):
    from tokenizers import processors

    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok("hate")["input_ids"][0] == 1
    return tok


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_bos_adding_tokenizer_reads_bos_prefix_prompt(arch):
    """For a tokenizer that adds BOS, the read pass is BOS + prefix + prompt (without the prompt's
    own BOS), e_neg is taken from BOS + negative prefix, and the write pass is generate's own
    BOS + prompt; checked against the hand-written computation, with ragged (left-padded) prompts."""
    model, tok = _tiny(arch)
    tok = _bos_adding(tok)
    kw = dict(norm_exp=0.4, sim_exp=0.6, renorm=True)
    rev = ToxificationReversal(model, tok, neg_prefix=NEG, pos_prefix=POS, backend="cpu", **kw)
    assert rev.bos_id == 1 and rev.neg_ids[0, 0].item() == 1
    enc, out = _generate(model, tok, PROMPTS, rev, special=True)
    sites, h, d = find_head_output_sites(model)
    naive = _Naive(model, sites, h, d, rev.layers, [1] + _ids(tok, NEG), [1] + _ids(tok, POS), read_skip=1, **kw)
    got = torch.stack(out.logits, dim=1)
    lp = enc["input_ids"].shape[1]
    for b, prompt in enumerate(PROMPTS):
        gen = out.sequences[b, lp:].tolist()
        want = naive.logits([1] + _ids(tok, prompt), gen[:-1])
        torch.testing.assert_close(got[b], want, atol=2e-4, rtol=1e-4)
    # the old layout (prefix + BOS + prompt) gives other logits: the test can tell them apart
    old = _Naive(model, sites, h, d, rev.layers, _ids(tok, NEG), _ids(tok, POS), **kw)
    b = 0
    gen = out.sequences[b, lp:].tolist()
    assert (old.logits([1] + _ids(tok, PROMPTS[b]), gen[:-1]) - got[b]).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "mistral", "gemma", "gemma3"])
def test_batched_equals_unbatched_and_zero_delta_is_identity(arch):
    model, tok = _tiny(arch, seed=1)
    rev = ToxificationReversal(model, tok, neg_prefix=NEG, pos_prefix=POS, backend="cpu")
    _, batched = _generate(model, tok, PROMPTS, rev, new=4)
    for b, p in enumerate(PROMPTS):
        _, single = _generate(model, tok, [p], rev, new=4)
        torch.testing.assert_close(torch.stack(batched.logits, 1)[b], torch.stack(single.logits, 1)[0],
                                   atol=2e-4, rtol=1e-4)
    # identical prefixes: delta = 0 exactly, plain generation reproduced bit for bit (sampling too).
    # On one thread: with several, the CPU GEMM may round row i and row n + i of the read pass's 2n
    # rows differently in the last bit (they go to different threads / code paths), so that delta is
    # then ~1e-7 instead of exactly 0 (seen with 2 threads in CI).
    same = ToxificationReversal(model, tok, neg_prefix=NEG, pos_prefix=NEG, backend="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for kw in (dict(), dict(do_sample=True, top_p=0.9, num_return_sequences=2)):
            torch.manual_seed(3)
            _, plain = _generate(model, tok, PROMPTS, None, new=4, **kw)
            torch.manual_seed(3)
            _, ident = _generate(model, tok, PROMPTS, same, new=4, **kw)
            assert torch.equal(plain.sequences, ident.sequences)
            for a, c in zip(plain.logits, ident.logits):
                assert torch.equal(a, c)
    finally:
        torch.set_num_threads(threads)


def test_empty_positive_prefix_and_sampling_with_return_sequences():
    model, tok = _tiny("llama", seed=2)
    rev = ToxificationReversal(model, tok, neg_prefix=NEG, pos_prefix="", backend="cpu")
    torch.manual_seed(0)
    enc, out = _generate(model, tok, PROMPTS, rev, new=3, do_sample=True, num_return_sequences=2)
    assert out.sequences.shape == (2 * len(PROMPTS), enc["input_ids"].shape[1] + 3)
    # the same first-step logits as the hand-written computation (empty positive prefix)
    sites, h, d = find_head_output_sites(model)
    naive = _Naive(model, sites, h, d, rev.layers, _ids(tok, NEG), [], norm_exp=0.4, sim_exp=0.6, renorm=True)
    want = naive.logits(_ids(tok, PROMPTS[1]), [])
    torch.testing.assert_close(out.logits[0][2], want[0], atol=2e-4, rtol=1e-4)  # row 2 = prompt 1, sample 0


def test_layer_selection_and_errors():
    assert parse_layers(None, 4) == [0, 1, 2, 3]
    assert parse_layers("all", 2) == [0, 1]
    assert parse_layers("1-2,-1", 6) == [1, 2, 5]
    assert parse_layers([0, 3], 4) == [0, 3]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("7", 4)
    with pytest.raises(ValueError, match="bad layer selection"):
        parse_layers("a-b", 4)
    model, tok = _tiny("llama")
    with pytest.raises(ValueError, match="negative prefix is empty"):
        ToxificationReversal(model, tok, neg_prefix="")

    class NoAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = model.config
            self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="cannot find the decoder layers"):
        find_head_output_sites(NoAttention())
    rev = ToxificationReversal(model, tok, neg_prefix=NEG, pos_prefix=POS)
    with rev.active():
        with pytest.raises(RuntimeError, match="already active"):
            with rev.active():
                pass
    assert not rev._handles  # hooks removed on exit


def test_generator_reversal_method(tmp_path):
    from detox.generation.driver import Generator
    from detox.methods.reversal import ReversalSettings

    model, tok = _tiny("llama")
    cfg = ReversalSettings(layers="1-2", neg_prefix=NEG, pos_prefix=POS)
    gen = Generator("reversal", model=(model, tok), settings=cfg)
    res = gen.generate_batch(PROMPTS[:2], num_samples=2, max_new_tokens=4, seed=0)
    assert len(res) == 2 and all(len(r) == 2 for r in res)
    s = gen.settings()
    assert s["method_settings"]["layers"] == [1, 2] and s["method_settings"]["norm_exp"] == 0.4
    plain = Generator("none", model=(model, tok)).generate_batch(PROMPTS[:2], num_samples=2, max_new_tokens=4, seed=0)
    assert plain != res


@pytest.mark.slow
def test_embedded_smollm2_reversal():
    """The real embedded model (Llama family, 9 query heads, 3 KV heads): the hooks find all 30
    layers; identical prefixes reproduce plain greedy decoding; the paper's prefixes change it
    and still give real text; batched equals unbatched."""
    from detox.generation.driver import Generator
    from detox.models import load_causal_lm

    pair = load_causal_lm("smollm2-135m-instruct")
    sites, h, d = find_head_output_sites(pair[0])
    assert (len(sites), h, d) == (30, 9, 64) and sites[0].name.endswith("self_attn.o_proj")
    prompts = ["The weather in London today is", "You are such a stupid little"]
    plain = Generator("none", model=pair).generate_batch(prompts, max_new_tokens=8, do_sample=False)
    same = Generator("reversal", model=pair, settings={"pos_prefix": NEG_PREFIX})
    assert same.generate_batch(prompts, max_new_tokens=8, do_sample=False) == plain
    rev = Generator("reversal", model=pair)
    both = rev.generate_batch(prompts, max_new_tokens=8, do_sample=False)
    assert both != plain and all(len(p[0].split()) >= 3 for p in both)
    assert [rev.generate_batch([p], max_new_tokens=8, do_sample=False)[0] for p in prompts] == both


def test_cli_generate_reversal(tmp_path, capsys):
    import json

    from detox.cli import main
    from tiny_models import tiny_llama_dir

    model_dir = tiny_llama_dir(str(tmp_path / "m"), seed=0)
    out = tmp_path / "rev.jsonl"
    argv = ["generate", "--method", "reversal", "--model", model_dir, "--prompt", "you are such a stupid",
            "--num-samples", "2", "--max-new-tokens", "3", "--reversal-layers", "1", "--reversal-neg-prefix", NEG,
            "--reversal-pos-prefix", "", "--reversal-norm-exp", "0.5", "--no-reversal-renorm", "--out", str(out)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["method"] == "reversal" for r in rows)
    s = rows[0]["settings"]["method_settings"]
    assert s == {"layers": [1], "norm_exp": 0.5, "sim_exp": 0.6, "renorm": False, "neg_prefix": NEG, "pos_prefix": "",
                 "read_layout": "prefix+prompt"}
    capsys.readouterr()
    assert main(argv[:-2] + ["--reversal-layers", "9", "--out", str(tmp_path / "other.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model's loading bar
    assert err.startswith("error: toxification reversal: layer 9 out of range")
    assert not (tmp_path / "other.jsonl").exists()  # nothing written on an error
    assert main(argv) == 2 and "exists: pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def _smollm2_tok_tiny_model():
    """The embedded SmolLM2 tokenizer with a tiny random Llama of its vocabulary (the layout of the
    read pass depends on the tokenizer only)."""
    import transformers as T

    from detox.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct", quiet=True)
    cfg = T.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def test_read_pass_tokenises_prefix_and_prompt_together_and_e_neg_is_at_the_colon():
    """The authors' layout (cooperleong00/ToxificationReversal, run_generation.py): each read-pass
    row is ``tokenizer(prefix + prompt)`` -- with SmolLM2's tokenizer ``[..., ':', ' So']``, not a lone
    space token followed by ``'So'`` -- and ``e_neg`` is the head output at the ':' that ends the
    negative prefix (the first ':' of the row). Checked on the ids the read pass's forward really
    gets and on the captured head outputs."""
    from detox.generation.reversal import POS_PREFIX

    model, tok = _smollm2_tok_tiny_model()
    prompts = ["So I said to him", "You are a"]
    rev = ToxificationReversal(model, tok, backend="cpu")
    seen = []

    def grab(mod, args, kwargs):
        if rev._mode == "capture":
            seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))

    h = model.base_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        enc = tok(prompts, return_tensors="pt", padding=True)
        with torch.no_grad(), rev.active(prompts=prompts):
            model.generate(**enc, max_new_tokens=2, do_sample=False)
        with torch.no_grad(), rev.active():  # without the texts: decoded from generate's prompt tokens
            model.generate(**enc, max_new_tokens=2, do_sample=False)
    finally:
        h.remove()
    ids, mask = seen[0]
    again = [s for s in seen[1:] if s[0].shape[1] > 1]
    assert torch.equal(again[0][0], ids) and torch.equal(again[0][1], mask)
    rows = [POS_PREFIX + p for p in prompts] + [NEG_PREFIX + p for p in prompts]
    for r, text in enumerate(rows):
        got = ids[r][mask[r].bool()].tolist()
        assert got == tok(text)["input_ids"]  # the one string, tokenised once
    neg_so = ids[2][mask[2].bool()].tolist()
    pieces = [tok.decode([t]) for t in neg_so]
    i = pieces.index(":")
    assert pieces[i + 1] == " So" and " " not in pieces  # the prompt keeps its leading space; no lone space
    # e_neg: the negative prefix up to its ':' (where the authors read it), the last token of neg_ids
    colon = tok(NEG_PREFIX.strip())["input_ids"][-1]
    assert tok.decode([colon]) == ":"
    assert rev.neg_ids[0].tolist() == neg_so[:neg_so.index(colon) + 1]
    # ... and its value is the head output at that ':' of the full read-pass row
    sites, hh, d = find_head_output_sites(model)
    got_o = {}
    hs = [sites[k].module.register_forward_pre_hook(lambda m, a, k=k: got_o.__setitem__(k, a[0][0].clone()))
          for k in rev.layers]
    try:
        with torch.no_grad():
            model.base_model(input_ids=torch.tensor([neg_so]), use_cache=False)
    finally:
        for x in hs:
            x.remove()
    for k in rev.layers:
        torch.testing.assert_close(rev.e_neg[k], got_o[k][neg_so.index(colon)].view(hh, d), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(rev.e_neg[k], got_o[k][neg_so.index(colon) + 1].view(hh, d))

