"""Triton backend of the SASA re-weighting op: ``torch.ops.detox.sasa_reweight_triton``.

Same arguments and kernel contract as the C++ op ``detox::sasa_reweight`` (the module docstring
of ``detox_kernels/reference/sasa.py``). One program per row (grid ``(B,)``):

1. the K margins as a ``[BLOCK_K, BLOCK_D]`` tile loop over D (float32 accumulation), written to
   ``margins``;
2. the masked softmax (or the tilt) over the candidates that take part;
3. duplicates: a ``[BLOCK_K, BLOCK_K]`` comparison of the ids gives each candidate the summed
   weight of its id and whether it is the id's first occurrence; only first occurrences write,
   so one gather and one scatter of K logits per row, no atomics.

No host synchronisation. Without Triton the module imports with ``AVAILABLE = False``.
"""

from __future__ import annotations

import torch

from ..dispatch import describe
from . import AVAILABLE, UNAVAILABLE_REASON, tl, triton  # noqa: F401  (the guarded import)

MAX_K = 1024  # one program holds K x K id comparisons

if AVAILABLE:

    @triton.jit
    def _sasa_reweight_kernel(
        logits_ptr, ids_ptr, hidden_ptr, dir_ptr, mid_ptr, beta_ptr, valid_ptr, margins_ptr,
        logits_stride, ids_stride, hidden_stride_b, hidden_stride_k, valid_stride, margins_stride,
        V, K, D,
        TILT: tl.constexpr, HAS_VALID: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        in_k = offs_k < K
        ids = tl.load(ids_ptr + row * ids_stride + offs_k, mask=in_k, other=-1)
        take = in_k & (ids >= 0) & (ids < V)
        if HAS_VALID:
            vd = tl.load(valid_ptr + row * valid_stride + offs_k, mask=in_k, other=0)
            take = take & (vd != 0)
        # 1. margins
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        hrow = hidden_ptr + row * hidden_stride_b
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            in_d = offs_d < D
            w = tl.load(dir_ptr + offs_d, mask=in_d, other=0.0)
            m = tl.load(mid_ptr + offs_d, mask=in_d, other=0.0)
            h = tl.load(hrow + offs_k[:, None] * hidden_stride_k + offs_d[None, :],
                        mask=in_k[:, None] & in_d[None, :], other=0.0).to(tl.float32)
            acc += tl.sum((h - m[None, :]) * w[None, :], axis=1)
        tl.store(margins_ptr + row * margins_stride + offs_k, acc, mask=in_k)
        # 2. weights
        if TILT:
            weight = tl.where(take, acc, 0.0)
        else:
            masked = tl.where(take, acc, float("-inf"))
            mx = tl.max(masked, axis=0)
            # NaN margins propagate; all -inf/+inf: keep exp defined
            mx = tl.where((mx == float("inf")) | (mx == float("-inf")), 0.0, mx)
            e = tl.where(take, tl.exp(masked - mx), 0.0)
            s = tl.sum(e, axis=0)
            s = tl.where(s > 0, s, 1.0)  # a row without candidates: no 0/0
            weight = e / s
        # 3. one write per distinct id
        ids_j = tl.load(ids_ptr + row * ids_stride + offs_k, mask=in_k, other=-1)
        take_j = take  # same vector, viewed along the other axis below
        same = (ids[:, None] == ids_j[None, :]) & take[:, None] & take_j[None, :]
        total = tl.sum(tl.where(same, weight[None, :], 0.0), axis=1)
        earlier = tl.sum((same & (offs_k[None, :] < offs_k[:, None])).to(tl.int32), axis=1)
        write = take & (earlier == 0)
        beta = tl.load(beta_ptr + row)
        lrow = logits_ptr + row * logits_stride
        safe = tl.where(write, ids, 0)
        x = tl.load(lrow + safe, mask=write, other=0.0)
        y = x.to(tl.float32) + beta * total
        tl.store(lrow + safe, y.to(x.dtype), mask=write)

    def _is_interpreted(kernel) -> bool:
        try:
            from triton.runtime.interpreter import InterpretedFunction
        except ImportError:  # pragma: no cover
            return False
        return isinstance(kernel, InterpretedFunction)

    _INTERPRETED = _is_interpreted(_sasa_reweight_kernel)

    def _check(logits, ids, hidden, direction, midpoint, beta, valid, margins, mode):
        op = "detox::sasa_reweight_triton"
        if logits.dim() != 2 or ids.dim() != 2 or ids.shape[0] != logits.shape[0]:
            raise RuntimeError(f"{op}: logits must be [B, V] and ids [B, K], got logits {describe(logits)} and ids {describe(ids)}")
        b, k = ids.shape
        if hidden.dim() != 3 or hidden.shape[:2] != (b, k):
            raise RuntimeError(f"{op}: hidden must be [B, K, D] = [{b}, {k}, D], got hidden {describe(hidden)}")
        d = hidden.shape[2]
        if direction.shape != (d,) or midpoint.shape != (d,) or direction.dtype != torch.float32 \
                or midpoint.dtype != torch.float32 or not direction.is_contiguous() or not midpoint.is_contiguous():
            raise RuntimeError(f"{op}: direction and midpoint must be contiguous float32 [D] with D = {d}, got direction "
                               f"{describe(direction)} and midpoint {describe(midpoint)}")
        if beta.dtype != torch.float32 or beta.numel() != b or not beta.is_contiguous():
            raise RuntimeError(f"{op}: beta must be a contiguous float32 [B] tensor, B = {b}, got beta {describe(beta)}")
        if ids.dtype != torch.int64 or (k > 0 and ids.stride(1) != 1):
            raise RuntimeError(f"{op}: ids must be int64 with a contiguous last dimension, got ids {describe(ids)} strides {ids.stride()}")
        if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16) or \
                hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise RuntimeError(f"{op}: logits and hidden must be float32, float16 or bfloat16, got logits {describe(logits)} and "
                               f"hidden {describe(hidden)}")
        if (logits.shape[1] > 0 and logits.stride(1) != 1) or (d > 0 and hidden.stride(2) != 1):
            raise RuntimeError(f"{op}: logits and hidden must have a contiguous last dimension, got strides {logits.stride()} and "
                               f"{hidden.stride()}")
        if margins.dtype != torch.float32 or margins.shape != (b, k) or (k > 0 and margins.stride(1) != 1):
            raise RuntimeError(f"{op}: margins must be float32 [B, K] = [{b}, {k}], got margins {describe(margins)}")
        if valid is not None and (valid.dtype != torch.bool or valid.shape != (b, k) or (k > 0 and valid.stride(1) != 1)):
            raise RuntimeError(f"{op}: valid must be bool [B, K] = [{b}, {k}] with a contiguous last dimension, got valid "
                               f"{describe(valid)}")
        if mode not in (0, 1):
            raise RuntimeError(f"{op}: mode must be 0 (softmax) or 1 (tilt)")
        if k > MAX_K:
            raise RuntimeError(f"{op}: at most {MAX_K} candidates per row, got hidden {describe(hidden)}")
        for t in (ids, hidden, direction, midpoint, beta, margins) + ((valid,) if valid is not None else ()):
            if t.device != logits.device:
                raise RuntimeError(f"{op}: all tensors must be on one device, got logits {describe(logits)} and {describe(t)}")

    @torch.library.triton_op("detox::sasa_reweight_triton", mutates_args={"logits", "margins"})
    def sasa_reweight_triton(
        logits: torch.Tensor,
        ids: torch.Tensor,
        hidden: torch.Tensor,
        direction: torch.Tensor,
        midpoint: torch.Tensor,
        beta: torch.Tensor,
        valid: torch.Tensor | None,
        margins: torch.Tensor,
        weighting: int,
    ) -> None:
        """SASA re-weighting with the Triton kernel; the arguments of ``detox::sasa_reweight``."""
        _check(logits, ids, hidden, direction, midpoint, beta, valid, margins, weighting)
        b, k = ids.shape
        d = hidden.shape[2]
        if b == 0 or k == 0:
            return
        block_k = max(16, triton.next_power_of_2(k))
        block_d = max(16, min(triton.next_power_of_2(max(d, 1)), (8192 if _INTERPRETED else 4096) // block_k))
        torch.library.wrap_triton(_sasa_reweight_kernel)[(b,)](
            logits, ids, hidden, direction, midpoint, beta, valid if valid is not None else ids, margins,
            logits.stride(0), ids.stride(0), hidden.stride(0), hidden.stride(1),
            valid.stride(0) if valid is not None else 0, margins.stride(0),
            logits.shape[1], k, d,
            TILT=weighting == 1, HAS_VALID=valid is not None, BLOCK_K=block_k, BLOCK_D=block_d,
            num_warps=4,
        )

    @sasa_reweight_triton.register_fake
    def _sasa_reweight_triton_fake(logits, ids, hidden, direction, midpoint, beta, valid, margins, weighting):
        _check(logits, ids, hidden, direction, midpoint, beta, valid, margins, weighting)
        return None

    if _INTERPRETED:
        # As for SoCD: under the interpreter wrap_triton cannot trace; keep the op opaque.
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        def _opaque_under_functionalization(mode, op, types, args, kwargs):
            return mode.__torch_dispatch__(op, types, args, kwargs)

        sasa_reweight_triton.register_torch_dispatch(FunctionalTensorMode, _opaque_under_functionalization)
