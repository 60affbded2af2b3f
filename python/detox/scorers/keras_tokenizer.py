"""A pickled Keras ``Tokenizer`` read and applied without Keras or TensorFlow, and Keras'
``pad_sequences``: the text side of a Keras text classifier."""

from __future__ import annotations

import os
import pickle
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .base import ScorerError

__all__ = ["KerasTokenizer", "load_keras_tokenizer", "pad_sequences"]


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
