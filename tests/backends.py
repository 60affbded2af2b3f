"""The backends an op's tests run on here (shared by test_socd, test_sasa and test_reversal).

Imported like ``socd_check`` and ``tiny_models``: pytest puts this directory on ``sys.path``
(rootdir-relative imports, no ``__init__.py``).
"""

from __future__ import annotations

import os

import torch


def available_backends(module) -> list[str]:
    """Names of the non-reference backends of ``module.BACKENDS`` (an op's module under
    ``detox_kernels.ops``) that can run in this process,
    in priority order: built ones only, ``cuda`` only with a GPU, ``triton`` with a GPU or under
    ``TRITON_INTERPRET=1``. ``DETOX_TEST_BACKENDS`` (e.g. ``"cpu,triton"``) restricts the list."""
    names = []
    for b in module.BACKENDS:
        if b.unavailable_reason() is not None or b.name == "reference":
            continue
        if b.name == "cuda" and not torch.cuda.is_available():
            continue
        if b.name == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            continue
        names.append(b.name)
    only = os.environ.get("DETOX_TEST_BACKENDS")
    if only:
        names = [n for n in names if n in only.split(",")]
    return names
