"""Batched SASA decoding: beta = 0 is plain sampling, batched equals one sequence at a time,
the shared-prefix candidate forward equals K copies of the cache, and the driver / CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import LogitsProcessorList, TopPLogitsWarper
from transformers.cache_utils import DynamicCache

from detox.generation.sasa import SASADecoder
from bench.sasa_one_at_a_time import sasa_generate_one_at_a_time
from detox.sasa import Subspace
from tiny_models import tiny_llama_dir, tiny_tokenizer

PROMPTS = ["the a of to and", "you hate", "kill the idiot and you said"]


def _gpt2(vocab):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, pad_token_id=0,
                     bos_token_id=1, eos_token_id=2, initializer_range=0.3)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    d = tiny_llama_dir(str(tmp_path_factory.mktemp("sasa") / "llama"), 0)
    tok = tiny_tokenizer()
    llama = AutoModelForCausalLM.from_pretrained(d).eval()
    assert llama.config._attn_implementation == "sdpa"
    eager = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
    gpt2_eager = _gpt2(len(tok))
    gpt2_eager.set_attn_implementation("eager")
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, generator=g)
    return {"dir": d, "tok": tok, "llama": llama, "gpt2": _gpt2(len(tok)), "llama-eager": eager,
            "gpt2-eager": gpt2_eager, "w": w / w.norm(),
            "m": torch.randn(32, generator=g) * 0.1}


def _enc(tok, prompts=PROMPTS):
    return tok(prompts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_beta_zero_mask_is_plain_sampling_with_top_k(tiny, kind):
    """beta = 0 with outside='mask' gives generate(top_k = K)'s tokens exactly (same warpers, same
    RNG use); so does 'keep' when a top-k warper leaves nothing outside the K candidates."""
    model, enc = tiny[kind], _enc(tiny["tok"])
    k = 8
    for outside in ("mask", "keep"):
        dec = SASADecoder(model, tiny["w"], tiny["m"], beta=0.0, max_candidates=k, outside=outside)
        for seed in range(3):
            torch.manual_seed(seed)
            ref = model.generate(**enc, do_sample=True, top_p=0.9, top_k=k, max_new_tokens=10, num_return_sequences=2,
                                 pad_token_id=0)
            torch.manual_seed(seed)
            got = dec.generate(enc["input_ids"], enc["attention_mask"], do_sample=True, top_p=0.9, top_k=k,
                               max_new_tokens=10, num_return_sequences=2, pad_token_id=0)
            assert torch.equal(ref, got[:, :ref.shape[1]])
        assert dec.outside_picks == 0


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_beta_zero_keep_samples_the_full_distribution(tiny, kind):
    """beta = 0 with outside='keep' and more than K tokens in the nucleus: the drawn tokens follow
    plain sampling's distribution over the whole nucleus (the outside token rides along in the
    forward; total variation against the exact probabilities over 2 steps x 12000 rows), while
    'mask' (candidates only) is far from it: the test can tell the two apart."""
    model, tok = tiny[kind], tiny["tok"]
    enc = _enc(tok, [PROMPTS[0]])
    k, n = 4, 12000
    with torch.no_grad():
        logits = model(**enc).logits[0, -1].float()
    warp = LogitsProcessorList([TopPLogitsWarper(top_p=0.95)])
    p1 = torch.softmax(warp(enc["input_ids"], logits[None].clone())[0], -1)
    assert (p1 > 0).sum() > 3 * k  # many tokens outside the K candidates
    tv = {}
    for outside in ("keep", "mask"):
        dec = SASADecoder(model, tiny["w"], tiny["m"], beta=0.0, max_candidates=k, outside=outside)
        torch.manual_seed(0)
        got = dec.generate(enc["input_ids"], enc["attention_mask"], do_sample=True, top_p=0.95, max_new_tokens=2,
                           num_return_sequences=n, pad_token_id=0, eos_token_id=[])
        first = got[:, enc["input_ids"].shape[1]]
        freq = torch.bincount(first, minlength=p1.numel()).float() / n
        tv[outside] = 0.5 * (freq - p1).abs().sum().item()
        if outside == "keep":
            assert dec.outside_picks > n // 4
            # step 2 after an outside token: the rider's KV and hidden state were kept. Check the
            # second-token distribution after the most frequent outside first token.
            top_out = [t for t in torch.argsort(freq, descending=True).tolist()
                       if t not in p1.topk(k).indices.tolist()][0]
            rows = first == top_out
            ctx = torch.cat([enc["input_ids"], torch.tensor([[top_out]])], 1)
            with torch.no_grad():
                l2 = model(input_ids=ctx).logits[0, -1].float()
            p2 = torch.softmax(warp(ctx, l2[None].clone())[0], -1)
            sec = got[rows, enc["input_ids"].shape[1] + 1]
            f2 = torch.bincount(sec, minlength=p2.numel()).float() / rows.sum()
            tv2 = 0.5 * (f2 - p2).abs().sum().item()
            assert rows.sum() > 300 and tv2 < 0.2, (int(rows.sum()), tv2)
    assert tv["keep"] < 0.05, tv
    assert tv["mask"] > 0.2, tv


def test_keep_greedy_tilt_takes_the_best_outside_token(tiny):
    """Greedy with mode='tilt' and a large beta pushes candidates below the best token outside
    them: 'keep' must then take that token, and continue from its own KV / hidden state. Checked
    step by step against a hand-written loop that recomputes everything from scratch."""
    model, enc = tiny["llama"], _enc(tiny["tok"])
    w, m, k, beta = tiny["w"], tiny["m"], 4, 40.0
    dec = SASADecoder(model, w, m, beta=beta, mode="tilt", max_candidates=k, outside="keep")
    got = dec.generate(enc["input_ids"], enc["attention_mask"], do_sample=False, max_new_tokens=8, pad_token_id=0,
                       eos_token_id=[])
    assert dec.outside_picks > 0
    L = enc["input_ids"].shape[1]
    for r in range(len(PROMPTS)):
        seq = enc["input_ids"][r, enc["attention_mask"][r].bool()].tolist()
        for step in range(8):
            with torch.no_grad():
                scores = model(input_ids=torch.tensor([seq])).logits[0, -1].float()
                cand = scores.topk(k).indices
                h = torch.stack([model.base_model(input_ids=torch.tensor([seq + [int(c)]])).last_hidden_state[0, -1]
                                 for c in cand]).float()
            new = scores.clone()
            new[cand] += beta * ((h - m) @ w)
            want = int(new.argmax())
            assert int(got[r, L + step]) == want, (r, step)
            seq.append(want)


def test_beta_zero_with_eos_and_no_fallback_for_finished_rows(tiny):
    """Rows that stop at EOS: beta = 0 still equals generate(), and finished rows (which only emit
    padding) are never counted as drawn from outside the candidates."""
    model, enc = tiny["llama"], _enc(tiny["tok"])
    torch.manual_seed(0)
    free = model.generate(**enc, do_sample=True, top_p=1.0, top_k=8, max_new_tokens=12, pad_token_id=0)
    eos = int(free[0, enc["input_ids"].shape[1] + 1])  # row 0 stops at its second new token
    dec = SASADecoder(model, tiny["w"], tiny["m"], beta=0.0, max_candidates=8, outside="keep")
    torch.manual_seed(0)
    ref = model.generate(**enc, do_sample=True, top_p=1.0, top_k=8, max_new_tokens=12, pad_token_id=0,
                         eos_token_id=eos)
    torch.manual_seed(0)
    got = dec.generate(enc["input_ids"], enc["attention_mask"], do_sample=True, top_p=1.0, top_k=8,
                       max_new_tokens=12, pad_token_id=0, eos_token_id=eos)
    assert torch.equal(ref, got[:, :ref.shape[1]])
    assert (ref[0, enc["input_ids"].shape[1] + 2:] == 0).all()  # row 0 finished early
    # top_k = K: a running row only samples among its candidates
    assert dec.outside_picks == 0


@pytest.mark.parametrize("kind", ["llama", "gpt2", "llama-eager", "gpt2-eager"])
def test_candidate_forward_equals_k_copies(tiny, kind):
    """The one B x K forward with the 4D mask gives every candidate the hidden state of prefix + candidate."""
    model, enc = tiny[kind], _enc(tiny["tok"])
    dec = SASADecoder(model, tiny["w"], tiny["m"])
    ids, mask = enc["input_ids"], enc["attention_mask"]
    _, cache = dec._prefill(ids, mask)
    cand = torch.tensor([[5, 9, 9, 40], [7, 8, 11, 3], [60, 61, 62, 63]])
    hidden = dec._candidate_forward(cand, mask, mask.sum(-1), cache)
    for r in range(3):
        row = ids[r, mask[r].bool()]
        for j in range(4):
            full = torch.cat([row, cand[r, j:j + 1]])[None]
            want = model.base_model(input_ids=full).last_hidden_state[0, -1]
            torch.testing.assert_close(hidden[r, j], want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("mode", ["softmax", "tilt"])
def test_batched_equals_unbatched_and_one_at_a_time(tiny, kind, mode):
    model, enc = tiny[kind], _enc(tiny["tok"])
    kw = dict(beta=6.0, mode=mode, max_candidates=8)
    dec = SASADecoder(model, tiny["w"], tiny["m"], outside="mask", **kw)
    batched = dec.generate(enc["input_ids"], enc["attention_mask"], do_sample=False, max_new_tokens=10, pad_token_id=0)
    L = enc["input_ids"].shape[1]
    for r, p in enumerate(PROMPTS):
        e1 = _enc(tiny["tok"], [p])
        one = dec.generate(e1["input_ids"], e1["attention_mask"], do_sample=False, max_new_tokens=10, pad_token_id=0)
        assert torch.equal(one[0, e1["input_ids"].shape[1]:], batched[r, L:])
    ref = sasa_generate_one_at_a_time(model, enc["input_ids"], enc["attention_mask"], tiny["w"], tiny["m"],
                                      do_sample=False, max_new_tokens=10, pad_token_id=0, **kw)
    assert torch.equal(batched[:, L:], ref)
    plain = SASADecoder(model, tiny["w"], tiny["m"], outside="mask", beta=0.0, max_candidates=8).generate(
        enc["input_ids"], enc["attention_mask"], do_sample=False, max_new_tokens=10, pad_token_id=0)
    assert not torch.equal(plain, batched)  # beta = 6 changes the greedy path


def test_beta_moves_margins_toward_the_nontoxic_side(tiny):
    model, enc = tiny["llama"], _enc(tiny["tok"])
    means = {}
    for beta in (0.0, 20.0):
        dec = SASADecoder(model, tiny["w"], tiny["m"], beta=beta, max_candidates=16, mode="tilt", outside="mask")
        torch.manual_seed(0)
        _, margins = dec.generate(enc["input_ids"], enc["attention_mask"], do_sample=True, top_p=1.0,
                                  max_new_tokens=12, num_return_sequences=4, pad_token_id=0, return_margins=True)
        means[beta] = margins.nanmean().item()
    assert means[20.0] > means[0.0] + 0.1


def test_decoder_errors(tiny):
    with pytest.raises(ValueError, match="fitted on another model"):
        SASADecoder(tiny["llama"], torch.ones(7), torch.zeros(7))
    with pytest.raises(ValueError, match="outside"):
        SASADecoder(tiny["llama"], tiny["w"], tiny["m"], outside="drop")


def test_driver_and_cli_generate_with_sasa(tiny, tmp_path, monkeypatch):
    from detox.cli import main
    from detox.generation.driver import Generator

    sub = Subspace(tiny["w"], tiny["m"], tiny["dir"]).save(str(tmp_path / "s.safetensors"))
    model = (tiny["llama"], tiny["tok"])
    plain = Generator("none", model=model, decode="hf").generate_batch(PROMPTS, num_samples=2, max_new_tokens=6,
                                                                       seed=3)
    # K = the whole vocabulary: nothing lies outside the candidates, so beta = 0 is generate()'s
    # sampling draw for draw (with K < V, 'keep' is plain sampling in distribution; tested above)
    zero = Generator("sasa", model=model, settings=dict(subspace=sub, beta=0.0,
                                                         max_candidates=len(tiny["tok"])))
    assert zero.generate_batch(PROMPTS, num_samples=2, max_new_tokens=6, seed=3) == plain
    five = Generator("sasa", model=model, settings=dict(subspace=sub, beta=5.0,
                                                         max_candidates=len(tiny["tok"])))
    assert five.generate_batch(PROMPTS, num_samples=2, max_new_tokens=6, seed=3) != plain
    assert zero.settings()["method_settings"]["subspace"] == sub
    out = tmp_path / "g.jsonl"
    rc = main(["generate", "--method", "sasa", "--model", tiny["dir"], "--sasa-subspace", sub, "--sasa-beta", "5",
               "--prompt", "you hate", "--num-samples", "3", "--max-new-tokens", "5", "--out", str(out)])
    rows = [json.loads(line) for line in open(out)]
    assert rc == 0 and len(rows) == 3 and rows[0]["settings"]["method_settings"]["beta"] == 5.0
    with pytest.raises(FileNotFoundError, match="subspace file not found"):
        Generator("sasa", model=model, settings=dict(subspace=str(tmp_path / "missing")))


@pytest.mark.slow
def test_embedded_smollm2_sasa():
    """The real embedded model with the shipped ToxiGen subspace: beta = 0 is plain sampling (top-k
    sampling with K = top_k, draw for draw), 'keep' draws outside tokens, and beta > 0 raises the
    chosen tokens' margins."""
    from detox.models import load_causal_lm
    from detox.sasa import resolve_subspace

    model, tok = load_causal_lm("smollm2-135m-instruct")
    sub = Subspace.load(resolve_subspace(None, "smollm2-135m-instruct"))
    enc = tok(["You are such a", "The weather today"], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    ref = model.generate(**enc, do_sample=True, top_p=0.9, top_k=50, max_new_tokens=6, pad_token_id=tok.pad_token_id)
    for outside in ("mask", "keep"):  # top_k = K = 50: nothing outside the candidates
        torch.manual_seed(0)
        got = SASADecoder(model, sub.direction, sub.midpoint, beta=0.0, outside=outside).generate(
            enc["input_ids"], enc["attention_mask"], top_p=0.9, top_k=50, max_new_tokens=6,
            pad_token_id=tok.pad_token_id)
        assert torch.equal(ref, got[:, :ref.shape[1]])
    # 'keep' with K < the nucleus: tokens outside the candidates are drawn, and decoding goes on
    keep = SASADecoder(model, sub.direction, sub.midpoint, beta=0.0, max_candidates=2)
    torch.manual_seed(0)
    out = keep.generate(enc["input_ids"], enc["attention_mask"], top_p=0.95, max_new_tokens=6,
                        num_return_sequences=4, pad_token_id=tok.pad_token_id)
    assert out.shape == (8, enc["input_ids"].shape[1] + 6) and keep.outside_picks > 0
    m = {}
    for beta in (0.0, 50.0):
        torch.manual_seed(1)
        _, mg = SASADecoder(model, sub.direction, sub.midpoint, beta=beta, mode="tilt", max_candidates=20,
                            outside="mask").generate(enc["input_ids"], enc["attention_mask"], top_p=0.9,
                                                     max_new_tokens=6, num_return_sequences=2,
                                                     pad_token_id=tok.pad_token_id, return_margins=True)
        m[beta] = mg.nanmean().item()
    assert m[50.0] > m[0.0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decoding_matches_generate_and_one_at_a_time(tiny):
    """On the GPU (CUDA kernel of the op, CUDA RNG): beta = 0 is generate()'s sampling, and the
    batched greedy path equals the one-at-a-time form."""
    import copy

    model = copy.deepcopy(tiny["llama"]).cuda()
    enc = {k: v.cuda() for k, v in _enc(tiny["tok"]).items()}
    w, m = tiny["w"].cuda(), tiny["m"].cuda()
    dec = SASADecoder(model, w, m, beta=0.0, max_candidates=8, outside="mask")
    torch.manual_seed(0)
    ref = model.generate(**enc, do_sample=True, top_p=0.9, top_k=8, max_new_tokens=8, num_return_sequences=2,
                         pad_token_id=0)
    torch.manual_seed(0)
    got = dec.generate(enc["input_ids"], enc["attention_mask"], top_p=0.9, top_k=8, max_new_tokens=8,
                       num_return_sequences=2, pad_token_id=0)
    assert torch.equal(ref, got[:, :ref.shape[1]])
    keep = SASADecoder(model, w, m, beta=0.0, max_candidates=2)  # the rider path on the GPU, no host sync
    out = keep.generate(enc["input_ids"], enc["attention_mask"], top_p=0.95, max_new_tokens=8, pad_token_id=0)
    assert out.shape[1] == enc["input_ids"].shape[1] + 8 and keep.outside_picks > 0
    dec = SASADecoder(model, w, m, beta=6.0, max_candidates=8, outside="mask")
    batched = dec.generate(enc["input_ids"], enc["attention_mask"], do_sample=False, max_new_tokens=8, pad_token_id=0)
    one = sasa_generate_one_at_a_time(model, enc["input_ids"], enc["attention_mask"], w, m, beta=6.0, max_candidates=8,
                                      do_sample=False, max_new_tokens=8, pad_token_id=0)
    assert torch.equal(batched[:, enc["input_ids"].shape[1]:].cpu(), one)
