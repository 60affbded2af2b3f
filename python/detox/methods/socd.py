"""Soft Contrastive Decoding (SoCD): suppress the tokens where the base and toxic distributions
diverge most, by a soft amount, with one fused ``detox_kernels.socd`` call per step."""

from __future__ import annotations

from dataclasses import dataclass

from ..generation.processors import SoCDLogitsProcessor
from ._contrast import ContrastMethod
from .base import Settings, SettingsError, setting

DIVERGENCES = ("fkl", "rkl", "skl", "jsd", "tvd", "l2")


@dataclass
class SoCDSettings(Settings):
    divergence: str = setting("l2", "divergence between the base and toxic next-token distributions "
                                    "(l2 is the paper's)", choices=DIVERGENCES)
    k_min: int = setting(10, "fewest tokens suppressed per step", min=1)
    k_max: int | None = setting(None, "most tokens suppressed per step", min=1, default_text="V/2")
    preset: str | None = setting(None, "paper: the paper's settings; hspd-code: the HSPD code's (floor, signed, "
                                       "k_max = V)", choices=("paper", "hspd-code"), default_text="none")

    def check(self):
        if self.k_max is not None and self.k_max < self.k_min:
            raise SettingsError(f"--socd-k-max ({self.k_max}) must be >= --socd-k-min ({self.k_min})")


class SoCD(ContrastMethod):
    name = "socd"
    title = "Soft Contrastive Decoding against a toxic model"
    paper = "HSPD / SoCD (Tang et al., 2025)"
    order = 10
    docs = "docs/methods/soft-contrastive-decoding.md"
    Settings = SoCDSettings

    def setup(self, **extra_models):
        super().setup(**extra_models)
        self.check_k(self.settings.k_min, "--socd-k-min")
        self.check_k(self.settings.k_max, "--socd-k-max")

    def processor(self, attention_mask):
        s = self.settings
        return SoCDLogitsProcessor(self.models.toxic, divergence=s.divergence, k_min=s.k_min, k_max=s.k_max,
                                   preset=s.preset, **self.common(attention_mask))
