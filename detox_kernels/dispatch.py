"""Backend selection shared by every op.

An op (:class:`Op`) declares its backends (:class:`Backend`): a name, a priority (lower is tried
first: CUDA, Triton, C++ CPU, float64 reference), why the backend is unavailable in this
installation at all (``unavailable_reason``), why it cannot take a particular input
(``input_reasons``), and the function that runs it. :func:`select` takes the first backend with no
reason; if none can run, its error lists every backend's reasons. ``DETOX_BACKEND`` (or the
``backend=`` argument of the public functions) forces one backend by name.

:func:`resolve_backend` makes that choice once for a given kind of input and returns a callable
with the op's signature that skips the checks and the selection on later calls.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from . import _ext

#: Backend names and their default priority (lower runs first).
PRIORITY = {"cuda": 0, "triton": 1, "cpu": 2, "reference": 3}
BACKEND_NAMES = tuple(PRIORITY)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class BackendUnavailableError(RuntimeError):
    """No backend can run the op on the given input (or a forced backend cannot)."""


def describe(t) -> str:
    """``"[8, 49152] float32 cpu"``: a tensor's shape, dtype and device, for error messages."""
    if not isinstance(t, torch.Tensor):
        return f"a {type(t).__name__}, not a tensor"
    return f"[{', '.join(str(s) for s in t.shape)}] {str(t.dtype).removeprefix('torch.')} {t.device}"


def _no_reasons(*inputs, forced: bool = False) -> list[str]:
    return []


@dataclass(frozen=True)
class Backend:
    """One way to run an op.

    ``run`` takes the op's internal arguments (the ``detox::<op>`` schema of ``csrc/ops.cpp``);
    ``unavailable_reason()`` says why this installation cannot run the backend at all (``None``
    if it can); ``input_reasons(*inputs, forced=...)`` lists why it cannot take these inputs
    (the tensors the op dispatches on, e.g. SoCD's ``base_logits``)."""

    name: str
    priority: int
    unavailable_reason: Callable[[], str | None]
    run: Callable
    input_reasons: Callable[..., list[str]] = field(default=_no_reasons)

    def not_supported_reasons(self, *inputs, forced: bool = False) -> list[str]:
        why = self.unavailable_reason()
        if why is not None:
            return [why]
        return list(self.input_reasons(*inputs, forced=forced))


def _check_forced(name: str | None) -> str | None:
    if name is None:
        name = os.environ.get("DETOX_BACKEND") or None
    if name is not None and name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    return name


def select(op: str, backends: Sequence[Backend], *inputs, backend: str | None = None) -> Backend:
    """The backend that runs ``op`` on ``inputs``: the forced one (``backend`` or
    ``DETOX_BACKEND``) if it can, else the available one of lowest priority that takes the inputs.
    Raises :class:`BackendUnavailableError` with every backend's reasons when none can."""
    forced = _check_forced(backend)
    ordered = sorted(backends, key=lambda b: b.priority)
    if forced is not None:
        for b in ordered:
            if b.name == forced:
                reasons = b.not_supported_reasons(*inputs, forced=True)
                if reasons:
                    raise BackendUnavailableError(
                        f"{op}: backend {forced!r} was forced but cannot run this input: " + "; ".join(reasons)
                    )
                return b
        raise BackendUnavailableError(f"{op}: no backend named {forced!r} for this op")
    all_reasons = []
    for b in ordered:
        reasons = b.not_supported_reasons(*inputs)
        if not reasons:
            return b
        all_reasons.append(f"  {b.name}: " + "; ".join(reasons))
    raise BackendUnavailableError(f"{op}: no backend can run this input:\n" + "\n".join(all_reasons))


# ---------------------------------------------------------------- ops and bound ops


@dataclass(frozen=True)
class Op:
    """A public op: its name, its backends, and its two halves.

    ``check(*args, **kwargs)`` takes the public function's arguments (without ``backend``),
    raises on bad shapes, dtypes and devices, and returns the tensors the backends are chosen on.
    ``launch(backend, *args, **kwargs)`` prepares the outputs and runs ``backend`` without those
    checks. The public function is ``check``, :meth:`select`, ``launch``."""

    name: str
    backends: tuple[Backend, ...]
    check: Callable[..., tuple]
    launch: Callable[..., Any]

    def select(self, *inputs, backend: str | None = None) -> Backend:
        return select(self.name, self.backends, *inputs, backend=backend)


OPS: dict[str, Op] = {}


def register(op: Op) -> Op:
    OPS[op.name] = op
    return op


