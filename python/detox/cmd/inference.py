"""CMD inference: the trained model writes its chain, the caller gets only the generation part.

Two ``generate`` calls per batch, no per-token host work: (1) from ``# Text: {prompt} # Let's
detoxify step by step.`` the model writes the chain up to ``# Generation:`` (a stop string; at most
``chain_tokens`` tokens); (2) from the prompt and that chain it writes the continuation
(``max_new_tokens``, as for every other method), cut at the chain's closing `` #``. A chain that
never reached ``# Generation:`` within the budget gets the step appended, so every row still has a
continuation of the same length budget; :attr:`ChainStats` counts those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
def generate_chain_batch(gen, prompts: list[str], *, num_samples=1, max_new_tokens=20, top_p=0.9, temperature=1.0,
                         do_sample=True, seed=0, chain_tokens: int = 96) -> list[list[str]]:
    """``result[i][j]``: the generation part of sample j of prompt i; the full chains are kept in
    ``gen.last_chains`` (same layout) and counts in ``gen.chain_stats``."""
    tok, model = gen.tokenizer, gen.model
    gen.validate(prompts, max_new_tokens + chain_tokens)
    kw = dict(do_sample=do_sample, pad_token_id=tok.pad_token_id)
    if do_sample:
        kw.update(top_p=top_p, temperature=temperature, top_k=0)
    prefixes = [C.inference_prefix(p) for p in prompts]
    enc = tok(prefixes, return_tensors="pt", padding=True, padding_side="left")
    ids, mask = enc["input_ids"].to(gen.device), enc["attention_mask"].to(gen.device)
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=chain_tokens,
                         num_return_sequences=num_samples, stop_strings=[C.GENERATION], tokenizer=tok, **kw)
    chains = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    cut = [_cut_chain(c) for c in chains]
    rows = [prefixes[i // num_samples] + " " + c.strip() for i, (c, _) in enumerate(cut)]
    enc2 = tok(rows, return_tensors="pt", padding=True, padding_side="left")
    ids2, mask2 = enc2["input_ids"].to(gen.device), enc2["attention_mask"].to(gen.device)
    out2 = model.generate(input_ids=ids2, attention_mask=mask2, max_new_tokens=max_new_tokens, **kw)
    conts = tok.batch_decode(out2[:, ids2.shape[1]:], skip_special_tokens=True)
    gens, full = [], []
    st = getattr(gen, "chain_stats", None) or ChainStats()
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
    gen.chain_stats = st
    n = num_samples
    gen.last_chains = [full[i * n:(i + 1) * n] for i in range(len(prompts))]
    return [gens[i * n:(i + 1) * n] for i in range(len(prompts))]
