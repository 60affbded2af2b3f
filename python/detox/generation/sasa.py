"""SASA decoding (Ko et al., ICLR 2025; the decoding step of ``docs/methods/self-disciplined-sampling.md``) for a whole batch at once.

Each step of :class:`SASADecoder`:

1. the next-token scores of every row go through the HuggingFace warpers of plain sampling
   (temperature, top-k, top-p: the same classes ``generate`` uses); the candidates ``C`` are the
   at most ``K = max_candidates`` tokens with the highest finite warped score;
2. **one** forward of the LM's decoder over the ``B x K`` candidate tokens, fed as a length-K
   "sequence" per row with every position id equal to the row's next position and a 4D additive
   attention mask in which each candidate sees the row's (unpadded) prefix and itself only, so the
   K candidates share the row's prefix KV cache (no K-fold copy);
3. the fused op :func:`detox_kernels.sasa_reweight` adds ``beta * softmax(margins)`` (or
   ``beta * margins``) to the candidates' scores, in place;
4. sampling (``softmax`` then ``torch.multinomial``, as ``generate`` samples; see below for the
   tokens outside ``C``), so with ``beta = 0`` the tokens are plain sampling's;
5. the sampled candidate's KV entries are kept in the cache (gathered among the last K positions,
   the other K - 1 dropped) and its hidden state gives the next step's logits through the LM head:
   no separate forward for the chosen token.

Tokens outside ``C`` keep their score by default (``outside="keep"``, as the spec says). Their
scores do not depend on the forward, so, when more than K tokens survive the warpers, one outside
token ``o`` per row is drawn beforehand from the outside tokens alone (the best one when greedy)
and rides along as candidate K + 1 of the same forward (not re-weighted); the token is then drawn
among the K re-weighted candidates and one "outside" slot scored ``logsumexp`` of the outside
scores (their max when greedy). That is exactly the distribution of sampling over the whole
vocabulary, with no extra forward and no host synchronisation; it consumes the random stream
differently from ``generate``, so with ``beta = 0`` the tokens are plain sampling's in
distribution, not draw for draw. ``outside="mask"`` samples among the candidates only, with one
draw over the vocabulary as ``generate`` makes (``beta = 0`` and ``top_k = K`` give ``generate``'s
tokens exactly).

Supported: decoder-only HuggingFace models whose logits are ``lm_head(last_hidden_state)`` and
whose attention honours a custom 4D mask with a ``DynamicCache``: tested on the Llama family
(SmolLM2) and GPT-2 with eager and sdpa attention; other decoder-only models built the same way
(Qwen2, Mistral without a sliding window) should work but are untested. Flash-attention kernels
ignore 4D masks and are not supported. The public implementation's form (one sequence at a time, K copies of the cache) is
``bench/sasa_one_at_a_time.py``, the baseline of the benchmarks and tests.
"""

from __future__ import annotations

import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicCache

import detox_kernels

from .processors import cache_keyword, model_cache


def _warpers(temperature: float, top_k: int, top_p: float) -> LogitsProcessorList:
    """The warpers ``generate(do_sample=True, temperature=, top_k=, top_p=)`` builds, in its order."""
    w = LogitsProcessorList()
    if temperature is not None and temperature != 1.0:
        w.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        w.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        w.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    return w


def _decoder_and_head(model):
    base = model.base_model
    head = model.get_output_embeddings()
    if base is model or head is None:
        raise ValueError(f"SASA needs a causal LM with a decoder and an LM head; {type(model).__name__} has "
                         f"{'no decoder' if base is model else 'no output embeddings'}")
    return base, head


def _positions(mask: torch.Tensor) -> torch.Tensor:
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


