"""Where models run and in which precision: the one place that resolves ``--device`` and ``--dtype``.

``--device``: ``auto`` (CUDA when a CUDA device is available, else the CPU), ``cpu``, ``cuda``
(the current CUDA device) or ``cuda:N``. ``--dtype``: ``auto`` (bfloat16 on CUDA, float32 on the
CPU), ``float32``, ``bfloat16`` or ``float16`` (all three work on the CPU with PyTorch >= 2.1).

Every command that loads a model or a scorer takes both options (:func:`add_device_options`);
the Python API (``Generator``, ``EvalConfig``, the scorers, ``sample_nll``, ``fit_subspace``,
``synthesize``, ``Rewriter``) takes ``device=`` / ``dtype=`` and resolves them here. A bad value is
a :class:`DeviceError` (a :class:`~detox.errors.UserError`: one line, exit code 2 on the command line).
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable

import torch

from .errors import UserError

__all__ = ["DEVICE_CHOICES", "DTYPE_CHOICES", "DeviceError", "add_device_options", "check_same_device",
           "describe", "device_dtype_from_args", "dtype_name", "eval_device", "model_device", "model_dtype",
           "resolve_device", "resolve_dtype", "resolve_training_dtype"]

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


class DeviceError(UserError, ValueError):
    """A device or dtype that cannot be used here, or models on different devices."""


def _no_cuda_reason() -> str:
    built = torch.version.cuda
    if built is None:
        return f"torch {torch.__version__} built without CUDA"
    return f"torch {torch.__version__} built with CUDA {built}, but no CUDA device is visible"


def resolve_device(device: str | torch.device | None = "auto", *, what: str = "--device") -> torch.device:
    """``auto`` / ``None`` / ``cpu`` / ``cuda`` / ``cuda:N`` / a ``torch.device`` -> a usable ``torch.device``.

    ``auto`` is ``cuda`` (the current CUDA device) when one is available, else ``cpu``. Raises
    :class:`DeviceError` for CUDA without a CUDA device, ``cuda:N`` out of range or an unknown name.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    text = str(device).strip().lower()
    try:
        dev = device if isinstance(device, torch.device) else torch.device(text)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{what} {device}: unknown device; use one of {DEVICE_CHOICES}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "meta":  # no data: for tests and shape checks through the Python API
        return dev
    if dev.type != "cuda":
        raise DeviceError(f"{what} {device}: unsupported device type {dev.type!r}; use one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise DeviceError(f"{what} {device}: no CUDA device is available ({_no_cuda_reason()})")
    n = torch.cuda.device_count()
    if dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if not 0 <= dev.index < n:
        raise DeviceError(f"{what} {device}: there {'is' if n == 1 else 'are'} {n} CUDA device{'s' * (n != 1)} "
                          f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "cpu", *,
                  what: str = "--dtype") -> torch.dtype:
    """``auto`` / ``None`` / ``float32`` / ``bfloat16`` / ``float16`` / a ``torch.dtype`` -> a torch dtype.

    ``auto`` is bfloat16 on CUDA (float16 where the GPU has no bfloat16) and float32 elsewhere.
    """
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        key = str(dtype).strip().lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise DeviceError(f"{what} {dtype}: unsupported dtype; use one of {', '.join(DTYPE_CHOICES)}")
        dt = _DTYPES[key]
    if dt not in (torch.float32, torch.bfloat16, torch.float16):
        raise DeviceError(f"{what} {dtype}: unsupported dtype; use one of {', '.join(DTYPE_CHOICES)}")
    if dt is torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"{what} bfloat16: {torch.cuda.get_device_name(dev)} has no bfloat16; use float16 or float32")
    return dt


