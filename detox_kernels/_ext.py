"""Loads the compiled extension ``detox_kernels._C`` defensively.

The extension registers the ``detox::*`` ops (schemas in ``csrc/ops.cpp``) with their CPU and,
when built with CUDA, CUDA kernels. If it is missing or was built for another torch, the
package still imports, warns once, and the dispatcher falls back to the other backends.
"""

from __future__ import annotations

import warnings

import torch

_C = None
LOAD_ERROR: str | None = None
# Every op csrc/ops.cpp declares; an extension built from older sources lacks some of them.
OPS = ("socd", "reverse_toxification_", "sasa_reweight", "sample_top_k_top_p")


def _torch_release(version: str) -> str:
    return version.split("+")[0]


def _load():
    global _C, LOAD_ERROR
    try:
        from . import _C as mod  # noqa: PLC0415
    except (ImportError, OSError) as exc:  # missing, or undefined symbols from another torch
        LOAD_ERROR = f"detox_kernels._C could not be imported ({type(exc).__name__}: {exc})"
        return
    built = getattr(mod, "torch_version", "?")
    if _torch_release(built) != _torch_release(torch.__version__):
        LOAD_ERROR = (
            f"detox_kernels._C was built for torch {built} but torch {torch.__version__} is "
            "installed; rebuild with `pip install --no-build-isolation .`"
        )
        return
    missing = [op for op in OPS if not hasattr(torch.ops.detox, op)]
    if missing:
        LOAD_ERROR = (
            f"detox_kernels._C is out of date (built from older sources, it lacks detox::{', detox::'.join(missing)}); "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
        return
    _C = mod


_load()
if LOAD_ERROR is not None:
    warnings.warn(
        f"{LOAD_ERROR}. Falling back to the Triton and reference backends "
        "(`python -m detox_kernels.info` shows what is available).",
        RuntimeWarning,
        stacklevel=2,
    )


def has_cpu_kernels() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and bool(getattr(_C, "with_cuda", False))


def build_info() -> dict:
    if _C is None:
        return {"loaded": False, "error": LOAD_ERROR}
    return {
        "loaded": True,
        "torch_version": getattr(_C, "torch_version", "?"),
        "with_cuda": bool(getattr(_C, "with_cuda", False)),
        "cuda_archs": getattr(_C, "cuda_archs", ""),
        "openmp": bool(getattr(_C, "with_openmp", False)),
    }
