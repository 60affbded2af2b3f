"""Triton backend of the fused sampling op: ``torch.ops.detox.sample_top_k_top_p_triton``.

Same arguments and kernel contract as the C++ op ``detox::sample_top_k_top_p`` (the module
docstring of ``detox_kernels/reference/sampling.py``). One program per row (grid ``(B,)``), tile
loops over the vocabulary, no sort and no atomics:

1. the maximum score (scores ``x = logit / temperature`` with IEEE division, NaN as ``-inf``);
2. top-k: a radix search, 4 bits per pass (8 passes), of the largest key ``c`` with
   ``count(key >= c) >= k``: each pass counts the 16 candidate digits at once (a
   ``[BLOCK, 16]`` comparison); ``c`` is the k-th largest key;
3. top-p: the same search on the mass ``sum(exp(x - max), key >= c) >= top_p * Z`` (``Z`` is
   the first pass's count at digit 0), giving the cut-off value ``v*``; one pass for the mass
   strictly above ``v*`` and the number of ties, one (``tl.cumsum``) for the id of the last
   kept tie;
4. the kept mass and the last kept id, then the first kept id (``tl.cumsum`` per tile plus the
   running sum) whose cumulative mass exceeds ``u * Z_kept``.

Keys are the float bits mapped to ``[0, 2^32)`` in int64 (order preserving, ``-0.0`` folded
onto ``+0.0``). No host synchronisation. Without Triton the module imports with
``AVAILABLE = False``.
"""

from __future__ import annotations

import os

import torch

from ..dispatch import describe
from . import AVAILABLE, UNAVAILABLE_REASON, tl, triton  # noqa: F401  (the guarded import)

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

