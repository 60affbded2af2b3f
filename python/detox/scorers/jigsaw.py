"""The ``jigsaw`` scorer: the BiLSTM of ``toxic-comment-classifier==0.3.0`` (trained on the Jigsaw
toxic-comment data, six labels) as a PyTorch module, its Keras weights and tokenizer read without
Keras; the score is the ``toxic`` label."""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import assets
from ..devices import resolve_device
from .base import Scorer, ScorerError
from .keras_tokenizer import KerasTokenizer, load_keras_tokenizer, pad_sequences
from .keras_weights import read_bilstm_weights

__all__ = ["JIGSAW_LABELS", "JIGSAW_MAXLEN", "JigsawScorer", "KerasBiLSTM"]

JIGSAW_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
JIGSAW_MAXLEN = 100


class KerasBiLSTM(nn.Module):
    """Embedding -> Bidirectional(LSTM, return_sequences) -> GlobalMaxPool1D -> Dense(relu) -> Dense(sigmoid).

    The architecture of ``toxic_classifier.model.ToxicCommentClassifier``. Keras stores LSTM weights
    as ``kernel (in, 4u)``, ``recurrent_kernel (u, 4u)``, ``bias (4u)`` with gates in the order
    i, f, c, o, which is PyTorch's i, f, g, o; recurrent activation sigmoid, activation tanh.
    """

    def __init__(self, vocab_size: int, embed_dim: int, units: int, hidden: int, n_labels: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, units, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * units, hidden)
        self.out = nn.Linear(hidden, n_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        y, _ = self.lstm(x)  # (B, T, 2u): [forward, backward] as Keras' merge_mode="concat"
        y = y.amax(dim=1)  # GlobalMaxPooling1D (Keras does not mask here: padding is a token)
        y = torch.relu(self.dense(y))
        return torch.sigmoid(self.out(y))

    @classmethod
    def from_keras_h5(cls, path: str | os.PathLike) -> "KerasBiLSTM":
        """Build the module from a Keras 3 ``.weights.h5`` file (read with h5py)."""
        sd = read_bilstm_weights(path)
        vocab_size, embed_dim = sd["embedding.weight"].shape
        units = sd["lstm.weight_hh_l0"].shape[1]
        hidden, n_labels = sd["dense.weight"].shape[0], sd["out.weight"].shape[0]
        model = cls(vocab_size, embed_dim, units, hidden, n_labels)
        model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()})
        model.requires_grad_(False)
        return model.eval()


@functools.lru_cache(maxsize=2)
def _load_jigsaw(weights: str, tokenizer: str) -> tuple[KerasBiLSTM, KerasTokenizer]:
    return KerasBiLSTM.from_keras_h5(weights), load_keras_tokenizer(tokenizer)


class JigsawScorer(Scorer):
    """The ``toxic-comment-classifier`` BiLSTM (Jigsaw, six labels) in PyTorch; score = ``toxic``."""

    name = "jigsaw"
    labels = JIGSAW_LABELS
    score_index = 0
    default_batch_size = 256

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        tokenizer: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        quiet: bool = False,
    ) -> None:
        try:
            weights = weights or assets.asset_path("jigsaw-bilstm", "weights", quiet=quiet)
            tokenizer = tokenizer or assets.asset_path("jigsaw-bilstm", "tokenizer", quiet=quiet)
        except assets.AssetError as e:
            raise ScorerError(f"the jigsaw scorer's weights are unavailable: {e}") from e
        model, self.tokenizer = _load_jigsaw(str(weights), str(tokenizer))
        self.device = resolve_device(device, what="scorer device")
        self.model = model if self.device.type == "cpu" else _copy_to(model, self.device)
        self.maxlen = JIGSAW_MAXLEN

    def encode(self, texts: list[str]) -> np.ndarray:
        """Token ids ``(len(texts), 100)``, pre-padded / pre-truncated as the Keras model expects."""
        return pad_sequences(self.tokenizer.texts_to_sequences(texts), self.maxlen)

    def _score_labels_batch(self, texts: list[str]) -> np.ndarray:
        ids = torch.from_numpy(self.encode(texts)).to(self.device)
        with torch.inference_mode():
            return self.model(ids).float().cpu().numpy()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "package": assets.ASSETS["jigsaw-bilstm"].requirement}


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(model).to(device)
