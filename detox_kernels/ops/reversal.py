"""The Toxification Reversal op, :func:`detox_kernels.reverse_toxification_`, in place.

The public function checks its tensors, picks a backend (CUDA, Triton, C++ CPU, float64
reference) through :mod:`detox_kernels.dispatch` and runs it. The kernel contract every backend
implements is the docstring of :mod:`detox_kernels.reference.reversal` (and ``docs/kernels.md``).
"""

from __future__ import annotations

import math

import torch

from .. import _ext
from ..dispatch import Op, describe, import_triton_module, register, standard_backends
from ..reference.reversal import reverse_toxification_reference

_triton_reversal, _ = import_triton_module("reversal")


def _run_reference(o, delta, e, norm_exp, sim_exp, renorm):
    o.copy_(reverse_toxification_reference(o, delta, e, norm_exp=norm_exp, sim_exp=sim_exp, renorm=renorm))


def _triton_tile(o):
    """The Triton kernel holds a row's ``[H, D]`` (padded to powers of two) in one program."""
    p2 = _triton_reversal.triton.next_power_of_2  # asked only once the Triton backend is available
    _, h, d = o.shape
    if p2(max(h, 1)) * p2(max(d, 1)) > _triton_reversal.MAX_TILE:
        return [f"H * D = {h} x {d} exceeds the Triton kernel's tile of {_triton_reversal.MAX_TILE} "
                f"(head_out {describe(o)})"]
    return []


# chosen on head_out
BACKENDS = standard_backends("reverse_toxification_", ("head_out",), reference_run=_run_reference,
                             triton_module="reversal", limits={"triton": _triton_tile})


def _inner_contiguous(t: torch.Tensor) -> bool:
    _, h, d = t.shape
    return h * d == 0 or ((d == 1 or t.stride(2) == 1) and (h == 1 or t.stride(1) == d))


def _check(head_out, delta, neg_end, **_options) -> tuple:
    """The tensor checks of :func:`reverse_toxification_` (shapes, dtypes, devices); returns the
    dispatch input."""
    for name, t in (("head_out", head_out), ("delta", delta), ("neg_end", neg_end)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"reverse_toxification_: {name} must be a tensor, got {type(t).__name__}")
    if head_out.dim() != 3:
        raise ValueError(f"reverse_toxification_: head_out must be [B, H, D], got head_out {describe(head_out)}")
    if delta.shape != head_out.shape:
        raise ValueError(f"reverse_toxification_: delta must have the shape of head_out, got delta {describe(delta)} "
                         f"and head_out {describe(head_out)}")
    if neg_end.shape != head_out.shape[1:]:
        raise ValueError(f"reverse_toxification_: neg_end must be [H, D] = {list(head_out.shape[1:])}, got neg_end "
                         f"{describe(neg_end)} (head_out {describe(head_out)})")
    if head_out.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"reverse_toxification_: head_out must be a floating tensor (f32/f16/bf16; f64 on the "
                         f"reference backend), got head_out {describe(head_out)}")
    if delta.dtype != head_out.dtype or neg_end.dtype != head_out.dtype:
        raise ValueError(f"reverse_toxification_: head_out, delta and neg_end must share one dtype, got head_out "
                         f"{describe(head_out)}, delta {describe(delta)} and neg_end {describe(neg_end)}")
    if delta.device != head_out.device or neg_end.device != head_out.device:
        raise ValueError(f"reverse_toxification_: head_out, delta and neg_end must be on one device, got head_out "
                         f"{describe(head_out)}, delta {describe(delta)} and neg_end {describe(neg_end)}")
    return (head_out,)


def _launch(chosen, head_out, delta, neg_end, *, norm_exp=0.4, sim_exp=0.6, renorm=True):
    """:func:`reverse_toxification_` on the backend ``chosen``, without the tensor checks (same defaults)."""
    for name, v in (("norm_exp", norm_exp), ("sim_exp", sim_exp)):
        if not math.isfinite(float(v)):
            raise ValueError(f"reverse_toxification_: {name} must be finite, got {v}")
    work = head_out if _inner_contiguous(head_out) else head_out.contiguous()
    if not _inner_contiguous(delta):
        delta = delta.contiguous()
    chosen.run(work, delta, neg_end.contiguous(), float(norm_exp), float(sim_exp), bool(renorm))
    if work is not head_out:
        head_out.copy_(work)
    return head_out


OP = register(Op("reverse_toxification_", BACKENDS, _check, _launch))


def reverse_toxification_(
    head_out: torch.Tensor,
    delta: torch.Tensor,
    neg_end: torch.Tensor,
    *,
    norm_exp: float = 0.4,
    sim_exp: float = 0.6,
    renorm: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Toxification Reversal on the per-head attention outputs of one position, in place.

    Args:
        head_out: ``o``, ``[B, H, D]``: per token row, the per-head attention output (the input
            of ``o_proj`` / ``c_proj`` viewed as heads). Modified in place. Rows may be strided
            (e.g. the last position of a ``[B, T, H*D]`` tensor), each row contiguous ``[H, D]``;
            other layouts are copied to a contiguous buffer and back.
        delta: ``δ = o_neg − o_pos``, ``[B, H, D]``, from the negatively / positively prefixed
            read pass.
        neg_end: ``e_neg``, ``[H, D]``: the head output at the last token of the negative prefix.
        norm_exp, sim_exp: the exponents of ``s_norm = (1 + ‖δ‖)^norm_exp`` and
            ``s_sim = (1 + relu(cos(e_neg, o)))^sim_exp`` (0.4 and 0.6 in the paper).
        renorm: rescale each row to its norm before the update (norms over all heads and dims).
        backend: force ``cuda | triton | cpu | reference`` (else ``DETOX_BACKEND``, else auto).

    Returns:
        ``head_out``. No host synchronisation, no loop over rows; NaN / inf propagate.
    """
    chosen = OP.select(*_check(head_out, delta, neg_end), backend=backend)
    return _launch(chosen, head_out, delta, neg_end, norm_exp=norm_exp, sim_exp=sim_exp, renorm=renorm)


if _ext.has_cpu_kernels():

    @torch.library.register_fake("detox::reverse_toxification_")
    def _reverse_toxification_fake(head_out, delta, neg_end, norm_exp, sim_exp, renorm):
        return None
