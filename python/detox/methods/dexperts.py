"""DExperts: the base scores, nucleus-filtered, plus alpha times (expert - anti-expert) logits."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..generation.processors import DExpertsLogitsProcessor
from ._contrast import ContrastMethod
from .base import Sampling, Settings, setting


@dataclass
class DExpertsSettings(Settings):
    alpha: float = setting(2.0, "weight of the expert - anti-expert difference (0 = the base model, top-p filtered)")
    top_p: float = setting(0.9, "nucleus filter on the base scores before the experts are added (sampling then "
                                "uses no further truncation)", min=0.0, min_exclusive=True, max=1.0)
    expert_model: str | None = setting(None, "the expert model: HF id, directory or embedded name",
                                       metavar="MODEL", default_text="none, the base model's own scores")


class DExperts(ContrastMethod):
    name = "dexperts"
    title = "DExperts: expert and anti-expert (toxic) models steer the base scores"
    paper = "Liu et al. (ACL 2021)"
    order = 30
    docs = "docs/methods/dexperts.md"
    Settings = DExpertsSettings

    def setup(self, expert=None, **extra_models):
        """``expert``: a loaded ``(model, tokenizer)`` pair; else ``settings.expert_model`` is loaded."""
        super().setup(**extra_models)
        self.expert = None
        if expert is None and self.settings.expert_model:
            from ..models import load_causal_lm

            expert = load_causal_lm(self.settings.expert_model, device=self.models.device,
                                    dtype=self.models.model.dtype)
        if expert is not None:
            from ..models import check_same_vocabulary

            em, etok = expert
            check_same_vocabulary(self.models.tokenizer, etok, self.models.model, em)
            self.expert = em.eval()

    def processor(self, attention_mask):
        s = self.settings
        return DExpertsLogitsProcessor(self.expert, self.models.toxic, alpha=s.alpha, top_p=s.top_p,
                                       **self.common(attention_mask))

    def generate_kwargs(self, s: Sampling) -> dict:
        return super().generate_kwargs(replace(s, top_p=1.0))  # DExperts filters the base scores itself
