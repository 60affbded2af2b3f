"""HuggingFace ``LogitsProcessor``s for SoCD and the contrastive baselines.

Each processor owns the auxiliary model(s) it contrasts with (toxic model, amateur, expert,
anti-expert) and runs them incrementally beside ``generate``: the first call feeds the whole
(left-padded) prompt with its attention mask and position ids, later calls feed only the
newly generated token, reusing the auxiliary model's own KV cache. No host synchronisation,
no loop over rows. Pass them to ``model.generate(..., logits_processor=LogitsProcessorList([p]))``:
generate places custom processors after the non-warping ones (repetition penalty, ...) and
before temperature / top-k / top-p, which is where SoCD belongs: it acts on the raw scores,
before any truncation or temperature (the method and the baselines' rules are described in the
repository's ``docs/methods/``).

The processors never write into the scores they are given: generate may hand them the very
tensor it records as the raw logits (``output_logits=True``), so each returns a new tensor.

Only greedy and multinomial sampling are supported (beam search reorders rows). Use one processor
per ``generate`` call (or call ``reset()``): a new call is recognised by its sequence length only.
An auxiliary model may be primed with a prefilled KV cache (:meth:`AuxiliaryLM.prime`), reached
through the processor's ``auxiliaries``.

The KV cache is passed under the keyword the model's forward declares (``cache`` in transformers
5.x, where ``past_key_values`` is deprecated; ``past_key_values`` in 4.x), see
:func:`cache_keyword` and :func:`model_cache`.
"""

from __future__ import annotations

import inspect
import math

import torch
from transformers import GenerationMixin, LogitsProcessor

import detox_kernels


def _declares(fn, name: str) -> bool | None:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    return name in params


# The installed transformers' convention, for a forward that declares neither name (``**kwargs``).
_LIBRARY_CACHE_KEYWORD = ("cache" if _declares(GenerationMixin.prepare_inputs_for_generation, "cache")
                          else "past_key_values")


def cache_keyword(model) -> str:
    """The keyword under which ``model``'s forward (and so its ``generate``) takes a KV cache:
    ``cache`` in current transformers (5.x, where ``past_key_values`` is deprecated and warns),
    ``past_key_values`` in earlier ones (4.56, ...), where ``cache=`` would be silently ignored.
    Read from the forward's signature; a forward declaring neither gets the installed library's."""
    fwd = getattr(model, "forward", model)
    if _declares(fwd, "cache"):
        return "cache"
    if _declares(fwd, "past_key_values"):
        return "past_key_values"
    return _LIBRARY_CACHE_KEYWORD


def model_cache(output):
    """The KV cache a forward returned: ``output.cache`` where the output class has that field
    (transformers 5.x, where reading ``past_key_values`` logs a deprecation), else
    ``output.past_key_values``."""
    fields = getattr(output, "__dataclass_fields__", None) or {}
    if "cache" in fields:
        return output.cache
    return output.past_key_values


