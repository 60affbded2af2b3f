"""Vanilla contrastive decoding with the toxic model as the amateur (a baseline of SoCD)."""

from __future__ import annotations

from dataclasses import dataclass

from ..generation.processors import ContrastiveDecodingLogitsProcessor
from ._contrast import ContrastMethod
from .base import Settings, setting


@dataclass
class CDSettings(Settings):
    form: str = setting("obrien", "obrien: (1+beta) x - beta y (O'Brien & Lewis); li: log-prob difference with the "
                                  "amateur at T = 0.5 (Li et al.)", choices=("obrien", "li"))
    alpha: float = setting(0.1, "plausibility threshold: keep tokens with p >= alpha * max p (0 keeps all)",
                           min=0.0, max=1.0, max_exclusive=True)
    beta: float = setting(0.5, "contrast strength (obrien form)", min=0.0)


class ContrastiveDecoding(ContrastMethod):
    name = "cd"
    title = "contrastive decoding with the toxic model as the amateur"
    paper = "Li et al. (ACL 2023); O'Brien & Lewis (2023)"
    order = 20
    docs = "docs/methods/cd.md"
    Settings = CDSettings

    def processor(self, attention_mask):
        s = self.settings
        return ContrastiveDecodingLogitsProcessor(self.models.toxic, form=s.form, alpha=s.alpha, beta=s.beta,
                                                  **self.common(attention_mask))
