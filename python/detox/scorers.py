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
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from . import assets

__all__ = [
    "DetoxifyScorer",
    "HFClassifierScorer",
    "JIGSAW_LABELS",
    "JigsawScorer",
    "KerasBiLSTM",
    "KerasTokenizer",
    "ProfanityScorer",
    "Scorer",
    "ScorerError",
    "default_scorer",
    "load_keras_tokenizer",
    "load_scorer",
    "pad_sequences",
    "pick_toxic_label",
    "register_scorer",
    "scorer_names",
    "throughput",
]


class ScorerError(RuntimeError):
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


# --------------------------------------------------------------------------------------------------
# Keras tokenizer, without Keras


_KERAS_DEFAULT_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


class KerasTokenizer:
    """A faithful stand-in for ``keras.preprocessing.text.Tokenizer`` (word level) at inference.

    ``texts_to_sequences`` reproduces Keras exactly: lower-case, every character of ``filters``
    replaced by ``split``, split on ``split``, empty pieces dropped; words with index
    ``>= num_words`` (and unknown words) become the OOV index when an ``oov_token`` is set,
    else they are dropped.
    """

    def __init__(
        self,
        word_index: Mapping[str, int],
        num_words: int | None = None,
        oov_token: str | None = None,
        filters: str = _KERAS_DEFAULT_FILTERS,
        lower: bool = True,
        split: str = " ",
        char_level: bool = False,
    ) -> None:
        self.num_words = num_words
        self.oov_token = oov_token
        self.filters = filters or ""
        self.lower = lower
        self.split = split
        self.char_level = char_level
        self.oov_index = word_index.get(oov_token) if oov_token is not None else None
        # words at index >= num_words behave exactly like unknown words: keep only the useful ones
        if num_words:
            self.word_index = {w: i for w, i in word_index.items() if i < num_words}
        else:
            self.word_index = dict(word_index)
        self._table = str.maketrans({c: split for c in self.filters})

    def text_to_word_sequence(self, text: str) -> list[str]:
        if self.lower:
            text = text.lower()
        if self.char_level:
            return list(text)
        return [w for w in text.translate(self._table).split(self.split) if w]

    def texts_to_sequences(self, texts: Iterable[str]) -> list[list[int]]:
        wi, oov = self.word_index, self.oov_index
        use_oov = self.oov_token is not None and oov is not None
        out = []
        for text in texts:
            seq = []
            for w in self.text_to_word_sequence(text):
                i = wi.get(w)
                if i is not None:
                    seq.append(i)
                elif use_oov:
                    seq.append(oov)
            out.append(seq)
        return out


