"""The SoCD op, :func:`detox_kernels.socd`: Soft Contrastive Decoding on a batch of logits.

The public function checks its tensors, picks a backend (CUDA, Triton, C++ CPU, float64
reference) through :mod:`detox_kernels.dispatch`, resolves presets, allocates the outputs and runs
it. The kernel contract every backend implements is the docstring of
:mod:`detox_kernels.reference.socd` (and ``docs/kernels.md``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _ext
from ..dispatch import SUPPORTED_DTYPES, Op, describe, register, standard_backends
from ..reference.socd import DIVERGENCES, socd_reference

DIVERGENCE_CODES = {name: i for i, name in enumerate(DIVERGENCES)}  # order fixed by csrc/ops.cpp
PRESETS = {
    # the paper (Eq. 10, A.2): ceil, |y|, k in [10, V/2]
    "paper": dict(k_rounding="ceil", subtract="abs", k_max=lambda v: v // 2),
    # the released HSPD code: floor, signed y, k in [10, V]
    "hspd-code": dict(k_rounding="floor", subtract="signed", k_max=lambda v: v),
}


class SocdStats(NamedTuple):
    """Per-row statistics: ``alpha`` (float32), ``divergence`` (float32, before clamping; NaN
    or inf for rows left unchanged) and ``k`` (int32, the number of tokens changed)."""

    alpha: torch.Tensor
    divergence: torch.Tensor
    k: torch.Tensor


class SocdArgs(NamedTuple):
    divergence_kind: int
    k_min: int
    k_max: int
    vocab_size: int
    k_ceil: bool
    signed_subtract: bool


# ---------------------------------------------------------------- backends


def _run_reference(base, toxic, out, alpha, divergence, k, divergence_kind, k_min, k_max, vocab_size, k_ceil,
                   signed_subtract):
    new, a, d, m = socd_reference(
        base,
        toxic,
        divergence=DIVERGENCES[divergence_kind],
        k_min=k_min,
        k_max=k_max,
        k_rounding="ceil" if k_ceil else "floor",
        subtract="signed" if signed_subtract else "abs",
        vocab_size=vocab_size,
    )
    out.copy_(new)
    alpha.copy_(a)
    divergence.copy_(d)
    k.copy_(m)


# chosen on base_logits (toxic_logits has its dtype and device, checked first)
BACKENDS = standard_backends("socd", ("base_logits",), reference_run=_run_reference, triton_module="socd")


# ---------------------------------------------------------------- public op


def _check(base_logits, toxic_logits, *, out=None, **_options) -> tuple:
    """The tensor checks of :func:`socd` (shapes, dtypes, devices); returns the dispatch input."""
    base, toxic = base_logits, toxic_logits
    if not isinstance(base, torch.Tensor) or not isinstance(toxic, torch.Tensor):
        raise TypeError(f"socd: base_logits and toxic_logits must be tensors, got base {describe(base)} and "
                        f"toxic {describe(toxic)}")
    if base.dim() != 2 or toxic.shape != base.shape:
        raise ValueError(
            "socd: base_logits and toxic_logits must both be [B, V] with the same shape, got "
            f"base {describe(base)} and toxic {describe(toxic)} (models with different vocabularies "
            "cannot be contrasted; pass vocab_size= for padded output layers)"
        )
    if toxic.dtype != base.dtype:
        raise ValueError(f"socd: base_logits and toxic_logits must have the same dtype, got base {describe(base)} "
                         f"and toxic {describe(toxic)}")
    if toxic.device != base.device:
        raise ValueError(f"socd: base_logits and toxic_logits must be on the same device, got base "
                         f"{describe(base)} and toxic {describe(toxic)}")
    if base.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"socd: logits must be float32, float16 or bfloat16, got base {describe(base)}")
    if out is not None and (
        not isinstance(out, torch.Tensor) or out.shape != base.shape or out.dtype != base.dtype
        or out.device != base.device
    ):
        raise ValueError(f"socd: out must be a tensor like base_logits ({describe(base)}), got out {describe(out)}")
    return (base,)


def _resolve(width, divergence, k_min, k_max, k_rounding, subtract, preset, vocab_size) -> SocdArgs:
    """The non-tensor arguments of :func:`socd`, checked and with the preset applied."""
    if divergence not in DIVERGENCE_CODES:
        raise ValueError(f"socd: unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    v = width if vocab_size is None else int(vocab_size)
    if not 0 < v <= width:
        raise ValueError(f"socd: vocab_size must be in [1, {width}] (the logits' width), got {vocab_size}")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"socd: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        k_rounding, subtract = p["k_rounding"], p["subtract"]
        if k_max is None:
            k_max = p["k_max"](v)
    if k_rounding not in ("ceil", "floor"):
        raise ValueError(f"socd: k_rounding must be 'ceil' or 'floor', got {k_rounding!r}")
    if subtract not in ("abs", "signed"):
        raise ValueError(f"socd: subtract must be 'abs' or 'signed', got {subtract!r}")
    if k_max is None:
        k_max = v // 2
    if int(k_min) < 0 or int(k_max) < 0:
        raise ValueError(f"socd: k_min and k_max must be >= 0, got {k_min} and {k_max}")
    return SocdArgs(DIVERGENCE_CODES[divergence], int(k_min), int(k_max), v, k_rounding == "ceil", subtract == "signed")


def _launch(
    chosen,
    base_logits,
    toxic_logits,
    *,
    divergence="l2",
    k_min=10,
    k_max=None,
    k_rounding="ceil",
    subtract="abs",
    preset=None,
    vocab_size=None,
    out=None,
    return_stats=False,
    check_nan=None,
):
    """:func:`socd` on the backend ``chosen``, without the tensor checks (same defaults)."""
    a = _resolve(base_logits.shape[1], divergence, k_min, k_max, k_rounding, subtract, preset, vocab_size)
    base, toxic = base_logits, toxic_logits
    if base.shape[1] > 0 and (base.stride(1) != 1 or toxic.stride(1) != 1):
        base, toxic = base.contiguous(), toxic.contiguous()
    target = out if out is not None else torch.empty_like(base, memory_format=torch.contiguous_format)
    work = target if (target.shape[1] == 0 or target.stride(1) == 1) else torch.empty_like(base)
    rows = base.shape[0]
    stats = SocdStats(
        torch.empty(rows, dtype=torch.float32, device=base.device),
        torch.empty(rows, dtype=torch.float32, device=base.device),
        torch.empty(rows, dtype=torch.int32, device=base.device),
    )
    chosen.run(base, toxic, work, stats.alpha, stats.divergence, stats.k, *a)
    if work is not target:
        target.copy_(work)
    if check_nan is None:
        check_nan = base.device.type == "cpu"
    if check_nan and not torch.compiler.is_compiling():
        _raise_on_nan(base, toxic, stats, a.vocab_size)
    return (target, stats) if return_stats else target


OP = register(Op("socd", BACKENDS, _check, _launch))


def socd(
    base_logits: torch.Tensor,
    toxic_logits: torch.Tensor,
    *,
    divergence: str = "l2",
    k_min: int = 10,
    k_max: int | None = None,
    k_rounding: str = "ceil",
    subtract: str = "abs",
    preset: str | None = None,
    vocab_size: int | None = None,
    out: torch.Tensor | None = None,
    return_stats: bool = False,
    check_nan: bool | None = None,
    backend: str | None = None,
):
    """Soft Contrastive Decoding: suppress the tokens the toxic model prefers.

    Args:
        base_logits, toxic_logits: ``[B, V']`` next-token scores of the base and the toxic
            model (fp32/fp16/bf16, one device), taken before temperature/top-k/top-p.
        divergence: ``fkl | rkl | skl | jsd | tvd | l2`` (``l2`` is the paper's main setting).
        k_min, k_max: bounds of the number of suppressed tokens; ``k_max=None`` means
            ``vocab_size // 2``.
        k_rounding: ``ceil`` (paper) or ``floor`` (official code) for ``alpha * V``.
        subtract: ``abs`` subtracts ``alpha * |y|`` (paper), ``signed`` ``alpha * y`` (code).
        preset: ``"paper"`` or ``"hspd-code"``; sets ``k_rounding``, ``subtract`` and the
            default ``k_max`` (``V // 2`` / ``V``), overriding the first two arguments.
        vocab_size: the real vocabulary ``V <= V'``; columns past it are copied unchanged.
        out: where to write the result (may be ``base_logits`` itself, for in place).
        return_stats: also return :class:`SocdStats` (per-row alpha, divergence, k).
        check_nan: raise on NaN inputs. ``None`` (default) checks on CPU only, where it costs
            nothing on the normal path; on a GPU the check would synchronise with the host, so
            by default NaN rows are left unchanged there and reported as a NaN divergence.
        backend: force ``cuda | triton | cpu | reference`` (else ``DETOX_BACKEND``, else auto).

    Returns:
        The new logits (``out`` if given), or ``(logits, stats)`` with ``return_stats=True``.
    """
    chosen = OP.select(*_check(base_logits, toxic_logits, out=out), backend=backend)
    return _launch(chosen, base_logits, toxic_logits, divergence=divergence, k_min=k_min, k_max=k_max,
                   k_rounding=k_rounding, subtract=subtract, preset=preset, vocab_size=vocab_size, out=out,
                   return_stats=return_stats, check_nan=check_nan)


def _raise_on_nan(base, toxic, stats, v):
    # Only rows whose divergence came out NaN can hold a NaN input: no extra pass otherwise.
    suspect = torch.isnan(stats.divergence)
    if not bool(suspect.any()):
        return
    rows = suspect.nonzero().flatten()
    bad = torch.isnan(base[rows, :v]).any(-1) | torch.isnan(toxic[rows, :v]).any(-1)
    if bool(bad.any()):
        which = rows[bad].tolist()
        raise ValueError(
            f"socd: NaN in the logits of row(s) {which[:10]}{' ...' if len(which) > 10 else ''}; "
            "check the models' outputs (pass check_nan=False to leave such rows unchanged)"
        )


# Fake (meta) implementations, so that torch.compile and FakeTensor tracing work.
if _ext.has_cpu_kernels():

    @torch.library.register_fake("detox::socd")
    def _socd_fake(base, toxic, out, alpha, divergence, k, divergence_kind, k_min, k_max, vocab_size, k_ceil, signed_subtract):
        return None
