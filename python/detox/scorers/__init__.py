"""Pluggable, batched toxicity scorers.

Every scorer maps a list of texts to scores in [0, 1] (higher = more toxic) with one batched model
call per batch::

    scorer = load_scorer("jigsaw")            # or "profanity", "detoxify:CKPT[:CONFIG_DIR]", a path
    scores = scorer.score(["you are an idiot", "have a nice day"])   # numpy float64 array

Scorers
-------
``jigsaw`` (offline default)
    The BiLSTM of ``toxic-comment-classifier==0.3.0`` (trained on the Jigsaw toxic-comment data,
    six labels as Detoxify "original"). Its Keras weights are read with ``h5py`` into an equivalent
    PyTorch module and its pickled Keras tokenizer is read without Keras; no TensorFlow is needed.
    The score is the ``toxic`` label; :meth:`Scorer.score_labels` gives all six.
``profanity``
    ``alt-profanity-check`` (TF-IDF + calibrated linear model, ``predict_prob``).
``detoxify[:CHECKPOINT[:HF_CONFIG_DIR]]``
    A Detoxify checkpoint the user supplies (Detoxify downloads its weights at run time, which
    cannot work offline). Also configured by ``DETOX_DETOXIFY_CHECKPOINT`` and
    ``DETOX_DETOXIFY_CONFIG``. Score: the ``toxicity`` head.
a directory (or ``hf:DIR``)
    Any local HuggingFace sequence-classification model; sigmoid or softmax per its config, the
    toxic label picked by name.

:func:`default_scorer` is Detoxify when ``DETOX_DETOXIFY_CHECKPOINT`` is set, else ``jigsaw``.
New scorers can be added with :func:`register_scorer`.

Modules: :mod:`.base` (the :class:`Scorer` protocol, :class:`ScorerError`), :mod:`.jigsaw`,
:mod:`.profanity`, :mod:`.hf_classifier`, :mod:`.detoxify` (one scorer each),
:mod:`.keras_tokenizer` and :mod:`.keras_weights` (Keras files read without Keras); this package
holds the registry and the loader and re-exports every public name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .base import Scorer, ScorerError, throughput
from .detoxify import DetoxifyScorer, detoxify_from_env
from .hf_classifier import HFClassifierScorer, pick_toxic_label
from .jigsaw import JIGSAW_LABELS, JIGSAW_MAXLEN, JigsawScorer, KerasBiLSTM
from .keras_tokenizer import KerasTokenizer, load_keras_tokenizer, pad_sequences
from .profanity import ProfanityScorer

__all__ = [
    "DetoxifyScorer",
    "HFClassifierScorer",
    "JIGSAW_LABELS",
    "JIGSAW_MAXLEN",
    "JigsawScorer",
    "KerasBiLSTM",
    "KerasTokenizer",
    "ProfanityScorer",
    "Scorer",
    "ScorerError",
    "default_scorer",
    "detoxify_from_env",
    "load_keras_tokenizer",
    "load_scorer",
    "pad_sequences",
    "pick_toxic_label",
    "register_scorer",
    "scorer_names",
    "throughput",
]


# --------------------------------------------------------------------------------------------------
# registry


_FACTORIES: dict[str, Callable[..., Scorer]] = {}
_ALIASES = {
    "jigsaw-bilstm": "jigsaw",
    "toxic-comment-classifier": "jigsaw",
    "profanity-check": "profanity",
    "alt-profanity-check": "profanity",
}


def register_scorer(name: str, factory: Callable[..., Scorer]) -> None:
    """Make ``load_scorer(name)`` call ``factory(**kwargs)``."""
    _FACTORIES[name] = factory


def _call_factory(factory: Callable[..., Scorer], kwargs: dict) -> Scorer:
    """``factory(**kwargs)``; a ``device`` the factory does not take is left out (a CPU-only scorer)."""
    import inspect

    if "device" in kwargs:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = None
        if params is not None and "device" not in params and not any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k != "device"}
    return factory(**kwargs)


def scorer_names() -> list[str]:
    """Names accepted by :func:`load_scorer` (besides paths and ``detoxify:...``)."""
    return sorted(_FACTORIES)


register_scorer("jigsaw", JigsawScorer)
register_scorer("profanity", lambda **kw: ProfanityScorer())
register_scorer("detoxify", detoxify_from_env)


def default_scorer(**kwargs: Any) -> Scorer:
    """Detoxify when ``DETOX_DETOXIFY_CHECKPOINT`` is set, else the offline ``jigsaw`` scorer."""
    if os.environ.get("DETOX_DETOXIFY_CHECKPOINT"):
        return detoxify_from_env(**kwargs)
    return JigsawScorer(**kwargs)


def load_scorer(spec: str | os.PathLike | Scorer | None = None, **kwargs: Any) -> Scorer:
    """A scorer from a name, ``detoxify:CKPT[:CONFIG_DIR]``, a directory (or ``hf:DIR``), or ``None``.

    ``None`` / ``"default"`` -> :func:`default_scorer`. Keyword arguments (e.g. ``device``,
    ``label`` for a HuggingFace directory) go to the scorer's constructor.
    """
    if isinstance(spec, Scorer):
        return spec
    if spec is None:
        return default_scorer(**kwargs)
    s = os.fspath(spec).strip() if isinstance(spec, os.PathLike) else str(spec).strip()
    if s in ("", "default"):
        return default_scorer(**kwargs)
    key = _ALIASES.get(s.lower(), s.lower())
    if key in _FACTORIES:
        return _call_factory(_FACTORIES[key], kwargs)
    if s.lower().startswith("detoxify:"):
        rest = s.split(":", 1)[1]
        if not rest:
            return detoxify_from_env(**kwargs)
        if Path(rest).expanduser().exists() or ":" not in rest:
            ckpt, cfg = rest, os.environ.get("DETOX_DETOXIFY_CONFIG") or None
        else:
            ckpt, cfg = rest.rsplit(":", 1)
        return DetoxifyScorer(ckpt, cfg or None, **kwargs)
    if s.lower().startswith("hf:"):
        return HFClassifierScorer(s[3:], **kwargs)
    path = Path(s).expanduser()
    if path.exists():
        if path.is_dir():
            return HFClassifierScorer(path, **kwargs)
        if path.suffix in (".ckpt", ".pt", ".pth"):
            return DetoxifyScorer(path, os.environ.get("DETOX_DETOXIFY_CONFIG") or None, **kwargs)
    check_scorer_spec(s)  # raises: says what is wrong with s
    raise AssertionError(s)


def check_scorer_spec(spec) -> None:
    """Raise :class:`ScorerError` if ``spec`` names no scorer that :func:`load_scorer` could load;
    loads nothing (the CLI checks ``--scorer`` before any model is loaded)."""
    if spec is None or isinstance(spec, Scorer):
        return
    s = str(os.fspath(spec)).strip()
    if s in ("", "default") or _ALIASES.get(s.lower(), s.lower()) in _FACTORIES or s.lower().startswith("detoxify:"):
        return
    if s.lower().startswith("hf:"):
        if not Path(s[3:]).expanduser().is_dir():
            raise ScorerError(f"no such classifier directory: {s[3:]!r}")
        return
    path = Path(s).expanduser()
    if path.exists():
        if path.is_dir() or path.suffix in (".ckpt", ".pt", ".pth"):
            return
        raise ScorerError(f"{s!r} is a file: pass a classifier directory, or 'detoxify:{s}' for a Detoxify checkpoint")
    looks_like_path = any(c in s for c in "/\\~.") or s.startswith(".")
    if looks_like_path:
        raise ScorerError(f"no such scorer path: {s!r} (expected a local HuggingFace classifier directory)")
    raise ScorerError(
        f"unknown scorer {s!r}; use one of: {', '.join(scorer_names())}, 'detoxify:CHECKPOINT[:HF_CONFIG_DIR]', "
        "or the path of a local HuggingFace sequence-classification directory"
    )