class _PickledKerasTokenizer:
    """What a pickled Keras ``Tokenizer`` becomes: a plain object holding its attributes."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "str"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "tuple"),
    ("builtins", "bool"),
    ("__builtin__", "int"),
}


class _KerasTokenizerUnpickler(pickle.Unpickler):
    """Maps the Keras tokenizer class onto a stand-in and refuses every other class (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "Tokenizer" and module.split(".")[0] in ("keras", "tensorflow", "tf_keras", "keras_preprocessing"):
            return _PickledKerasTokenizer
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a Keras tokenizer pickle")


def load_keras_tokenizer(path: str | os.PathLike) -> KerasTokenizer:
    """Read a pickled Keras ``Tokenizer`` without Keras or TensorFlow."""
    with open(path, "rb") as fh:
        obj = _KerasTokenizerUnpickler(fh).load()
    d = obj.__dict__ if isinstance(obj, _PickledKerasTokenizer) else None
    if d is None or "word_index" not in d:
        raise ScorerError(f"{path} does not hold a pickled Keras Tokenizer (got {type(obj).__name__})")
    if d.get("analyzer") is not None:
        raise ScorerError(f"{path}: Keras tokenizers with a custom analyzer are not supported")
    return KerasTokenizer(
        word_index=d["word_index"],
        num_words=d.get("num_words"),
        oov_token=d.get("oov_token"),
        filters=d.get("filters", _KERAS_DEFAULT_FILTERS),
        lower=d.get("lower", True),
        split=d.get("split", " "),
        char_level=d.get("char_level", False),
    )


def pad_sequences(sequences: Sequence[Sequence[int]], maxlen: int, value: int = 0) -> np.ndarray:
    """Keras ``pad_sequences`` defaults: pre-padding and pre-truncation (keep the last ``maxlen``)."""
    out = np.full((len(sequences), maxlen), value, dtype=np.int64)
    for row, seq in enumerate(sequences):
        if not len(seq):
            continue
        tail = seq[-maxlen:]
        out[row, maxlen - len(tail):] = tail
    return out


# --------------------------------------------------------------------------------------------------
# the Jigsaw BiLSTM (toxic-comment-classifier) in PyTorch


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
        try:
            import h5py
        except ImportError as e:
            raise ScorerError("reading the Keras weights needs h5py: pip install h5py") from e
        with h5py.File(path, "r") as f:
            if "layers" not in f:
                raise ScorerError(f"{path}: not a Keras 3 .weights.h5 file (no 'layers' group)")
            layers = f["layers"]

            def arrays(group: Any) -> list[np.ndarray]:
                vars_ = group["vars"]
                return [np.asarray(vars_[k]) for k in sorted(vars_.keys(), key=int)]

            names = list(layers.keys())
            emb_name = next((n for n in names if n.startswith("embedding")), None)
            bi_name = next((n for n in names if n.startswith("bidirectional")), None)
            dense_names = sorted(
                (n for n in names if re.fullmatch(r"dense(_\d+)?", n)),
                key=lambda n: int(n.split("_")[1]) if "_" in n else 0,
            )
            if emb_name is None or bi_name is None or len(dense_names) != 2:
                raise ScorerError(
                    f"{path}: expected layers embedding, bidirectional and two dense layers; found {names}"
                )
            (emb,) = arrays(layers[emb_name])
            bi = layers[bi_name]
            fw = arrays(bi["forward_layer"]["cell"])
            bw = arrays(bi["backward_layer"]["cell"])
            d1 = arrays(layers[dense_names[0]])
            d2 = arrays(layers[dense_names[1]])
        units = fw[1].shape[0]
        model = cls(emb.shape[0], emb.shape[1], units, d1[0].shape[1], d2[0].shape[1])
        sd = {
            "embedding.weight": emb,
            "lstm.weight_ih_l0": fw[0].T,
            "lstm.weight_hh_l0": fw[1].T,
            "lstm.bias_ih_l0": fw[2],
            "lstm.bias_hh_l0": np.zeros_like(fw[2]),
            "lstm.weight_ih_l0_reverse": bw[0].T,
            "lstm.weight_hh_l0_reverse": bw[1].T,
            "lstm.bias_ih_l0_reverse": bw[2],
            "lstm.bias_hh_l0_reverse": np.zeros_like(bw[2]),
            "dense.weight": d1[0].T,
            "dense.bias": d1[1],
            "out.weight": d2[0].T,
            "out.bias": d2[1],
        }
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
        self.device = torch.device(device)
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


# --------------------------------------------------------------------------------------------------
# alt-profanity-check


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


# --------------------------------------------------------------------------------------------------
# HuggingFace sequence classifiers (local directory) and Detoxify checkpoints


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
        self.device = torch.device(device)
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
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.labels = tuple(_DETOXIFY_RENAME.get(c, c) for c in classes)
        self.score_index = self.labels.index("toxicity") if "toxicity" in self.labels else 0
        self.max_length = _max_length(self.tokenizer, config)
        self.checkpoint = ckpt

    def info(self) -> dict[str, Any]:
        return {**super().info(), "checkpoint": str(self.checkpoint)}


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


def scorer_names() -> list[str]:
    """Names accepted by :func:`load_scorer` (besides paths and ``detoxify:...``)."""
    return sorted(_FACTORIES)


def _detoxify_from_env(**kwargs: Any) -> DetoxifyScorer:
    return DetoxifyScorer(
        os.environ.get("DETOX_DETOXIFY_CHECKPOINT") or None, os.environ.get("DETOX_DETOXIFY_CONFIG") or None, **kwargs
    )


register_scorer("jigsaw", JigsawScorer)
register_scorer("profanity", lambda **kw: ProfanityScorer())
register_scorer("detoxify", _detoxify_from_env)


def default_scorer(**kwargs: Any) -> Scorer:
    """Detoxify when ``DETOX_DETOXIFY_CHECKPOINT`` is set, else the offline ``jigsaw`` scorer."""
    if os.environ.get("DETOX_DETOXIFY_CHECKPOINT"):
        return _detoxify_from_env(**kwargs)
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
        return _FACTORIES[key](**kwargs)
    if s.lower().startswith("detoxify:"):
        rest = s.split(":", 1)[1]
        if not rest:
            return _detoxify_from_env(**kwargs)
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
        raise ScorerError(f"{s!r} is a file: pass a classifier directory, or 'detoxify:{s}' for a Detoxify checkpoint")
    looks_like_path = any(c in s for c in "/\\~.") or s.startswith(".")
    if looks_like_path:
        raise ScorerError(f"no such scorer path: {s!r} (expected a local HuggingFace classifier directory)")
    raise ScorerError(
        f"unknown scorer {s!r}; use one of: {', '.join(scorer_names())}, 'detoxify:CHECKPOINT[:HF_CONFIG_DIR]', "
        "or the path of a local HuggingFace sequence-classification directory"
    )


def throughput(scorer: Scorer, texts: Sequence[str], batch_size: int | None = None) -> float:
    """Texts per second of ``scorer`` on ``texts`` (a small benchmarking helper)."""
    t0 = time.perf_counter()
    scorer.score(list(texts), batch_size)
    return len(texts) / max(time.perf_counter() - t0, 1e-9)
