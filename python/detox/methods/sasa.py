"""SASA: a toxicity subspace of the model's own last hidden states re-weights the candidate tokens
of every step (one forward over all candidates of all rows)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .base import Method, Sampling, Settings, setting


@dataclass
class SASASettings(Settings):
    subspace: str | None = setting(None, "subspace file from `detox fit-sasa`", metavar="FILE",
                                   default_text="$DETOX_HOME/sasa/<model>-toxigen.safetensors, else the one "
                                                "shipped for the embedded model")
    beta: float = setting(10.0, "strength: 0 is plain sampling, a negative beta steers toward toxicity")
    mode: str = setting("softmax", "softmax: beta * softmax(margins) (the public implementation); tilt: "
                                   "beta * margin (the KL-constrained optimum)", choices=("softmax", "tilt"))
    max_candidates: int = setting(10, "candidates K re-weighted per step (10: the best measured on the development "
                                      "prompts; 50 lowered toxicity far less)", min=1)
    outside: str = setting("keep", "tokens outside the K candidates keep their score (keep) or are masked (mask)",
                           choices=("keep", "mask"))


class SASA(Method):
    name = "sasa"
    title = "SASA: self-disciplined sampling away from a toxicity subspace"
    paper = "Ko et al. (ICLR 2025)"
    order = 60
    docs = "docs/methods/self-disciplined-sampling.md"
    Settings = SASASettings

    def setup(self, **extra_models):
        from ..generation.sasa import SASADecoder
        from ..sasa import Subspace, resolve_subspace

        super().setup(**extra_models)
        s, m = self.settings, self.models
        self.subspace_path = resolve_subspace(s.subspace, m.model_name)
        sub = Subspace.load(self.subspace_path)
        if sub.model != m.model_name and os.path.basename(str(sub.model).rstrip("/")) != \
                os.path.basename(str(m.model_name).rstrip("/")):
            print(f"warning: the subspace {self.subspace_path} was fitted on {sub.model!r}, generating with "
                  f"{m.model_name!r}", file=sys.stderr)
        self.decoder = SASADecoder(m.model, sub.direction, sub.midpoint, beta=s.beta, mode=s.mode,
                                   max_candidates=s.max_candidates, outside=s.outside)

    def decode(self, input_ids, attention_mask, s: Sampling):
        return self.decoder.generate(input_ids, attention_mask, max_new_tokens=s.max_new_tokens,
                                     do_sample=s.do_sample, top_p=s.top_p, temperature=s.temperature, top_k=s.top_k,
                                     num_return_sequences=s.num_samples, min_new_tokens=s.min_new_tokens,
                                     pad_token_id=self.models.tokenizer.pad_token_id)

    def key_settings(self) -> dict:
        return dict(self.settings.to_dict(), subspace=self.subspace_path)
