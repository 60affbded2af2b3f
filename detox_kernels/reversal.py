"""``detox_kernels.reverse_toxification_``: the Toxification Reversal update, in place.

Spec: ``../shared/specs/reversal.md``; the kernel contract is the docstring of
:mod:`detox_kernels.reference.reversal`. The public function validates its arguments and picks a
backend (CUDA, Triton, C++ CPU, float64 reference) through :mod:`detox_kernels.dispatch`.
"""

from __future__ import annotations

import math

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
from .reference.reversal import reverse_toxification_reference

try:
    from .triton import reversal as _triton_reversal

    _TRITON_REASON = _triton_reversal.UNAVAILABLE_REASON
except ImportError as _exc:  # pragma: no cover
    _triton_reversal = None
    _TRITON_REASON = f"detox_kernels.triton.reversal failed to import: {_exc}"


def _run_compiled(o, delta, e, norm_exp, sim_exp, renorm):
    torch.ops.detox.reverse_toxification_(o, delta, e, norm_exp, sim_exp, renorm)


def _run_triton(o, delta, e, norm_exp, sim_exp, renorm):
    torch.ops.detox.reverse_toxification_triton(o, delta, e, norm_exp, sim_exp, renorm)


def _run_reference(o, delta, e, norm_exp, sim_exp, renorm):
    o.copy_(reverse_toxification_reference(o, delta, e, norm_exp=norm_exp, sim_exp=sim_exp, renorm=renorm))


def _compiled_reasons(device_type):
    def reasons(o, forced=False):
        return device_reasons(o, device_type) + dtype_reasons(o)

    return reasons


def _triton_reasons(o, forced=False):
    r = dtype_reasons(o)
    r += triton_device_reasons(o, forced)
    _, h, d = o.shape
    if _triton_reversal is not None and _triton_reversal.AVAILABLE:
        import triton

        if triton.next_power_of_2(max(h, 1)) * triton.next_power_of_2(max(d, 1)) > _triton_reversal.MAX_TILE:
            r.append(f"H * D = {h} x {d} exceeds the Triton kernel's tile of {_triton_reversal.MAX_TILE}")
    return r


BACKENDS = (
    Backend("cuda", _run_compiled, cuda_unavailable, _compiled_reasons("cuda")),
    Backend("triton", _run_triton, lambda: _TRITON_REASON, _triton_reasons),
    Backend("cpu", _run_compiled, cpu_unavailable, _compiled_reasons("cpu")),
    Backend("reference", _run_reference, lambda: None, lambda o, forced=False: []),
)


def _inner_contiguous(t: torch.Tensor) -> bool:
    _, h, d = t.shape
    return h * d == 0 or ((d == 1 or t.stride(2) == 1) and (h == 1 or t.stride(1) == d))


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
    for name, t in (("head_out", head_out), ("delta", delta), ("neg_end", neg_end)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"reverse_toxification_: {name} must be a tensor, got {type(t).__name__}")
    if head_out.dim() != 3:
        raise ValueError(f"reverse_toxification_: head_out must be [B, H, D], got {tuple(head_out.shape)}")
    if delta.shape != head_out.shape:
        raise ValueError(f"reverse_toxification_: delta {tuple(delta.shape)} must have the shape of head_out "
                         f"{tuple(head_out.shape)}")
    if neg_end.shape != head_out.shape[1:]:
        raise ValueError(f"reverse_toxification_: neg_end must be [H, D] = {tuple(head_out.shape[1:])}, got "
                         f"{tuple(neg_end.shape)}")
    if head_out.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise ValueError(f"reverse_toxification_: head_out must be a floating tensor (f32/f16/bf16), got {head_out.dtype}")
    if delta.dtype != head_out.dtype or neg_end.dtype != head_out.dtype:
        raise ValueError(f"reverse_toxification_: head_out ({head_out.dtype}), delta ({delta.dtype}) and neg_end "
                         f"({neg_end.dtype}) must share one dtype")
    if delta.device != head_out.device or neg_end.device != head_out.device:
        raise ValueError("reverse_toxification_: head_out, delta and neg_end must be on one device")
    for name, v in (("norm_exp", norm_exp), ("sim_exp", sim_exp)):
        if not math.isfinite(float(v)):
            raise ValueError(f"reverse_toxification_: {name} must be finite, got {v}")
    chosen = select("reverse_toxification_", BACKENDS, head_out, backend=backend)
    work = head_out if _inner_contiguous(head_out) else head_out.contiguous()
    if not _inner_contiguous(delta):
        delta = delta.contiguous()
    chosen.run(work, delta, neg_end.contiguous(), float(norm_exp), float(sim_exp), bool(renorm))
    if work is not head_out:
        head_out.copy_(work)
    return head_out


if _ext.has_cpu_kernels():

    @torch.library.register_fake("detox::reverse_toxification_")
    def _reverse_toxification_fake(head_out, delta, neg_end, norm_exp, sim_exp, renorm):
        return None