class BoundOp:
    """An op with its backend chosen once (see :func:`resolve_backend`). Call it like the op
    (without ``backend=``); ``.backend`` is the chosen backend's name."""

    __slots__ = ("op", "_backend", "_launch")

    def __init__(self, op: Op, backend: Backend):
        self.op, self._backend, self._launch = op, backend, op.launch

    @property
    def backend(self) -> str:
        return self._backend.name

    def __call__(self, *args, **kwargs):
        return self._launch(self._backend, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<detox_kernels {self.op.name} on the {self.backend} backend>"


def resolve_backend(op_name: str, *example_args, backend: str | None = None, **example_kwargs) -> BoundOp:
    """Pick the backend of ``op_name`` once, for inputs like ``example_args`` / ``example_kwargs``.

    ``op_name`` is ``"socd"``, ``"sasa_reweight"``, ``"reverse_toxification_"`` or
    ``"sample_top_k_top_p"``; the example
    arguments are those of the op (e.g. ``resolve_backend("socd", base, toxic)``) and are checked
    exactly as the op checks them, but nothing is computed or written. ``backend`` (else
    ``DETOX_BACKEND``, read now) forces one as in the op.

    Returns a callable with the op's signature (without ``backend=``) that runs the chosen backend
    directly: it skips the shape/dtype/device checks and the backend selection, so call it only
    with tensors of the example's dtype, device, rank and row layout (e.g. every decoding step of
    one generation). Argument values (presets, modes, exponents) are still resolved per call.
    """
    try:
        op = OPS[op_name]
    except KeyError:
        raise ValueError(f"unknown op {op_name!r}; choose one of {', '.join(OPS)}") from None
    inputs = op.check(*example_args, **example_kwargs)
    return BoundOp(op, op.select(*inputs, backend=backend))


# ---------------------------------------------------------------- the standard backends


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


def device_reasons(t: torch.Tensor, device_type: str) -> list[str]:
    if t.device.type != device_type:
        return [f"input is on {t.device.type}, this backend runs on {device_type}"]
    return []


def dtype_reasons(t: torch.Tensor, dtypes=SUPPORTED_DTYPES) -> list[str]:
    if t.dtype not in dtypes:
        return [f"dtype {t.dtype} not supported (supported: {', '.join(str(d) for d in dtypes)})"]
    return []


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


def import_triton_module(op_module: str):
    """``(module, reason)``: ``detox_kernels.triton.<op_module>`` and why its backend is
    unavailable (``None`` if it is). The module imports without Triton installed (it then sets
    ``UNAVAILABLE_REASON``); any other import failure becomes the reason."""
    try:
        mod = importlib.import_module(f"detox_kernels.triton.{op_module}")
    except ImportError as exc:  # pragma: no cover  (a broken checkout)
        return None, f"detox_kernels.triton.{op_module} failed to import: {exc}"
    return mod, mod.UNAVAILABLE_REASON


def _torch_op(name: str) -> Callable:
    def run(*args):
        getattr(torch.ops.detox, name)(*args)

    run.__name__ = f"run_{name}"
    return run


def _dtype_of_all(inputs, names) -> list[str]:
    r = []
    for name, t in zip(names, inputs):
        r += [f"{name}: {x}" for x in dtype_reasons(t)]
    return r


def standard_backends(
    op: str,
    input_names: Sequence[str],
    *,
    reference_run: Callable,
    triton_module: str,
    limits: dict[str, Callable[..., list[str]]] | None = None,
) -> tuple[Backend, ...]:
    """The four backends of an op whose compiled kernels are ``torch.ops.detox.<op>`` (CUDA and
    C++ CPU, one schema) and ``torch.ops.detox.<op>_triton`` (Triton, same schema; an in-place
    op's trailing ``_`` is dropped: ``reverse_toxification_triton``).

    The backends are chosen on the tensors named ``input_names`` (the first one's device decides);
    the compiled and Triton backends need each of them in float32/float16/bfloat16. ``limits``
    adds per-backend reasons (``{"triton": fn(*inputs) -> [reasons]}``), e.g. a kernel's tile size.
    """
    limits = dict(limits or {})
    _, tri_reason = import_triton_module(triton_module)

    def with_limits(name, reasons):
        extra = limits.get(name)
        if extra is None:
            return reasons

        def both(*inputs, forced=False):
            return reasons(*inputs, forced=forced) + list(extra(*inputs))

        return both

    def compiled(device_type):
        def reasons(*inputs, forced=False):
            return device_reasons(inputs[0], device_type) + _dtype_of_all(inputs, input_names)

        return reasons

    def triton_reasons(*inputs, forced=False):
        return _dtype_of_all(inputs, input_names) + triton_device_reasons(inputs[0], forced)

    return (
        Backend("cuda", PRIORITY["cuda"], cuda_unavailable, _torch_op(op), with_limits("cuda", compiled("cuda"))),
        Backend("triton", PRIORITY["triton"], lambda: tri_reason, _torch_op(op.rstrip("_") + "_triton"),
                with_limits("triton", triton_reasons)),
        Backend("cpu", PRIORITY["cpu"], cpu_unavailable, _torch_op(op), with_limits("cpu", compiled("cpu"))),
        Backend("reference", PRIORITY["reference"], lambda: None, reference_run),
    )
