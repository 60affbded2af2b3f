"""Candidate de-duplication, the text embedder and fusion ranking (steps 3-4 of docs/corpus-rewriting.md)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch


def dedupe(candidates: list[str]) -> list[int]:
    """Indices of the first occurrence of each distinct non-empty candidate (case and spacing ignored)."""
    seen, keep = set(), []
    for i, c in enumerate(candidates):
        key = re.sub(r"\s+", " ", c or "").strip().lower()
        if key and key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def fusion_scores(tox: np.ndarray, cos: np.ndarray, lam: float = 0.5) -> np.ndarray:
    """``lam * (1 - tox) + (1 - lam) * cos`` (step 4 of docs/corpus-rewriting.md)."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return lam * (1.0 - np.asarray(tox, dtype=np.float64)) + (1.0 - lam) * np.asarray(cos, dtype=np.float64)


def best_index(tox: np.ndarray, cos: np.ndarray, lam: float = 0.5) -> int:
    """The argmax of the fusion score; ties go to the earliest candidate."""
    return int(np.argmax(fusion_scores(tox, cos, lam)))


def resolve_embedder_path(spec: str | None) -> str:
    if spec in (None, "", "minilm", "default"):
        from ..assets import asset_path

        return str(asset_path("minilm", "model", quiet=True))
    p = Path(spec).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"embedder {spec!r}: not a directory (give a sentence-transformers or HuggingFace "
                                "model directory, or 'minilm' for the embedded all-MiniLM-L6-v2)")
    return str(p)


class TextEmbedder:
    """Sentence embeddings from a sentence-transformers or plain HuggingFace encoder directory.

    Pooling follows the directory's ``1_Pooling/config.json`` (mean, CLS or max); plain HF
    directories use mean pooling. Embeddings are L2-normalised, so cosine = dot product.
    """

    def __init__(self, spec: str | None = None, device: str = "cpu", max_length: int = 256, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve_embedder_path(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.path, local_files_only=True).to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.max_length = min(max_length, getattr(self.tokenizer, "model_max_length", max_length) or max_length)
        self.pooling = "mean"
        pc = os.path.join(self.path, "1_Pooling", "config.json")
        if os.path.exists(pc):
            cfg = json.load(open(pc))
            if cfg.get("pooling_mode_cls_token"):
                self.pooling = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                self.pooling = "max"
        self.normalize = True

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for s in range(0, len(texts), self.batch_size):
            chunk = [t if t else " " for t in texts[s:s + self.batch_size]]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            h = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            if self.pooling == "cls":
                e = h[:, 0]
            elif self.pooling == "max":
                e = h.masked_fill(m == 0, -1e9).max(1).values
            else:
                e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            e = torch.nn.functional.normalize(e.float(), dim=-1)
            out.append(e.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)

    def info(self) -> dict:
        return {"embedder": self.path, "pooling": self.pooling}
