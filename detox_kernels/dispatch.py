"""Backend selection shared by every op.

Each op lists its backends in priority order (CUDA, Triton, C++ CPU, reference). A backend
answers two questions: is it available in this installation at all (``unavailable_reason``),
and can it take this particular input (``not_supported_reasons``). The first backend with no
reason runs; if none can, the error lists every backend's reasons. ``DETOX_BACKEND`` (or the
``backend=`` argument of the public functions) forces one backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import _ext

BACKEND_NAMES = ("cuda", "triton", "cpu", "reference")


class BackendUnavailableError(RuntimeError):
    """No backend can run the op on the given input (or a forced backend cannot)."""


@dataclass
class Backend:
    name: str
    run: Callable
    unavailable_reason: Callable[[], str | None]
    input_reasons: Callable[..., list[str]] = field(default=lambda *a, **k: [])

    def not_supported_reasons(self, *args, forced: bool = False, **kwargs) -> list[str]:
        why = self.unavailable_reason()
        if why is not None:
            return [why]
        return list(self.input_reasons(*args, forced=forced, **kwargs))


def _check_forced(name: str | None) -> str | None:
    if name is None:
        name = os.environ.get("DETOX_BACKEND") or None
    if name is not None and name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    return name


def select(op: str, backends: Sequence[Backend], *args, backend: str | None = None, **kwargs) -> Backend:
    """The backend that runs ``op`` on these inputs (see module docstring)."""
    forced = _check_forced(backend)
    if forced is not None:
        for b in backends:
            if b.name == forced:
                reasons = b.not_supported_reasons(*args, forced=True, **kwargs)
                if reasons:
                    raise BackendUnavailableError(
                        f"{op}: backend {forced!r} was forced but cannot run this input: "
                        + "; ".join(reasons)
                    )
                return b
        raise BackendUnavailableError(f"{op}: no backend named {forced!r} for this op")
    all_reasons = []
    for b in backends:
        reasons = b.not_supported_reasons(*args, **kwargs)
        if not reasons:
            return b
        all_reasons.append(f"  {b.name}: " + "; ".join(reasons))
    raise BackendUnavailableError(f"{op}: no backend can run this input:\n" + "\n".join(all_reasons))


def device_reasons(t: torch.Tensor, device_type: str) -> list[str]:
    if t.device.type != device_type:
        return [f"input is on {t.device.type}, this backend runs on {device_type}"]
    return []


SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dtype_reasons(t: torch.Tensor, dtypes=SUPPORTED_DTYPES) -> list[str]:
    if t.dtype not in dtypes:
        return [f"dtype {t.dtype} not supported (supported: {', '.join(str(d) for d in dtypes)})"]
    return []


# ---------------------------------------------------------------- shared availability reasons

CUDA_NOT_BUILT = (
    "detox_kernels._C was built without CUDA kernels (CPU-only torch or no CUDA toolkit at build time)"
)


def cuda_unavailable() -> str | None:
    """Why the compiled CUDA backend cannot run in this installation (None if it can)."""
    if _ext.has_cuda_kernels():
        return None
    if _ext.LOAD_ERROR:
        return _ext.LOAD_ERROR
    return CUDA_NOT_BUILT


def cpu_unavailable() -> str | None:
    """Why the compiled C++ CPU backend cannot run in this installation (None if it can)."""
    return None if _ext.has_cpu_kernels() else _ext.LOAD_ERROR


def triton_device_reasons(t: torch.Tensor, forced: bool = False) -> list[str]:
    """Why the Triton backend cannot take a tensor on ``t``'s device: it runs on CUDA tensors,
    and on CPU tensors only in Triton's interpreter (``TRITON_INTERPRET=1``) when forced."""
    if t.device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return ["input is on cpu and TRITON_INTERPRET=1 is not set"]
        if not forced:
            return ["input is on cpu: the Triton interpreter is for testing, force it with DETOX_BACKEND=triton"]
        return []
    if t.device.type != "cuda":
        return [f"input is on {t.device.type}, Triton runs on cuda"]
    return []
