"""Plain sampling: the base model alone, as HuggingFace ``generate`` samples it (the baseline)."""

from __future__ import annotations

from .base import Method


class PlainSampling(Method):
    name = "none"
    title = "plain sampling with the base model (the baseline)"
    order = 0
    docs = "docs/methods/none.md"
