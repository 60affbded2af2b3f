"""``detox_kernels.socd``: Soft Contrastive Decoding on a batch of logits.

The public function validates arguments, resolves presets, allocates outputs and picks a
backend (CUDA, Triton, C++ CPU, float64 reference) through :mod:`detox_kernels.dispatch`.
Semantics: ``../shared/specs/socd.md``; the kernel contract is in
:mod:`detox_kernels.reference.socd`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import _ext
from .dispatch import (
    Backend,
    cpu_unavailable,
    cuda_unavailable,
    device_reasons,
    dtype_reasons,
    select,
    triton_device_reasons,
)
from .reference.socd import DIVERGENCES, socd_reference

try:  # the Triton backend imports without triton installed and then reports why it is unavailable
    from .triton import socd as _triton_socd

    _TRITON_REASON = _triton_socd.UNAVAILABLE_REASON
except ImportError as _exc:  # pragma: no cover
    _TRITON_REASON = f"detox_kernels.triton.socd failed to import: {_exc}"

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


def _run_compiled(base, toxic, out, stats, a: SocdArgs):
    torch.ops.detox.socd(base, toxic, out, stats.alpha, stats.divergence, stats.k, *a)


def _run_triton(base, toxic, out, stats, a: SocdArgs):
    torch.ops.detox.socd_triton(base, toxic, out, stats.alpha, stats.divergence, stats.k, *a)


def _run_reference(base, toxic, out, stats, a: SocdArgs):
    new, alpha, d, m = socd_reference(
        base,
        toxic,
        divergence=DIVERGENCES[a.divergence_kind],
        k_min=a.k_min,
        k_max=a.k_max,
        k_rounding="ceil" if a.k_ceil else "floor",
        subtract="signed" if a.signed_subtract else "abs",
        vocab_size=a.vocab_size,
    )
    out.copy_(new)
    stats.alpha.copy_(alpha)
    stats.divergence.copy_(d)
    stats.k.copy_(m)


def _compiled_reasons(device_type):
    def reasons(base, toxic, forced=False):
        return device_reasons(base, device_type) + dtype_reasons(base)

    return reasons


def _triton_reasons(base, toxic, forced=False):
    return dtype_reasons(base) + triton_device_reasons(base, forced)


BACKENDS = (
    Backend("cuda", _run_compiled, cuda_unavailable, _compiled_reasons("cuda")),
    Backend("triton", _run_triton, lambda: _TRITON_REASON, _triton_reasons),
    Backend("cpu", _run_compiled, cpu_unavailable, _compiled_reasons("cpu")),
    Backend("reference", _run_reference, lambda: None, lambda base, toxic, forced=False: []),
)


# ---------------------------------------------------------------- public op


def _resolve(base, toxic, divergence, k_min, k_max, k_rounding, subtract, preset, vocab_size) -> SocdArgs:
    if not isinstance(base, torch.Tensor) or not isinstance(toxic, torch.Tensor):
        raise TypeError("socd: base_logits and toxic_logits must be tensors")
    if base.dim() != 2 or toxic.shape != base.shape:
        raise ValueError(
            "socd: base_logits and toxic_logits must both be [B, V] with the same shape; got "
            f"{tuple(base.shape)} and {tuple(toxic.shape)} (models with different vocabularies "
            "cannot be contrasted; pass vocab_size= for padded output layers)"
        )
    if toxic.dtype != base.dtype:
        raise ValueError(f"socd: base_logits is {base.dtype} but toxic_logits is {toxic.dtype}")
    if toxic.device != base.device:
        raise ValueError(f"socd: base_logits is on {base.device} but toxic_logits is on {toxic.device}")
    if base.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"socd: logits must be float32, float16 or bfloat16, got {base.dtype}")
    if divergence not in DIVERGENCE_CODES:
        raise ValueError(f"socd: unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    width = base.shape[1]
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
    a = _resolve(base_logits, toxic_logits, divergence, k_min, k_max, k_rounding, subtract, preset, vocab_size)
    chosen = select("socd", BACKENDS, base_logits, toxic_logits, backend=backend)
    base, toxic = base_logits, toxic_logits
    if base.shape[1] > 0 and (base.stride(1) != 1 or toxic.stride(1) != 1):
        base, toxic = base.contiguous(), toxic.contiguous()
    target = out
    if out is None:
        target = torch.empty_like(base, memory_format=torch.contiguous_format)
    else:
        if out.shape != base_logits.shape or out.dtype != base_logits.dtype or out.device != base_logits.device:
            raise ValueError(
                f"socd: out must be a {base_logits.dtype} tensor of shape {tuple(base_logits.shape)} on "
                f"{base_logits.device}; got {out.dtype} {tuple(out.shape)} on {out.device}"
            )
    work = target if (target.shape[1] == 0 or target.stride(1) == 1) else torch.empty_like(base)
    rows = base.shape[0]
    stats = SocdStats(
        torch.empty(rows, dtype=torch.float32, device=base.device),
        torch.empty(rows, dtype=torch.float32, device=base.device),
        torch.empty(rows, dtype=torch.int32, device=base.device),
    )
    chosen.run(base, toxic, work, stats, a)
    if work is not target:
        target.copy_(work)
    if check_nan is None:
        check_nan = base.device.type == "cpu"
    if check_nan and not torch.compiler.is_compiling():
        _raise_on_nan(base, toxic, stats, a.vocab_size)
    return (target, stats) if return_stats else target


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
