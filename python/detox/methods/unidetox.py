"""UniDetox's distillation sampling rule: base minus toxic logits on the plausible tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ..generation.processors import UniDetoxLogitsProcessor
from ._contrast import ContrastMethod
from .base import Settings, setting


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