class SASADecoder:
    """Batched SASA decoding with one K-candidate forward per step (see the module docstring).

    Args:
        model: a HuggingFace causal LM (eval mode).
        direction, midpoint: the subspace (``[D]``; see :mod:`detox.sasa`).
        beta: strength (``0`` = plain sampling). mode: ``"softmax"`` or ``"tilt"``.
        max_candidates: K. outside: ``"keep"`` (tokens outside the candidates keep their scores;
            exact in distribution, no host sync) or ``"mask"`` (sample among the candidates only).
        backend: force a backend of the fused op (default: automatic).
    """

    def __init__(self, model, direction, midpoint, *, beta: float = 10.0, mode: str = "softmax",
                 max_candidates: int = 50, outside: str = "keep", backend: str | None = None):
        if outside not in ("keep", "mask"):
            raise ValueError(f"outside must be 'keep' or 'mask', got {outside!r}")
        if mode not in ("softmax", "tilt"):
            raise ValueError(f"mode must be 'softmax' or 'tilt', got {mode!r}")
        if int(max_candidates) < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}")
        cfg = model.config
        if getattr(cfg, "final_logit_softcapping", None):
            raise ValueError("SASA decoding takes the next-token scores from the LM head directly and does not apply "
                             "final_logit_softcapping (Gemma 2/3); such models are not supported")
        if str(getattr(cfg, "_attn_implementation", "") or "").startswith("flash"):
            raise ValueError("SASA decoding needs an attention implementation that honours 4D masks (eager or sdpa); "
                             f"this model uses {cfg._attn_implementation}")
        self.model = model
        self.base, self.head = _decoder_and_head(model)
        self._cache_kw = cache_keyword(self.base)  # "cache" (transformers 5.x) or "past_key_values"
        p = next(model.parameters())
        d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
        self.direction = torch.as_tensor(direction, dtype=torch.float32).to(p.device).reshape(-1)
        self.midpoint = torch.as_tensor(midpoint, dtype=torch.float32).to(p.device).reshape(-1)
        if self.direction.shape != (d,) or self.midpoint.shape != (d,):
            raise ValueError(f"the subspace has dimension {tuple(self.direction.shape)} but the model's hidden size "
                             f"is {d}: it was fitted on another model")
        self.beta = float(beta)
        self.mode = mode
        self.k = int(max_candidates)
        self.outside = outside
        self.backend = backend
        self._outside_picks = None  # tokens drawn from outside the candidates (outside="keep"), a device counter

    @property
    def outside_picks(self) -> int:
        """How many tokens (of running rows) were drawn from outside the K candidates so far (reads
        a device counter: not for the per-token path)."""
        return 0 if self._outside_picks is None else int(self._outside_picks)

    # ------------------------------------------------------------------ pieces
    def _prefill(self, ids, mask):
        cache = DynamicCache(config=self.model.config)
        out = self.base(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True,
                        **{self._cache_kw: cache})
        h = out.last_hidden_state[:, -1]
        return self.head(h).float(), model_cache(out)

    def _candidate_mask(self, attn: torch.Tensor, k: int, dtype) -> torch.Tensor:
        """Additive ``[B, 1, K, T + K]`` mask: each candidate sees the row's prefix and itself."""
        b, t = attn.shape
        neg = torch.finfo(dtype).min
        prefix = torch.zeros(b, 1, k, t, dtype=dtype, device=attn.device).masked_fill(attn[:, None, None, :] == 0, neg)
        eye = torch.eye(k, dtype=torch.bool, device=attn.device)
        own = torch.full((k, k), neg, dtype=dtype, device=attn.device).masked_fill(eye, 0.0)
        return torch.cat([prefix, own.expand(b, 1, k, k)], dim=-1)

    def _candidate_forward(self, cand, attn, pos_next, cache):
        b, k = cand.shape
        t = attn.shape[1]
        dtype = next(self.model.parameters()).dtype
        out = self.base(input_ids=cand, attention_mask=self._candidate_mask(attn, k, dtype),
                        position_ids=pos_next[:, None].expand(b, k), **{self._cache_kw: cache},
                        cache_position=torch.arange(t, t + k, device=cand.device), use_cache=True)
        return out.last_hidden_state  # [B, K, D]

    @staticmethod
    def _keep_chosen(cache, t: int, idx: torch.Tensor):
        """Keep, per row, the KV entry of candidate ``idx[b]`` among positions ``t .. t+K-1``."""
        for layer in cache.layers:
            for name in ("keys", "values"):
                x = getattr(layer, name)  # [B, H, t + K, Dh]
                b, h, _, dh = x.shape
                sel = torch.gather(x[:, :, t:], 2, (idx.view(b, 1, 1, 1)).expand(b, h, 1, dh))
                setattr(layer, name, torch.cat([x[:, :, :t], sel], dim=2))

    # ------------------------------------------------------------------ loop
    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 20, do_sample: bool = True, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, num_return_sequences: int = 1, pad_token_id: int | None = None,
                 eos_token_id=None, min_new_tokens: int = 0, return_margins: bool = False):
        """Like ``model.generate``: returns ``[B * n, L + max_new_tokens]`` token ids (rows finished
        by EOS are padded, as ``generate`` pads them); with ``return_margins=True`` also the
        ``[B * n, max_new_tokens]`` margin of each chosen token (NaN where it was not a candidate).
        ``min_new_tokens``: EOS is suppressed (its logit -inf, before the warpers, as in
        ``generate``) until that many tokens are new."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        n = int(num_return_sequences)
        ids = input_ids.repeat_interleave(n, dim=0)
        attn = attention_mask.to(ids.device).long().repeat_interleave(n, dim=0)
        if eos_token_id is None:
            eos_token_id = self.model.generation_config.eos_token_id
        eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []),
                           device=ids.device, dtype=torch.long)
        if pad_token_id is None:
            pad_token_id = int(eos[0]) if eos.numel() else 0
        warp = _warpers(temperature, top_k, top_p) if do_sample else LogitsProcessorList()
        if min_new_tokens and eos.numel():  # generate's processors run before its warpers
            warp.insert(0, MinNewTokensLengthLogitsProcessor(ids.shape[1], int(min_new_tokens), eos,
                                                             device=ids.device))
        b = ids.shape[0]
        rows = torch.arange(b, device=ids.device)
        logits, cache = self._prefill(ids, attn)
        pos_next = attn.sum(-1)  # the next position id of each row
        unfinished = torch.ones(b, dtype=torch.long, device=ids.device)
        beta = torch.full((b,), self.beta, dtype=torch.float32, device=ids.device)
        margins_out = []
        # a top-k warper with top_k <= K leaves nothing outside the candidates: no rider needed
        inside_only = bool(do_sample and top_k and 0 < top_k <= self.k)
        if self._outside_picks is None:
            self._outside_picks = torch.zeros((), dtype=torch.long, device=ids.device)
        for _ in range(max_new_tokens):
            scores = warp(ids, logits)
            k = min(self.k, scores.shape[1])
            top, cand = scores.topk(k, dim=-1)
            valid = torch.isfinite(top)
            t = attn.shape[1]
            # outside="keep" (and tokens beyond K exist): one outside token per row rides along as
            # candidate K + 1; its slot's score stands for all outside tokens (see the module docstring)
            ride = self.outside == "keep" and k < scores.shape[1] and not inside_only
            if ride:
                out_scores = scores.scatter(1, cand, float("-inf"))
                if do_sample:
                    slot_out = torch.logsumexp(out_scores, dim=-1)  # -inf where nothing is outside
                    some = torch.isfinite(slot_out)[:, None]
                    probs_out = torch.softmax(torch.where(some, out_scores, torch.zeros_like(out_scores)), dim=-1)
                    o = torch.multinomial(probs_out, num_samples=1)
                else:
                    slot_out, o = out_scores.max(dim=-1, keepdim=True)
                    slot_out = slot_out.squeeze(1)
                hidden = self._candidate_forward(torch.cat([cand, o], 1), attn, pos_next, cache)
                cand_hidden = hidden[:, :k].contiguous()
            else:
                hidden = cand_hidden = self._candidate_forward(cand, attn, pos_next, cache)
            _, margins = detox_kernels.sasa_reweight(scores, cand, cand_hidden, self.direction, self.midpoint, beta,
                                                     mode=self.mode, valid=valid, return_margins=True,
                                                     backend=self.backend)
            if ride:
                slots = torch.cat([scores.gather(1, cand), slot_out[:, None]], dim=1)  # [B, K + 1]
                if do_sample:
                    idx = torch.multinomial(torch.softmax(slots, dim=-1), num_samples=1).squeeze(1)
                else:
                    idx = slots.argmax(dim=-1)
                nxt = torch.cat([cand, o], 1).gather(1, idx[:, None]).squeeze(1)
                is_cand = idx < k
                self._outside_picks += (~is_cand & unfinished.bool()).sum()
            else:
                if self.outside == "mask":
                    scores = torch.full_like(scores, float("-inf")).scatter_(1, cand, scores.gather(1, cand))
                if do_sample:
                    probs = torch.nn.functional.softmax(scores, dim=-1)
                    nxt = torch.multinomial(probs, num_samples=1).squeeze(1)
                else:
                    nxt = scores.argmax(dim=-1)
                match = (cand == nxt[:, None]) & valid
                is_cand = match.any(dim=1)
                idx = match.int().argmax(dim=1)
            nxt = nxt * unfinished + pad_token_id * (1 - unfinished)
            if return_margins:
                margins_out.append(torch.where(is_cand, margins[rows, idx.clamp(max=k - 1)], float("nan")))
            self._keep_chosen(cache, t, idx)
            attn = torch.cat([attn, attn.new_ones(b, 1)], dim=1)
            logits = self.head(hidden[rows, idx]).float()
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            pos_next = pos_next + 1
            if eos.numel():
                unfinished = unfinished * (~torch.isin(nxt, eos)).long()
        if return_margins:
            return ids, (torch.stack(margins_out, 1) if margins_out else torch.empty(b, 0))
        return ids
