"""The ``profanity`` scorer: ``alt-profanity-check`` (TF-IDF + calibrated linear model)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import assets
from .base import Scorer, ScorerError

__all__ = ["ProfanityScorer"]


class ProfanityScorer(Scorer):
    """``alt-profanity-check``'s ``predict_prob`` (a TF-IDF + calibrated linear SVM), batched."""

    name = "profanity"
    labels = ("profanity",)
    default_batch_size = 4096

    def __init__(self) -> None:
        req = assets.ASSETS["profanity-check"].requirement
        try:
            from profanity_check import predict_prob
        except ImportError as e:
            raise ScorerError(
                f"the profanity scorer needs the `alt-profanity-check` package and scikit-learn: "
                f"pip install '{req}' (it pins its scikit-learn version) [{type(e).__name__}: {e}]"
            ) from e
        self._predict_prob = predict_prob

    def _score_labels_batch(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._predict_prob(texts), dtype=np.float64).reshape(-1, 1)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "package": assets.ASSETS["profanity-check"].requirement}
