"""SASA as its public implementation runs it: one sequence at a time, K copies of the prefix cache
per step. The baseline that ``bench_sasa_decode`` times the batched ``SASADecoder`` against, and the
oracle the decoding tests compare it with; not part of the package."""

from __future__ import annotations

import torch
from transformers import DynamicCache, LogitsProcessorList

from detox.generation.processors import cache_keyword
from detox.generation.sasa import _decoder_and_head, _warpers


@torch.inference_mode()
def sasa_generate_one_at_a_time(model, input_ids, attention_mask, direction, midpoint, *, beta=10.0,
                                mode="softmax", max_candidates=50, max_new_tokens=20, do_sample=True,
                                temperature=1.0, top_k=0, top_p=1.0, pad_token_id=None, eos_token_id=None):
    """The public implementation's form: one sequence at a time; each step copies the prefix cache
    K times, runs the K candidates as a batch of K one-token sequences, computes the margins in
    eager PyTorch and re-weights, samples, and keeps the chosen copy. 
    Tokens outside the candidates are masked (there is no other forward to take them from)."""
    base, head = _decoder_and_head(model)
    cache_kw = cache_keyword(base)
    w = torch.as_tensor(direction, dtype=torch.float32)
    m = torch.as_tensor(midpoint, dtype=torch.float32)
    if eos_token_id is None:
        eos_token_id = model.generation_config.eos_token_id
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []))
    warp = _warpers(temperature, top_k, top_p) if do_sample else LogitsProcessorList()
    outs = []
    for r in range(input_ids.shape[0]):
        keep = attention_mask[r].bool()
        ids = input_ids[r:r + 1, keep]  # the row without its padding
        cache = DynamicCache(config=model.config)
        out = base(input_ids=ids, use_cache=True, **{cache_kw: cache})
        logits = head(out.last_hidden_state[:, -1]).float()
        gen = []
        for _ in range(max_new_tokens):
            scores = warp(ids, logits)
            k = min(max_candidates, scores.shape[1])
            top, cand = scores.topk(k, dim=-1)  # [1, K]
            valid = torch.isfinite(top[0])
            big = DynamicCache(config=model.config)
            for li, layer in enumerate(cache.layers):  # K copies of the prefix cache
                big.update(layer.keys.repeat(k, 1, 1, 1), layer.values.repeat(k, 1, 1, 1), li)
            o = base(input_ids=cand.view(k, 1), use_cache=True, **{cache_kw: big})
            h = o.last_hidden_state[:, -1].float()  # [K, D]
            margin = (h - m) @ w
            if mode == "softmax":
                wt = torch.softmax(margin.masked_fill(~valid, float("-inf")), dim=0)
            else:
                wt = margin
            wt = torch.where(valid, wt, torch.zeros_like(wt))
            new = torch.full_like(scores, float("-inf"))
            new[0, cand[0]] = scores[0, cand[0]] + beta * wt
            if do_sample:
                j = int(torch.multinomial(torch.softmax(new, dim=-1), 1))
            else:
                j = int(new.argmax())
            c = int((cand[0] == j).nonzero()[0, 0])
            for li, layer in enumerate(cache.layers):
                layer.keys = big.layers[li].keys[c:c + 1]
                layer.values = big.layers[li].values[c:c + 1]
            logits = head(o.last_hidden_state[c:c + 1, -1]).float()
            gen.append(j)
            ids = torch.cat([ids, torch.tensor([[j]], device=ids.device)], dim=1)
            if j in eos:
                break
        outs.append(gen)
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    res = torch.full((len(outs), max_new_tokens), pad, dtype=torch.long)
    for i, g in enumerate(outs):
        res[i, :len(g)] = torch.tensor(g, dtype=torch.long)
    return res
