"""Toxification Reversal: per-head attention directions read from a negative and a positive prefix,
reversed in place in the base model's forward."""

from __future__ import annotations

from dataclasses import dataclass

from ..generation.reversal import NEG_PREFIX, POS_PREFIX
from .base import Method, Sampling, Settings, SettingsError, setting


@dataclass
class ReversalSettings(Settings):
    layers: str | None = setting(None, "layers to modify, e.g. 8-20 or 10,12,-1", metavar="LAYERS",
                                 default_text="all")
    norm_exp: float = setting(0.4, "exponent of the direction's norm in the scale", min=0.0)
    sim_exp: float = setting(0.6, "exponent of the similarity to the toxic direction in the scale", min=0.0)
    renorm: bool = setting(True, "renormalise each modified head output to its original norm")
    neg_prefix: str = setting(NEG_PREFIX, "the negative (toxic) prefix", metavar="TEXT",
                              default_text="the paper's")
    pos_prefix: str = setting(POS_PREFIX, "the positive prefix ('' for the empty prefix)", metavar="TEXT",
                              default_text="the paper's")


class Reversal(Method):
    name = "reversal"
    title = "Toxification Reversal: attention-head directions from two prefixes, reversed in place"
    paper = "Leong et al. (EMNLP 2023)"
    order = 50
    docs = "docs/methods/reversing-toxification.md"
    Settings = ReversalSettings

    def setup(self, **extra_models):
        from ..generation.reversal import ToxificationReversal

        super().setup(**extra_models)
        s, m = self.settings, self.models
        try:
            self.reversal = ToxificationReversal(m.model, m.tokenizer, layers=s.layers, norm_exp=s.norm_exp,
                                                 sim_exp=s.sim_exp, renorm=s.renorm, neg_prefix=s.neg_prefix,
                                                 pos_prefix=s.pos_prefix)
        except ValueError as e:  # a layer selection or prefix that does not fit this model
            if "layer" in str(e) or "prefix" in str(e):
                raise SettingsError(str(e)) from e
            raise

    _prompts = None

    def generate(self, prompts, s: Sampling):
        self._prompts = list(prompts)  # the read pass tokenises prefix + prompt text, as the authors do
        try:
            return super().generate(prompts, s)
        finally:
            self._prompts = None

    def decode(self, input_ids, attention_mask, s: Sampling):
        # HF generate with the sampling settings (top_p, top_k, min_new_tokens) and the hooks
        with self.reversal.active(prompts=self._prompts):
            return super().decode(input_ids, attention_mask, s)

    def key_settings(self) -> dict:
        return self.reversal.settings()  # the layers resolved against the model
