"""Triton backend of the toxification-reversal op: ``torch.ops.detox.reverse_toxification_triton``.

Same arguments and kernel contract as ``detox::reverse_toxification_`` (see
``detox_kernels/reference/reversal.py``). One program per token row (grid ``(B,)``) loads the
row of ``o``, ``delta`` and ``e_neg`` as one ``[BLOCK_H, BLOCK_D]`` tile (a row holds ``H * D``
values, a few thousand at most for real models), reduces the per-head dot product and norms
along ``D``, forms ``o - s * delta`` per head, rescales by ``|o| / |o'|`` and stores the row:
one read and one write of ``o``. Float32 arithmetic; ``x ** p`` as ``exp2(p * log2(x))``.

Without Triton the module still imports, with ``AVAILABLE = False`` and the reason in
``UNAVAILABLE_REASON``.
"""

from __future__ import annotations

import torch

from ..dispatch import describe
from . import AVAILABLE, UNAVAILABLE_REASON, tl, triton  # noqa: F401  (the guarded import)

MAX_TILE = 16384  # H * D (padded to powers of two) held by one program


def _inner_contiguous(t: torch.Tensor) -> bool:
    _, h, d = t.shape
    return h * d == 0 or ((d == 1 or t.stride(2) == 1) and (h == 1 or t.stride(1) == d))


def check_args(o, delta, e_neg, name="detox::reverse_toxification_triton"):
    if o.dim() != 3:
        raise RuntimeError(f"{name}: head_out must be [B, H, D], got head_out {describe(o)}")
    if delta.shape != o.shape:
        raise RuntimeError(f"{name}: delta must have the shape of head_out, got delta {describe(delta)} and head_out {describe(o)}")
    if e_neg.shape != o.shape[1:]:
        raise RuntimeError(f"{name}: neg_end must be [H, D] = {list(o.shape[1:])}, got neg_end {describe(e_neg)}")
    if o.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise RuntimeError(f"{name}: unsupported dtype, got head_out {describe(o)}")
    if delta.dtype != o.dtype or e_neg.dtype != o.dtype:
        raise RuntimeError(f"{name}: head_out, delta and neg_end must share one dtype, got head_out {describe(o)}, "
                           f"delta {describe(delta)} and neg_end {describe(e_neg)}")
    if delta.device != o.device or e_neg.device != o.device:
        raise RuntimeError(f"{name}: all tensors must be on one device, got head_out {describe(o)}, delta {describe(delta)} "
                           f"and neg_end {describe(e_neg)}")
    if not (_inner_contiguous(o) and _inner_contiguous(delta)):
        raise RuntimeError(f"{name}: each row of head_out and delta must be contiguous [H, D], got strides {o.stride()} and "
                           f"{delta.stride()}")
    if not e_neg.is_contiguous():
        raise RuntimeError(f"{name}: neg_end must be contiguous, got strides {e_neg.stride()}")


if AVAILABLE:

    @triton.jit
    def _reversal_kernel(o_ptr, d_ptr, e_ptr, o_stride, d_stride, H, D, norm_exp, sim_exp,
                         RENORM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        hh = tl.arange(0, BLOCK_H)[:, None]
        dd = tl.arange(0, BLOCK_D)[None, :]
        msk = (hh < H) & (dd < D)
        off = hh * D + dd
        orow = o_ptr + r * o_stride
        o = tl.load(orow + off, mask=msk, other=0.0).to(tl.float32)
        dl = tl.load(d_ptr + r * d_stride + off, mask=msk, other=0.0).to(tl.float32)
        e = tl.load(e_ptr + off, mask=msk, other=0.0).to(tl.float32)
        dot = tl.sum(e * o, axis=1)
        oo = tl.sum(o * o, axis=1)
        ee = tl.sum(e * e, axis=1)
        dsq = tl.sum(dl * dl, axis=1)
        denom = tl.sqrt(ee) * tl.sqrt(oo)
        pos = denom > 0.0
        cs = tl.where(pos, dot / tl.where(pos, denom, 1.0), 0.0)
        s_norm = tl.exp2(norm_exp * tl.log2(1.0 + tl.sqrt(dsq)))
        s_sim = tl.exp2(sim_exp * tl.log2(1.0 + tl.where(cs > 0.0, cs, 0.0)))
        new = o - (s_norm * s_sim)[:, None] * dl
        if RENORM:
            before = tl.sum(tl.sum(o * o, axis=1), axis=0)
            after = tl.sum(tl.sum(new * new, axis=1), axis=0)
            # IEEE sqrt and division (tl.sqrt and "/" are approximate on GPUs): |o| / |o'| is exactly 1
            # when o' == o, so a zero delta leaves the row bit for bit unchanged, as on the other backends.
            ratio = tl.where(after != 0.0, tl.div_rn(tl.sqrt_rn(before), tl.sqrt_rn(tl.where(after != 0.0, after, 1.0))), 1.0)
            new = new * ratio
        tl.store(orow + off, new.to(o_ptr.dtype.element_ty), mask=msk)

    @torch.library.triton_op("detox::reverse_toxification_triton", mutates_args={"head_out"})
    def reverse_toxification_triton(head_out: torch.Tensor, delta: torch.Tensor, neg_end: torch.Tensor,
                                    norm_exp: float, sim_exp: float, renorm: bool) -> None:
        """The reversal with the Triton kernel; the arguments of ``detox::reverse_toxification_``."""
        check_args(head_out, delta, neg_end)
        rows, h, d = head_out.shape
        if rows == 0 or h * d == 0:
            return
        bh, bd = triton.next_power_of_2(h), triton.next_power_of_2(d)
        if bh * bd > MAX_TILE:
            raise RuntimeError(f"detox::reverse_toxification_triton: H * D tile {bh}x{bd} exceeds {MAX_TILE}")
        torch.library.wrap_triton(_reversal_kernel)[(rows,)](
            head_out, delta, neg_end,
            head_out.stride(0) if rows > 1 else h * d,
            delta.stride(0) if rows > 1 else h * d,
            h, d, float(norm_exp), float(sim_exp),
            RENORM=bool(renorm), BLOCK_H=bh, BLOCK_D=bd,
            num_warps=4 if bh * bd <= 4096 else 8,
        )

    @reverse_toxification_triton.register_fake
    def _reverse_toxification_triton_fake(head_out, delta, neg_end, norm_exp, sim_exp, renorm):
        check_args(head_out, delta, neg_end)
        return None

    try:
        from triton.runtime.interpreter import InterpretedFunction as _IF  # noqa: E402
    except ImportError:  # pragma: no cover
        _IF = ()

    if _IF and isinstance(_reversal_kernel, _IF):
        # As for SoCD: under TRITON_INTERPRET=1 keep the op opaque to functionalization.
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        def _opaque_under_functionalization(mode, op, types, args, kwargs):
            return mode.__torch_dispatch__(op, types, args, kwargs)

        reverse_toxification_triton.register_torch_dispatch(FunctionalTensorMode, _opaque_under_functionalization)