def resolve_training_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The autocast dtype of a training command (the weights and optimizer stay float32): as
    :func:`resolve_dtype`, but float16 is refused (it would need loss scaling)."""
    dt = resolve_dtype(dtype, device)
    if dt is torch.float16:
        raise DeviceError("--dtype float16: training in float16 needs loss scaling, which is not supported; "
                          "use bfloat16 (mixed precision) or float32")
    return dt


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def describe(device: torch.device, dtype: torch.dtype | None = None) -> dict:
    """What a report records: the device, its name (the GPU's) and the dtype."""
    d = {"device": str(device)}
    if device.type == "cuda":
        d["device_name"] = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        import platform

        d["device_name"] = platform.processor() or platform.machine()
    if dtype is not None:
        d["dtype"] = dtype_name(dtype)
    return d


def model_device(model: Any) -> torch.device | None:
    """The device of a module's first parameter (None for a module without parameters)."""
    for p in model.parameters():
        return p.device
    return None


def model_dtype(model: Any) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _same(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    ia = torch.cuda.current_device() if a.index is None else a.index
    ib = torch.cuda.current_device() if b.index is None else b.index
    return ia == ib


def check_same_device(models: Iterable[tuple[str, Any]], device: torch.device | None = None) -> torch.device | None:
    """Every ``(role, model)`` is on one device (``device`` when given); returns it. Raises
    :class:`DeviceError` naming the roles and devices otherwise."""
    seen = []
    for role, m in models:
        if m is None:
            continue
        d = model_device(m)
        if d is not None:
            seen.append((role, d))
    if device is not None:
        off = [(r, d) for r, d in seen if not _same(d, device)]
        if off:
            where = ", ".join(f"the {r} model is on {d}" for r, d in off)
            raise DeviceError(f"device {device} was asked for, but {where}: move the loaded models there "
                              f"(model.to('{device}')) or pass device='{off[0][1]}'")
        return device
    if seen and any(not _same(d, seen[0][1]) for _, d in seen[1:]):
        where = ", ".join(f"{r} on {d}" for r, d in seen)
        raise DeviceError(f"the loaded models are on different devices ({where}): move them to one device")
    return seen[0][1] if seen else None


# -- the command-line options ---------------------------------------------------------------------------
def _device_arg(text: str) -> str:
    t = text.strip().lower()
    if t == "auto" or t == "cpu" or t == "cuda" or (t.startswith("cuda:") and t[5:].isdigit()):
        return t
    raise argparse.ArgumentTypeError(f"expected one of {DEVICE_CHOICES}, got {text!r}")


def add_device_options(p, *, training: bool = False) -> None:
    """``--device`` and ``--dtype`` (checked against the machine when the command runs)."""
    g = p.add_argument_group("device and precision")
    g.add_argument("--device", type=_device_arg, default="auto",
                   help="where the models and scorers run: auto (CUDA when available, else the CPU), cpu, cuda, "
                        "cuda:N (default: auto)")
    if training:
        g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                       help="compute precision (autocast; the trained weights stay float32): auto (bfloat16 on "
                            "CUDA, float32 on the CPU), float32, bfloat16 (default: auto)")
    else:
        g.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                       help="model weights' precision: auto (bfloat16 on CUDA, float32 on the CPU), float32, "
                            "bfloat16, float16 (default: auto; the toxicity scorers always run in float32)")


def device_dtype_from_args(args, *, training: bool = False) -> tuple[torch.device, torch.dtype]:
    """The resolved ``(device, dtype)`` of a command's ``--device`` / ``--dtype``."""
    dev = resolve_device(args.device)
    dt = resolve_training_dtype(args.dtype, dev) if training else resolve_dtype(args.dtype, dev)
    return dev, dt


def eval_device(cfg: Any, model: Any = None) -> tuple[torch.device, torch.dtype]:
    """The ``(device, dtype)`` of an evaluation: ``cfg.device`` / ``cfg.dtype``, where ``auto`` defers to
    a loaded ``model`` pair (its device and dtype) when one is given."""
    dev_spec, dt_spec = getattr(cfg, "device", "auto"), getattr(cfg, "dtype", "auto")
    loaded = model[0] if isinstance(model, tuple) else None
    if loaded is not None and (dev_spec is None or str(dev_spec).lower() == "auto"):
        dev_spec = model_device(loaded) or "auto"
    dev = resolve_device(dev_spec, what="device")
    if loaded is not None and (dt_spec is None or str(dt_spec).lower() == "auto"):
        dt_spec = model_dtype(loaded)
    return dev, resolve_dtype(dt_spec, dev, what="dtype")
