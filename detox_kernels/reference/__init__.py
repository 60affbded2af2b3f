"""Float64 PyTorch references: the definition every backend is tested against."""

from .socd import (
    DIVERGENCES,
    socd_alpha_reference,
    socd_divergence_reference,
    socd_key_reference,
    socd_reference,
    socd_select_reference,
)

__all__ = [
    "DIVERGENCES",
    "socd_alpha_reference",
    "socd_divergence_reference",
    "socd_key_reference",
    "socd_reference",
    "socd_select_reference",
]