class AuxiliaryLM:
    """Runs a causal LM in step with ``generate`` and returns its next-token logits.

    ``attention_mask`` is the prompt's mask (``[B, L]``, 0 on left padding), as given to
    ``generate``; with ``num_return_sequences=n`` generate repeats each row ``n`` times and
    the mask is expanded the same way. Without a mask, padding is inferred from
    ``pad_token_id`` (left padding only) or assumed absent.

    The first call of a ``generate`` run normally feeds the whole prompt; :meth:`prime` hands
    over a prefilled cache instead.
    """

    def __init__(self, model, attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None,
                 temperature: float = 1.0):
        self.model = model
        self.prompt_mask = attention_mask
        self.pad_token_id = pad_token_id
        self.temperature = float(temperature)
        self._cache_kw = cache_keyword(model)  # the model's forward signature, inspected once
        self.reset()

    def reset(self):
        self.cache = None
        self.mask = None
        self.seen = 0
        self.rows = None

    def prime(self, cache, attention_mask: torch.Tensor) -> None:
        """Start the next ``generate`` run from a prefilled KV cache instead of the prompt.

        Contract: ``attention_mask`` is the prompt's mask as generate will run it (``[B, L]``,
        one row per generated sequence, i.e. after any ``num_return_sequences`` expansion, left
        padded so that the last position is a real token). ``cache`` holds this model's keys and
        values for the prompt's first ``L - 1`` positions, for those ``B`` rows, computed with that
        mask (``[:, :L-1]``) and the matching position ids (``cumsum - 1`` of the mask). The next
        :meth:`next_logits` call, generate's first step with ``input_ids`` of length ``L``, then
        feeds only the last prompt token. Any other first call (another length or row count)
        discards the primed cache and prefills from scratch.
        """
        if attention_mask.dim() != 2 or attention_mask.shape[1] < 2:
            raise ValueError(f"prime: attention_mask must be [B, L] with L >= 2, got {tuple(attention_mask.shape)}")
        rows, length = attention_mask.shape
        get_len = getattr(cache, "get_seq_length", None)
        if get_len is not None and int(get_len()) != length - 1:
            raise ValueError(f"prime: the cache must cover all prompt positions but the last ({length - 1}), "
                             f"it covers {int(get_len())}")
        self.cache = cache
        self.mask = attention_mask[:, :-1].long()
        self.seen = length - 1
        self.rows = rows

    def _prompt_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        b = input_ids.shape[0]
        m = self.prompt_mask
        if m is None:
            if self.pad_token_id is None:
                return torch.ones_like(input_ids)
            # left padding: pads form a prefix; a pad id inside the text (pad == eos) stays attended
            is_text = input_ids != self.pad_token_id
            return (is_text.long().cumsum(-1) > 0).long()
        m = m.to(input_ids.device)
        if m.shape[1] != input_ids.shape[1]:
            raise ValueError(
                f"attention_mask covers {m.shape[1]} positions but generation started with {input_ids.shape[1]}; "
                "pass the prompt's attention mask (the one given to generate)"
            )
        if m.shape[0] != b:
            if b % m.shape[0]:
                raise ValueError(f"attention_mask has {m.shape[0]} rows, generation has {b}")
            m = m.repeat_interleave(b // m.shape[0], dim=0)  # num_return_sequences expansion
        return m.long()

    @torch.inference_mode()
    def next_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        # generate adds exactly one token per call; anything else is a new generate call
        if self.cache is None or length != self.seen + 1 or input_ids.shape[0] != self.rows:
            self.reset()
            self.rows = input_ids.shape[0]
            self.mask = self._prompt_mask(input_ids)
            new = input_ids
        else:
            new = input_ids[:, self.seen:]
            ones = torch.ones(new.shape, dtype=self.mask.dtype, device=self.mask.device)
            self.mask = torch.cat([self.mask, ones], dim=1)
        pos = (self.mask.cumsum(-1) - 1).clamp_min(0)[:, -new.shape[1]:]
        out = self.model(
            input_ids=new.to(self.model.device),
            attention_mask=self.mask.to(self.model.device),
            position_ids=pos.to(self.model.device),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: self.cache},
        )
        self.cache = model_cache(out)
        self.seen = length
        logits = out.logits[:, -1, :].to(device=input_ids.device, dtype=torch.float32)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits


def _match_width(aux: torch.Tensor, width: int) -> torch.Tensor:
    """Pad (with -inf) or cut an auxiliary model's logits to the base model's output width."""
    if aux.shape[-1] == width:
        return aux
    if aux.shape[-1] > width:
        return aux[:, :width]
    return torch.nn.functional.pad(aux, (0, width - aux.shape[-1]), value=-math.inf)


class _AuxProcessor(LogitsProcessor):
    def __init__(self, models, attention_mask=None, pad_token_id=None, vocab_size=None, temperatures=None):
        temperatures = temperatures or [1.0] * len(models)
        self.aux = [AuxiliaryLM(m, attention_mask, pad_token_id, t) if m is not None else None
                    for m, t in zip(models, temperatures)]
        self.vocab_size = vocab_size

    @property
    def auxiliaries(self) -> tuple[AuxiliaryLM, ...]:
        """The auxiliary models this processor runs, in its documented order (e.g. to
        :meth:`AuxiliaryLM.prime` them with a prefilled cache before ``generate``)."""
        return tuple(a for a in self.aux if a is not None)

    def combine(self, scores: torch.Tensor, aux: list) -> torch.Tensor:
        """The method's rule for one step: new scores from the base model's ``scores`` ``[B, V]``
        (float32) and ``aux[i]``, the logits of auxiliary ``i`` (``None`` where that slot has no
        model), each already at its temperature and cut or padded to the base width. ``__call__``
        runs the auxiliary models and calls it; the fast decoding loop
        (:mod:`detox.generation.fast`) calls it with the logits of its own static-cache forwards,
        so both paths share one formula."""
        raise NotImplementedError

    def reset(self):
        for a in self.aux:
            if a is not None:
                a.reset()

    def _aux_logits(self, i, input_ids, scores):
        return _match_width(self.aux[i].next_logits(input_ids), scores.shape[-1])

    def _vocab(self, scores):
        v = scores.shape[-1] if self.vocab_size is None else min(self.vocab_size, scores.shape[-1])
        return v


