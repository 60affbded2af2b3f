"""Detoxified generation inside HuggingFace ``generate``: logits processors and a batched driver."""

from .processors import (
    AuxiliaryLM,
    ContrastiveDecodingLogitsProcessor,
    DExpertsLogitsProcessor,
    SoCDLogitsProcessor,
    plausibility_mask,
    top_p_filter,
)
from .reversal import ToxificationReversal

__all__ = [
    "AuxiliaryLM",
    "ContrastiveDecodingLogitsProcessor",
    "DExpertsLogitsProcessor",
    "SoCDLogitsProcessor",
    "plausibility_mask",
    "top_p_filter",
    "ToxificationReversal",
]
