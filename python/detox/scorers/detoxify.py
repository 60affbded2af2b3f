"""The ``detoxify`` scorer: a Detoxify checkpoint the user supplies, loaded offline (Detoxify itself
downloads its weights at run time, which cannot work without a network)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..devices import resolve_device
from .base import ScorerError
from .hf_classifier import _max_length, _TransformersScorer

__all__ = ["DetoxifyScorer", "detoxify_from_env"]


_DETOXIFY_RENAME = {"toxic": "toxicity", "identity_hate": "identity_attack", "severe_toxic": "severe_toxicity"}


def _detoxify_missing(what: str) -> ScorerError:
    return ScorerError(
        f"the Detoxify scorer needs a local checkpoint: {what}. Detoxify downloads its weights at run "
        "time, which cannot work without a network. Pass it as 'detoxify:CHECKPOINT.ckpt[:HF_CONFIG_DIR]' "
        "or set DETOX_DETOXIFY_CHECKPOINT (and DETOX_DETOXIFY_CONFIG: a folder with the config.json and "
        "tokenizer files of its base model, e.g. bert-base-uncased for 'original'). Offline alternatives: "
        "'jigsaw' (default) or 'profanity'."
    )


class DetoxifyScorer(_TransformersScorer):
    """A Detoxify checkpoint (``.ckpt`` with ``config`` and ``state_dict``) loaded offline.

    Reimplements ``detoxify.Detoxify(checkpoint=..., huggingface_config_path=...)`` without the
    hub: the base model's config and tokenizer come from ``config_dir`` (or, when ``None``, the
    local HuggingFace cache of the checkpoint's base model, e.g. ``bert-base-uncased``).
    Scores are sigmoids, as in Detoxify; the score is the ``toxicity`` head.
    """

    name = "detoxify"
    activation = "sigmoid"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None,
        config_dir: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        import transformers

        if not checkpoint:
            raise _detoxify_missing("none was given")
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_file():
            raise _detoxify_missing(f"{str(ckpt)!r} does not exist")
        if config_dir is not None and not Path(config_dir).expanduser().is_dir():
            raise ScorerError(f"Detoxify config directory {str(config_dir)!r} does not exist")
        try:
            try:
                loaded = torch.load(str(ckpt), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                # Detoxify's own checkpoints may pickle more than tensors and dicts (Detoxify itself
                # loads them with weights_only=False): only pass checkpoints you trust
                loaded = torch.load(str(ckpt), map_location="cpu", weights_only=False)
        except Exception as e:
            raise ScorerError(f"could not read the Detoxify checkpoint {ckpt}: {type(e).__name__}: {e}") from e
        if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
            raise ScorerError(f"{ckpt} is not a Detoxify checkpoint (it needs 'config' and 'state_dict')")
        try:
            arch = loaded["config"]["arch"]["args"]
            classes = list(loaded["config"]["dataset"]["args"]["classes"])
            model_type, model_name = arch["model_type"], arch["model_name"]
            tokenizer_name, num_classes = arch.get("tokenizer_name"), int(arch["num_classes"])
        except (KeyError, TypeError) as e:
            raise ScorerError(f"{ckpt}: unexpected Detoxify checkpoint config ({e!r})") from e
        model_cls = getattr(transformers, model_name, None)
        if model_cls is None:
            raise ScorerError(f"{ckpt}: transformers has no model class {model_name!r}")
        source = str(Path(config_dir).expanduser()) if config_dir is not None else model_type
        try:
            config = model_cls.config_class.from_pretrained(source, num_labels=num_classes, local_files_only=True)
            tok_cls = getattr(transformers, tokenizer_name or "", None) or transformers.AutoTokenizer
            try:
                self.tokenizer = tok_cls.from_pretrained(source, local_files_only=True)
            except Exception:
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=True)
        except Exception as e:
            if config_dir is None:
                raise _detoxify_missing(
                    f"no HF config directory was given and {model_type!r} is not in the local HuggingFace "
                    f"cache ({type(e).__name__})"
                ) from e
            raise ScorerError(
                f"could not load the config/tokenizer for the Detoxify checkpoint from {source}: "
                f"{type(e).__name__}: {e}"
            ) from e
        try:
            self.model = model_cls.from_pretrained(None, config=config, state_dict=loaded["state_dict"])
        except Exception as e:
            raise ScorerError(f"{ckpt}: its state_dict does not fit {model_name}: {type(e).__name__}: {e}") from e
        self.device = resolve_device(device, what="scorer device")
        self.model.to(self.device).eval()
        self.labels = tuple(_DETOXIFY_RENAME.get(c, c) for c in classes)
        self.score_index = self.labels.index("toxicity") if "toxicity" in self.labels else 0
        self.max_length = _max_length(self.tokenizer, config)
        self.checkpoint = ckpt

    def info(self) -> dict[str, Any]:
        return {**super().info(), "checkpoint": str(self.checkpoint)}


def detoxify_from_env(**kwargs: Any) -> DetoxifyScorer:
    """The Detoxify scorer configured by ``DETOX_DETOXIFY_CHECKPOINT`` / ``DETOX_DETOXIFY_CONFIG``."""
    return DetoxifyScorer(
        os.environ.get("DETOX_DETOXIFY_CHECKPOINT") or None, os.environ.get("DETOX_DETOXIFY_CONFIG") or None, **kwargs
    )