if AVAILABLE:

    @triton.jit
    def _keys(lg_ptr, offs, V, temperature):
        inb = offs < V
        x = tl.load(lg_ptr + offs, mask=inb, other=float("-inf")).to(tl.float32)
        x = tl.div_rn(x, temperature)
        x = tl.where(x != x, float("-inf"), x) + 0.0  # NaN -> -inf, -0.0 -> +0.0
        bits = x.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
        key = tl.where(inb, ordered.to(tl.int64) + 2147483648, -1)
        return x, key

    @triton.jit
    def _sample_kernel(lg_ptr, u_ptr, out_ptr, stride, V, top_k, top_p, temperature,
                       TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        lg_ptr = lg_ptr + row * stride
        ar = tl.arange(0, BLOCK)
        digits = tl.arange(0, 16).to(tl.int64)
        # 1. maximum
        mx = tl.full((), float("-inf"), tl.float32)
        for start in range(0, V, BLOCK):
            x, key = _keys(lg_ptr, start + ar, V, temperature)
            mx = tl.maximum(mx, tl.max(x, 0))
        finite = mx > float("-inf")
        m_safe = tl.where(finite, mx, 0.0)
        # 2. top-k: the largest c with count(key >= c) >= top_k
        floor = tl.full((), 0, tl.int64)
        if TOP_K:
            for p in tl.static_range(8):
                shift = 28 - 4 * p
                cand = floor + (digits << shift)
                cnt = tl.zeros((16,), tl.int64)
                for start in range(0, V, BLOCK):
                    x, key = _keys(lg_ptr, start + ar, V, temperature)
                    cnt += tl.sum((key[:, None] >= cand[None, :]).to(tl.int64), 0)
                j = tl.max(tl.where(cnt >= top_k, digits, 0), 0)
                floor = floor + (j << shift)
        # 3. top-p: the largest c with mass(key >= c) >= top_p * Z
        cut = tl.full((), 0, tl.int64)
        last_tie = tl.full((), 0, tl.int64) + V
        all_kept = True
        if TOP_P:
            P = tl.full((), 0.0, tl.float32)
            zk = tl.full((), 0.0, tl.float32)
            for p in tl.static_range(8):
                shift = 28 - 4 * p
                cand = cut + (digits << shift)
                mass = tl.zeros((16,), tl.float32)
                for start in range(0, V, BLOCK):
                    x, key = _keys(lg_ptr, start + ar, V, temperature)
                    e = tl.where(key >= floor, tl.exp(x - m_safe), 0.0)
                    mass += tl.sum(tl.where(key[:, None] >= cand[None, :], e[:, None], 0.0), 0)
                if p == 0:
                    zk = tl.sum(tl.where(digits == 0, mass, 0.0), 0)
                    P = top_p * zk
                j = tl.max(tl.where(mass >= P, digits, 0), 0)
                cut = cut + (j << shift)
            all_kept = P > zk  # rounding: the mass never reaches P, every top-k token stays
            # mass strictly above v* = cut, the ties at v* and their mass each
            g = tl.full((), 0.0, tl.float32)
            ties = tl.full((), 0, tl.int64)
            e_star = tl.full((), 0.0, tl.float32)
            for start in range(0, V, BLOCK):
                x, key = _keys(lg_ptr, start + ar, V, temperature)
                e = tl.where(key >= floor, tl.exp(x - m_safe), 0.0)
                g += tl.sum(tl.where(key > cut, e, 0.0), 0)
                tie = key == cut
                ties += tl.sum(tie.to(tl.int64), 0)
                e_star = tl.maximum(e_star, tl.max(tl.where(tie, e, 0.0), 0))
            q = (P - g) / tl.where(e_star > 0.0, e_star, 1.0)
            nq = tl.where(q > 0.0, tl.ceil(q), 0.0)
            n = tl.where(e_star > 0.0, tl.minimum(nq, ties.to(tl.float32)).to(tl.int64),
                         tl.where(g < P, ties, 0))
            n = tl.minimum(tl.maximum(n, 1), ties)
            if n < ties:
                run = tl.full((), 0, tl.int64)
                found = tl.full((), 0, tl.int64) + V
                for start in range(0, V, BLOCK):
                    offs = start + ar
                    x, key = _keys(lg_ptr, offs, V, temperature)
                    tie = key == cut
                    cum = tl.cumsum(tie.to(tl.int64), 0) + run
                    found = tl.minimum(found, tl.min(tl.where(tie & (cum == n), offs, V), 0))
                    run += tl.sum(tie.to(tl.int64), 0)
                last_tie = found
        # 4. inverse CDF over the kept tokens in id order
        z = tl.full((), 0.0, tl.float32)
        last = tl.full((), -1, tl.int64)
        for start in range(0, V, BLOCK):
            offs = start + ar
            x, key = _keys(lg_ptr, offs, V, temperature)
            if TOP_P:
                kept = tl.where(all_kept, key >= floor, (key > cut) | ((key == cut) & (offs <= last_tie)))
            else:
                kept = key >= floor
            e = tl.where(kept, tl.exp(x - m_safe), 0.0)
            z += tl.sum(e, 0)
            last = tl.maximum(last, tl.max(tl.where(e > 0.0, offs, -1), 0))
        target = tl.load(u_ptr + row) * z
        acc = tl.full((), 0.0, tl.float32)
        first = tl.full((), 0, tl.int64) + V
        for start in range(0, V, BLOCK):
            offs = start + ar
            x, key = _keys(lg_ptr, offs, V, temperature)
            if TOP_P:
                kept = tl.where(all_kept, key >= floor, (key > cut) | ((key == cut) & (offs <= last_tie)))
            else:
                kept = key >= floor
            e = tl.where(kept, tl.exp(x - m_safe), 0.0)
            cum = tl.cumsum(e, 0) + acc
            first = tl.minimum(first, tl.min(tl.where((e > 0.0) & (cum > target), offs, V), 0))
            acc += tl.sum(e, 0)
        tok = tl.where(first < V, first, last)
        tok = tl.where(finite & (tok >= 0), tok, 0)
        tl.store(out_ptr + row, tok)

    def _check(logits, uniform, out, top_k, top_p, temperature):
        op = "detox::sample_top_k_top_p_triton"
        if logits.dim() != 2 or logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise RuntimeError(f"{op}: logits must be float32/float16/bfloat16 [B, V], got logits {describe(logits)}")
        b, v = logits.shape
        if v > 0 and logits.stride(1) != 1:
            raise RuntimeError(f"{op}: logits must have a contiguous last dimension, got strides {logits.stride()}")
        if uniform.dtype != torch.float32 or uniform.shape != (b,) or not uniform.is_contiguous():
            raise RuntimeError(f"{op}: uniform must be a contiguous float32 [B] = [{b}] tensor, got {describe(uniform)}")
        if out.dtype != torch.int64 or out.shape != (b,) or not out.is_contiguous():
            raise RuntimeError(f"{op}: out must be a contiguous int64 [B] = [{b}] tensor, got {describe(out)}")
        if not (temperature > 0.0) or not (0.0 <= top_p <= 1.0) or top_k < 0:
            raise RuntimeError(f"{op}: need temperature > 0, top_p in [0, 1], top_k >= 0")
        if v >= 2**31:
            raise RuntimeError(f"{op}: the vocabulary must be below 2^31")
        for t in (uniform, out):
            if t.device != logits.device:
                raise RuntimeError(f"{op}: all tensors must be on one device, got logits {describe(logits)} and {describe(t)}")

    @torch.library.triton_op("detox::sample_top_k_top_p_triton", mutates_args={"out"})
    def sample_top_k_top_p_triton(logits: torch.Tensor, uniform: torch.Tensor, out: torch.Tensor, top_k: int,
                                  top_p: float, temperature: float) -> None:
        """Fused sampling with the Triton kernel; the arguments of ``detox::sample_top_k_top_p``."""
        _check(logits, uniform, out, top_k, top_p, temperature)
        b, v = logits.shape
        if b == 0:
            return
        if v == 0:
            out.zero_()
            return
        torch.library.wrap_triton(_sample_kernel)[(b,)](
            logits, uniform, out, logits.stride(0), v, top_k, float(top_p), float(temperature),
            TOP_K=0 < top_k < v, TOP_P=top_p < 1.0, BLOCK=1024, num_warps=8,
        )

    @sample_top_k_top_p_triton.register_fake
    def _sample_top_k_top_p_triton_fake(logits, uniform, out, top_k, top_p, temperature):
        _check(logits, uniform, out, top_k, top_p, temperature)
        return None

    if _INTERPRETED:
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        def _opaque_under_functionalization(mode, op, types, args, kwargs):
            return mode.__torch_dispatch__(op, types, args, kwargs)

        sample_top_k_top_p_triton.register_torch_dispatch(FunctionalTensorMode, _opaque_under_functionalization)
