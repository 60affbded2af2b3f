"""The scorer protocol: :class:`Scorer` (batched ``score(texts) -> np.ndarray`` in [0, 1], higher =
more toxic), the error every scorer raises, and a throughput helper."""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import UserError

__all__ = ["Scorer", "ScorerError", "throughput"]


class ScorerError(UserError, RuntimeError):
    """A scorer could not be loaded or used; the message says why and what to do."""


# --------------------------------------------------------------------------------------------------
# interface


def _as_text_list(texts: Iterable[str | None]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError("score() takes a list of texts, not a single string: wrap it as [text]")
    out = []
    for t in texts:
        if t is None:
            out.append("")
        elif isinstance(t, str):
            out.append(t)
        else:
            raise TypeError(f"score() takes strings, got {type(t).__name__}")
    return out


def _batches(n: int, batch_size: int) -> Iterable[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


class Scorer:
    """A batched toxicity scorer: ``score(texts) -> np.ndarray`` of floats in [0, 1].

    Subclasses implement :meth:`_score_labels_batch` (one model call for a batch of texts, returning
    an array ``(len(batch), len(labels))`` of probabilities); ``labels[score_index]`` is the score.
    """

    name: str = "scorer"
    labels: tuple[str, ...] = ("toxicity",)
    score_index: int = 0
    default_batch_size: int = 64

    # -- to implement
    def _score_labels_batch(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public
    def score_labels_array(self, texts: Iterable[str], batch_size: int | None = None) -> np.ndarray:
        """All labels: array ``(len(texts), len(self.labels))`` of probabilities in [0, 1]."""
        items = _as_text_list(texts)
        out = np.zeros((len(items), len(self.labels)), dtype=np.float64)
        for sl in _batches(len(items), batch_size or self.default_batch_size):
            out[sl] = np.asarray(self._score_labels_batch(items[sl]), dtype=np.float64)
        return np.clip(out, 0.0, 1.0)

    def score_labels(self, texts: Iterable[str], batch_size: int | None = None) -> dict[str, np.ndarray]:
        """All labels as ``{label: scores}``."""
        arr = self.score_labels_array(texts, batch_size)
        return {lab: arr[:, i] for i, lab in enumerate(self.labels)}

    def score(self, texts: Iterable[str], batch_size: int | None = None) -> np.ndarray:
        """Toxicity scores in [0, 1], one per text (float64 array)."""
        return self.score_labels_array(texts, batch_size)[:, self.score_index]

    __call__ = score

    def info(self) -> dict[str, Any]:
        """What this scorer is, for reports."""
        return {"scorer": self.name, "labels": list(self.labels), "score_label": self.labels[self.score_index]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def throughput(scorer: Scorer, texts: Sequence[str], batch_size: int | None = None) -> float:
    """Texts per second of ``scorer`` on ``texts`` (a small benchmarking helper)."""
    t0 = time.perf_counter()
    scorer.score(list(texts), batch_size)
    return len(texts) / max(time.perf_counter() - t0, 1e-9)
