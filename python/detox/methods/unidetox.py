"""UniDetox's distillation sampling rule: base minus toxic logits on the plausible tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..generation.processors import _AuxProcessor, plausibility_mask
from ._contrast import ContrastMethod
from .base import Settings, setting


class UniDetoxLogitsProcessor(_AuxProcessor):
    """UniDetox distillation sampling (``docs/methods/unidetox.md``):
    ``s = x - y`` on ``{x >= max x + log 0.1}``, ``-inf`` elsewhere, with ``y`` the toxic model.
    Used to sample the distillation texts. ``auxiliaries``: ``(toxic,)``."""

    def __init__(self, toxic_model, *, alpha=0.1, attention_mask=None, pad_token_id=None, vocab_size=None):
        super().__init__([toxic_model], attention_mask, pad_token_id, vocab_size)
        self.alpha = float(alpha)

    def __call__(self, input_ids, scores):
        return self.combine(scores, [self._aux_logits(0, input_ids, scores)])

    def combine(self, scores, aux):
        y = aux[0]
        keep = plausibility_mask(scores, self.alpha)
        keep[:, self._vocab(scores):] = False
        return torch.where(keep, scores - y, torch.full_like(scores, -math.inf))


@dataclass
class UniDetoxSettings(Settings):
    alpha: float = setting(0.1, "plausibility threshold: keep tokens with p >= alpha * max p", min=0.0, max=1.0,
                           max_exclusive=True)


class UniDetox(ContrastMethod):
    name = "unidetox"
    title = "UniDetox's sampling rule (base - toxic logits on the plausible set)"
    paper = "Lu et al. (ICLR 2025)"
    order = 40
    docs = "docs/methods/unidetox.md"
    Settings = UniDetoxSettings

    def processor(self, attention_mask):
        return UniDetoxLogitsProcessor(self.models.toxic, alpha=self.settings.alpha, **self.common(attention_mask))
