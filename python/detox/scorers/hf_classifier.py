"""Local HuggingFace sequence-classification models as scorers (sigmoid or softmax per the config,
the toxic label picked by name), and the batched inference they share with Detoxify."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..devices import resolve_device
from .base import Scorer, ScorerError, _as_text_list

__all__ = ["HFClassifierScorer", "pick_toxic_label"]


_TOXIC_WORDS = ("toxic", "hate", "offensive", "abusive", "abuse", "insult", "obscene", "profan", "harm", "nsfw")
_NEGATIVE_RE = re.compile(r"^(non|not|no|un)[-_ ]?|neutral|normal|clean|benign|safe|harmless|^ok$|none")


def pick_toxic_label(id2label: Mapping[int, str] | None, num_labels: int) -> int:
    """The index of the toxic class of a classifier, chosen by label name.

    A single output is the toxic logit. Otherwise the first label whose name says toxic / hate /
    offensive / ... (and not "non-toxic", "not offensive", "neutral", ...), preferring an exact
    "toxic"/"toxicity"; with generic names (``LABEL_0``/``LABEL_1``) label 1.
    """
    if num_labels <= 1:
        return 0
    names = {int(i): str(n).strip().lower() for i, n in (id2label or {}).items()}
    for i in sorted(names):
        if names[i] in ("toxic", "toxicity"):
            return i
    for i in sorted(names):
        n = names[i]
        if any(w in n for w in _TOXIC_WORDS) and not _NEGATIVE_RE.search(n):
            return i
    return 1


def _max_length(tokenizer: Any, config: Any) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if not isinstance(limit, int) or limit > 100_000:
        limit = 512
    pos = getattr(config, "max_position_embeddings", None)
    if isinstance(pos, int) and pos > 0:
        limit = min(limit, pos)
    return limit


class _TransformersScorer(Scorer):
    """Shared batched inference for transformers classifiers (sorted by length to cut padding)."""

    default_batch_size = 32
    model: Any
    tokenizer: Any
    device: torch.device
    activation: str  # "sigmoid" | "softmax"
    max_length: int

    def _score_labels_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(
            texts, return_tensors="pt", truncation=True, padding=True, max_length=self.max_length
        ).to(self.device)
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
        probs = torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=-1)
        return probs.cpu().numpy()

    def score_labels_array(self, texts: Iterable[str], batch_size: int | None = None) -> np.ndarray:
        items = _as_text_list(texts)
        order = np.argsort([len(t) for t in items], kind="stable")
        out = super().score_labels_array([items[i] for i in order], batch_size)
        result = np.empty_like(out)
        result[order] = out
        return result


class HFClassifierScorer(_TransformersScorer):
    """Any local HuggingFace sequence-classification model directory.

    Sigmoid when ``problem_type == "multi_label_classification"`` or there is a single output,
    softmax otherwise; the score is the toxic label (:func:`pick_toxic_label`, or ``label=``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        label: int | str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path).expanduser()
        if not path.is_dir():
            raise ScorerError(f"no such classifier directory: {str(path)!r}")
        if not (path / "config.json").is_file():
            raise ScorerError(
                f"{path} is not a HuggingFace model directory (no config.json; it contains: "
                f"{', '.join(sorted(p.name for p in path.iterdir())[:15]) or 'nothing'})"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True, dtype=dtype
            )
        except Exception as e:
            raise ScorerError(
                f"could not load a sequence-classification model from {path}: {type(e).__name__}: {e}"
            ) from e
        self.device = resolve_device(device, what="scorer device")
        self.model.to(self.device).eval()
        cfg = self.model.config
        n = int(cfg.num_labels)
        id2label = {int(k): str(v) for k, v in (getattr(cfg, "id2label", None) or {}).items()}
        self.labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(n))
        if label is None:
            self.score_index = pick_toxic_label(id2label, n)
        elif isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            self.score_index = int(label)
        else:
            lowered = [lab.lower() for lab in self.labels]
            if label.lower() not in lowered:
                raise ScorerError(f"{path} has no label {label!r}; its labels: {list(self.labels)}")
            self.score_index = lowered.index(label.lower())
        if not 0 <= self.score_index < n:
            raise ScorerError(f"label index {self.score_index} out of range for {n} labels")
        problem = getattr(cfg, "problem_type", None)
        self.activation = "sigmoid" if (problem == "multi_label_classification" or n == 1) else "softmax"
        self.max_length = _max_length(self.tokenizer, cfg)
        self.path = path
        self.name = f"hf:{path}"

    def info(self) -> dict[str, Any]:
        return {**super().info(), "path": str(self.path), "activation": self.activation}
