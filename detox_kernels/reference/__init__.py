"""Float64 PyTorch references: the definition every backend is tested against."""

from .sampling import sample_top_k_top_p_reference, warped_scores_reference
from .sasa import (
    MODES as SASA_MODES,
    sasa_margins_reference,
    sasa_reweight_reference,
    sasa_weights_reference,
)
from .socd import (
    DIVERGENCES,
    socd_alpha_reference,
    socd_divergence_reference,
    socd_key_reference,
    socd_reference,
    socd_select_reference,
)

__all__ = [
    "sample_top_k_top_p_reference",
    "warped_scores_reference",
    "SASA_MODES",
    "sasa_margins_reference",
    "sasa_reweight_reference",
    "sasa_weights_reference",
    "DIVERGENCES",
    "socd_alpha_reference",
    "socd_divergence_reference",
    "socd_key_reference",
    "socd_reference",
    "socd_select_reference",
]
