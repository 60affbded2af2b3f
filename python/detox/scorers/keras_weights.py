"""Keras 3 ``.weights.h5`` files read with ``h5py`` (no Keras, no TensorFlow) into PyTorch layout.

Keras stores LSTM weights as ``kernel (in, 4u)``, ``recurrent_kernel (u, 4u)``, ``bias (4u)`` with
the gates in the order i, f, c, o, which is PyTorch's i, f, g, o; a Dense layer as ``kernel (in,
out)``, ``bias (out)``. PyTorch wants the transposes, and splits the LSTM bias in two (``bias_ih``
+ ``bias_hh``): the whole Keras bias goes to ``bias_ih``, zeros to ``bias_hh``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from .base import ScorerError

__all__ = ["read_bilstm_weights"]


def _layer_arrays(group: Any) -> list[np.ndarray]:
    """A layer's variables in their stored order (``vars/0``, ``vars/1``, ...)."""
    vars_ = group["vars"]
    return [np.asarray(vars_[k]) for k in sorted(vars_.keys(), key=int)]


def read_bilstm_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The weights of Embedding -> Bidirectional(LSTM) -> Dense -> Dense from a Keras 3 weights file.

    Returns PyTorch state-dict arrays named ``embedding.weight``, ``lstm.{weight_ih,weight_hh,bias_ih,
    bias_hh}_l0[_reverse]`` (an ``nn.LSTM(bidirectional=True)``), ``dense.{weight,bias}`` (the first
    Dense) and ``out.{weight,bias}`` (the second). Raises :class:`ScorerError` when h5py is missing
    or the file does not hold those layers.
    """
    try:
        import h5py
    except ImportError as e:
        raise ScorerError("reading the Keras weights needs h5py: pip install h5py") from e
    with h5py.File(path, "r") as f:
        if "layers" not in f:
            raise ScorerError(f"{path}: not a Keras 3 .weights.h5 file (no 'layers' group)")
        layers = f["layers"]
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
        (emb,) = _layer_arrays(layers[emb_name])
        bi = layers[bi_name]
        fw = _layer_arrays(bi["forward_layer"]["cell"])
        bw = _layer_arrays(bi["backward_layer"]["cell"])
        d1 = _layer_arrays(layers[dense_names[0]])
        d2 = _layer_arrays(layers[dense_names[1]])
    return {
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
