"""CMD inference: the trained model writes its chain, the caller gets only the generation part.

Two ``generate`` calls per batch, no per-token host work: (1) from ``# Text: {prompt} # Let's
detoxify step by step.`` the model writes the chain up to ``# Generation:`` (a stop string; at most
``chain_tokens`` tokens); (2) from the prompt and that chain it writes the continuation
(``max_new_tokens``, as for every other method), cut at the chain's closing `` #``. A chain that
never reached ``# Generation:`` within the budget gets the step appended, so every row still has a
continuation of the same length budget; :class:`ChainStats` counts those.

Both functions return a :class:`~detox.methods.base.GenerationResult`: the continuations, the full
chains as the extra output ``chains`` and this batch's :class:`ChainStats` as ``stats``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..methods.base import GenerationResult, Models, Sampling
from . import chain as C


@dataclass
class ChainStats:
    rows: int = 0
    reached_generation: int = 0   # the model itself wrote "# Generation:"
    said_toxic: int = 0
    said_non_toxic: int = 0
    closed: int = 0               # the generation step was closed with " #"


def _cut_chain(text: str) -> tuple[str, bool]:
    i = text.find(C.GENERATION)
    if i >= 0:
        return text[:i + len(C.GENERATION)], True
    return f"{text.rstrip()} {C.GENERATION}", False


@torch.inference_mode()
def generate_chain_batch(models: Models, prompts: list[str], s: Sampling, *, chain_tokens: int = 96
                         ) -> GenerationResult:
    """``texts[i][j]``: the generation part of sample j of prompt i; ``extras["chains"]`` the full
    chains (same layout), ``stats`` the batch's :class:`ChainStats`."""
    tok, model = models.tokenizer, models.model
    num_samples, max_new_tokens = s.num_samples, s.max_new_tokens
    models.check_prompts(prompts, max_new_tokens + chain_tokens)
    kw = _sampling_kwargs(tok, s)
    prefixes = [C.inference_prefix(p) for p in prompts]
    enc = tok(prefixes, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = enc["input_ids"].to(models.device), enc["attention_mask"].to(models.device)
    torch.manual_seed(s.seed)
    chain_kw = {k: v for k, v in kw.items() if k != "min_new_tokens"}  # min_new_tokens: the generation only
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=chain_tokens,
                         num_return_sequences=num_samples, stop_strings=[C.GENERATION], tokenizer=tok, **chain_kw)
    chains = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    cut = [_cut_chain(c) for c in chains]
    rows = [prefixes[i // num_samples] + " " + c.strip() for i, (c, _) in enumerate(cut)]
    enc2 = tok(rows, return_tensors="pt", padding=True, padding_side="left")
    ids2, mask2 = enc2["input_ids"].to(models.device), enc2["attention_mask"].to(models.device)
    out2 = model.generate(input_ids=ids2, attention_mask=mask2, max_new_tokens=max_new_tokens, **kw)
    conts = tok.batch_decode(out2[:, ids2.shape[1]:], skip_special_tokens=True)
    gens, full = [], []
    st = ChainStats()
    for (c, reached), g, r in zip(cut, conts, rows):
        end = g.find(" #")
        closed = end >= 0
        g = g[:end] if closed else g
        gens.append(g.strip() if closed else g)
        full.append(r + " " + g.strip() + (" #" if closed else ""))
        p = C.parse_chain(c)
        st.rows += 1
        st.reached_generation += reached
        st.said_toxic += p.toxic is True
        st.said_non_toxic += p.toxic is False
        st.closed += closed
    return _result(gens, full, st, num_samples)


def _sampling_kwargs(tok, s: Sampling) -> dict:
    kw = dict(do_sample=s.do_sample, pad_token_id=tok.pad_token_id)
    if s.min_new_tokens:
        kw["min_new_tokens"] = s.min_new_tokens
    if s.do_sample:
        kw.update(top_p=s.top_p, temperature=s.temperature, top_k=s.top_k)
    return kw


def _result(gens: list[str], full: list[str], st: ChainStats, n: int) -> GenerationResult:
    rows = len(gens) // n
    return GenerationResult([gens[i * n:(i + 1) * n] for i in range(rows)],
                            extras={"chains": [full[i * n:(i + 1) * n] for i in range(rows)]}, stats=asdict(st))


def _phrase_logprob(model, tok, contexts: list[str], phrase: str, device) -> torch.Tensor:
    """Sum of log p(phrase tokens | context) per context (one batched forward, right-padded)."""
    texts = [f"{c} {phrase}" for c in contexts]
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="right", return_offsets_mapping=True)
    off = enc.pop("offset_mapping")
    start = torch.tensor([len(c) for c in contexts]).unsqueeze(1)
    in_phrase = (off[..., 0] >= start) & (off[..., 1] > off[..., 0]) & enc["attention_mask"].bool()
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
    tok_lp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (tok_lp * in_phrase[:, 1:].to(device)).sum(-1)


@torch.inference_mode()
def generate_guided_chain_batch(models: Models, prompts: list[str], s: Sampling, *, chain_tokens: int = 96,
                                hash_ids: list[int]) -> GenerationResult:
    """Guided chain: the step headers of the chain are written by the driver, the model writes each step.

    The model decides "toxic" / "not toxic" (the likelier of the two step texts), then writes the
    masked prompt and the detoxified prompt (each up to its first "#"), then the generation:
    ``max_new_tokens`` tokens in which "#" tokens are suppressed, so that, as with every other method,
    the scored continuation is a full-length sample (the driver closes the chain with " #").
    ``hash_ids``: the token ids containing "#". Same outputs as :func:`generate_chain_batch`.
    """
    tok, model, dev = models.tokenizer, models.model, models.device
    num_samples, max_new_tokens = s.num_samples, s.max_new_tokens
    models.check_prompts(prompts, max_new_tokens + chain_tokens)
    kw = _sampling_kwargs(tok, s)

    def run(texts, n_new, stop=True, suppress=None):
        enc = tok(texts, return_tensors="pt", padding=True, padding_side="left")
        ids = enc["input_ids"].to(dev)
        extra = dict(stop_strings=["#"], tokenizer=tok) if stop else {}
        # a chain step stops at its "#"; min_new_tokens is for the generation step only
        step_kw = {k: v for k, v in kw.items() if not (stop and k == "min_new_tokens")}
        out = model.generate(input_ids=ids, attention_mask=enc["attention_mask"].to(dev), max_new_tokens=n_new,
                             suppress_tokens=suppress, **extra, **step_kw)
        return [t.split("#", 1)[0].strip() if stop else t
                for t in tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]

    prefixes = [C.inference_prefix(p) for p in prompts]
    toxic_p = (_phrase_logprob(model, tok, prefixes, C.TOXIC, dev)
               > _phrase_logprob(model, tok, prefixes, C.NON_TOXIC, dev)).tolist()
    n = num_samples
    rows = [prefixes[i // n] for i in range(len(prompts) * n)]
    toxic = [toxic_p[i // n] for i in range(len(rows))]
    torch.manual_seed(s.seed)
    ctx = [f"{r} {C.TOXIC if t else C.NON_TOXIC}" for r, t in zip(rows, toxic)]
    tix = [i for i, t in enumerate(toxic) if t]
    if tix:
        budget = max(4, min(chain_tokens // 2, max(len(tok(prompts[i // n])["input_ids"]) for i in tix) + 8))
        sub = [f"{ctx[i]} {C.DETECT}" for i in tix]
        masked = run(sub, budget)
        sub = [f"{s} {m} {C.DETOXIFY}" for s, m in zip(sub, masked)]
        filled = run(sub, budget)
        for i, s, f in zip(tix, sub, filled):
            ctx[i] = f"{s} {f}"
    ctx = [f"{c} {C.GENERATION}" for c in ctx]
    conts = run(ctx, max_new_tokens, stop=False, suppress=hash_ids)
    st = ChainStats(rows=len(rows), reached_generation=len(rows), said_toxic=sum(toxic),
                    said_non_toxic=len(rows) - sum(toxic), closed=len(rows))
    full = [f"{c} {g.strip()}{C.END}" for c, g in zip(ctx, conts)]
    return _result(conts, full, st, n)