class SoCDLogitsProcessor(_AuxProcessor):
    """Soft Contrastive Decoding: per row, a divergence between the base and the toxic model's
    next-token distributions sets how many of the toxic model's preferred tokens are suppressed
    and by how much (see ``docs/methods/``). One fused ``detox_kernels.socd`` call per step,
    into a new tensor (the given scores are left as they are). Keyword arguments are those of
    :func:`detox_kernels.socd`. ``auxiliaries``: ``(toxic,)``."""

    def __init__(self, toxic_model, *, attention_mask=None, pad_token_id=None, vocab_size=None,
                 divergence="l2", k_min=10, k_max=None, k_rounding="ceil", subtract="abs", preset=None,
                 record_stats=False):
        super().__init__([toxic_model], attention_mask, pad_token_id, vocab_size)
        self.kwargs = dict(divergence=divergence, k_min=k_min, k_max=k_max, k_rounding=k_rounding,
                           subtract=subtract, preset=preset)
        self.record_stats = record_stats
        self.stats = []

    def __call__(self, input_ids, scores):
        return self.combine(scores, [self._aux_logits(0, input_ids, scores)])

    def combine(self, scores, aux):
        """The op on one step's base ``scores`` and the toxic model's logits ``aux[0]``."""
        # Not ``out=scores``: generate may record this very tensor as the raw logits. Nor a buffer
        # reused across steps: with ``output_scores=True`` generate keeps the returned tensor of
        # every step. On a GPU the caching allocator makes the fresh tensor cheap.
        new, st = detox_kernels.socd(scores, aux[0], vocab_size=self._vocab(scores), return_stats=True,
                                     **self.kwargs)
        if self.record_stats:
            self.stats.append(st)
        return new


def plausibility_mask(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """``scores >= max(scores) + log(alpha)`` per row (the CD plausibility constraint, in logit space)."""
    if alpha <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores >= scores.max(dim=-1, keepdim=True).values + math.log(alpha)


class ContrastiveDecodingLogitsProcessor(_AuxProcessor):
    """Vanilla contrastive decoding with an amateur (here: the toxic) model, one of the baselines
    described in ``docs/methods/cd.md``. ``auxiliaries``: ``(amateur,)``.

    ``form="obrien"``: ``s = (1+beta) x - beta y`` on the plausible set, ``-inf`` elsewhere
    (alpha = 0.1, beta = 0.5). ``form="li"``: ``log p_expert - log p_amateur`` with the amateur
    at ``amateur_temperature`` (0.5), same plausibility mask. ``alpha=0, beta=0`` with the
    O'Brien form leaves the scores unchanged.
    """

    def __init__(self, amateur_model, *, form="obrien", alpha=0.1, beta=0.5, amateur_temperature=0.5,
                 attention_mask=None, pad_token_id=None, vocab_size=None):
        if form not in ("obrien", "li"):
            raise ValueError(f"form must be 'obrien' or 'li', got {form!r}")
        t = amateur_temperature if form == "li" else 1.0
        super().__init__([amateur_model], attention_mask, pad_token_id, vocab_size, [t])
        self.form, self.alpha, self.beta = form, float(alpha), float(beta)

    def __call__(self, input_ids, scores):
        return self.combine(scores, [self._aux_logits(0, input_ids, scores)])

    def combine(self, scores, aux):
        """The rule on one step's base ``scores`` and the amateur's logits ``aux[0]`` (at its temperature)."""
        y = aux[0]
        keep = plausibility_mask(scores, self.alpha)
        if self.form == "obrien":
            s = scores if self.beta == 0 else (1 + self.beta) * scores - self.beta * y
        else:
            s = torch.log_softmax(scores, -1) - torch.log_softmax(y, -1)
        v = self._vocab(scores)
        keep[:, v:] = False
        return torch.where(keep, s, torch.full_like(s, -math.inf))


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering (as HuggingFace's TopPLogitsWarper): ``-inf`` outside the top-p set."""
    if top_p >= 1.0:
        return scores
    sorted_logits, sorted_idx = torch.sort(scores, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
    return scores.masked_fill(remove, -math.inf)


class DExpertsLogitsProcessor(_AuxProcessor):
    """DExperts (``docs/methods/dexperts.md``):
    ``s = top_p_filter(x, 0.9) + alpha (e - a)``, alpha = 2.0, then sample from ``softmax(s)``
    with no further truncation (generate with ``top_p=1.0``).

    ``expert_model=None`` uses the base scores as the expert (anti-expert only).
    ``auxiliaries``: ``(expert, anti_expert)``, or ``(anti_expert,)`` without an expert model.
    ``alpha=0`` with ``top_p=1`` leaves the scores unchanged.
    """

    def __init__(self, expert_model, anti_expert_model, *, alpha=2.0, top_p=0.9, attention_mask=None,
                 pad_token_id=None, vocab_size=None):
        if anti_expert_model is None:
            raise ValueError("DExperts needs an anti-expert (toxic) model")
        super().__init__([expert_model, anti_expert_model], attention_mask, pad_token_id, vocab_size)
        self.alpha, self.top_p = float(alpha), float(top_p)

    def __call__(self, input_ids, scores):
        a = self._aux_logits(1, input_ids, scores)
        e = None if self.aux[0] is None else self._aux_logits(0, input_ids, scores)
        return self.combine(scores, [e, a])

    def combine(self, scores, aux):
        """The rule on one step's base ``scores`` and ``aux = [expert or None, anti_expert]`` logits."""
        e, a = aux
        e = scores if e is None else e
        filtered = top_p_filter(scores, self.top_p)
        if self.alpha == 0:
            return filtered
        s = filtered + self.alpha * (e - a)
        v = self._vocab(scores)
        s[:, v:] = -math.inf
        return s
