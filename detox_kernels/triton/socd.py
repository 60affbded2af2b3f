"""Triton backend of the SoCD op: ``torch.ops.detox.socd_triton``.

Same arguments and the same kernel contract as the C++ op ``detox::socd`` (see the module
docstring of ``detox_kernels/reference/socd.py``): it writes the new logits into ``out`` (which
may be ``base`` itself) and the per-row statistics into ``alpha`` [B] f32, ``divergence`` [B]
f32 and ``k`` [B] i32. One Triton program handles one row (grid ``(B,)``) and loops over it in
``BLOCK``-sized chunks, accumulating in fp32 per lane (the lanes' partial sums are combined in
float64, and the KL divergences are formed in float64, as in the C++ kernel):

1. one read for the softmax statistics: running maxima of ``x`` and ``y`` per chunk, per-lane
   sums of ``exp2((v - max) log2 e)`` rescaled when a chunk raises the maximum (one exponential
   per element and input), ``E_p[x - y]``, ``E_q[y - x]`` for fkl / rkl / skl (-inf entries as in
   ``csrc/cpu/socd_cpu.h``) and the validity flags (NaN / +inf in ``x[:V]`` or ``y[:V]``, or a row
   that is entirely -inf: divergence NaN, alpha 0, k 0, row copied);
2. one read for the candidates ``key = y - x > c`` (float32 key, ``c = lse(y) - lse(x)``) and
   the first radix histogram (top 11 bits of the key's order-preserving uint32 image, 2048 bins),
   and in the same read the jsd / tvd / l2 sums over the normalised p and q;
3. ``alpha`` and ``k`` with the float32 formulas of ``csrc/common/socd_params.h``;
   ``m = min(k, #candidates)``;
4. when ``0 < m < #candidates``: the rest of an exact radix select of the m-th largest key
   (rounds of 11 and 10 more bits, ``tl.histogram``, restricted to the candidates that share the
   prefix found so far; it stops early once the bin holding the m-th key is taken whole), giving
   the threshold ``T``; the candidates equal to ``T`` that are still needed are the ones with
   the lowest token ids (a running count over the chunks in token order, in the write);
5. the write: ``out = x - alpha * |y|`` (or ``alpha * y``) on the selected tokens, computed in
   fp32 and rounded to the output dtype; ``out = x`` elsewhere (not written when ``out`` is
   ``base``); the padded columns ``>= vocab_size`` are copied.

No host synchronisation: every decision on tensor values is taken inside the kernel.

Roundings: ``alpha = l / (1 + l)`` with ``l = log1p(max(d, 0))`` and ``k`` as in
``socd_params.h`` (``log1pf`` from libdevice on CUDA, a float64 evaluation rounded to float32
elsewhere), and the write ``x - alpha * |y|`` as an unfused multiply then subtract, so ``out``
matches the C++ kernel bit for bit whenever ``alpha`` and ``k`` do. The divergence itself
differs from the C++ kernel's in the last bits (other exp and summation order).

Without Triton the module still imports, with ``AVAILABLE = False`` and the reason in
``UNAVAILABLE_REASON``. Under ``TRITON_INTERPRET=1`` the kernel runs on CPU tensors (slowly; the
chunk size is then made large, since the interpreter's cost is per Triton operation).
"""

from __future__ import annotations

import torch

from ..dispatch import describe
from . import AVAILABLE, UNAVAILABLE_REASON, libdevice, tl, triton  # noqa: F401  (the guarded import)

DIVERGENCE_KINDS = ("fkl", "rkl", "skl", "jsd", "tvd", "l2")  # op codes 0..5

# Chunk sizes. On a GPU a program streams its row through BLOCK-wide vectors (8 fp32 values per
# thread at 4096 / 16 warps); the interpreter executes each Triton operation as one numpy call,
# so there the chunk is as wide as the row allows (up to INTERPRET_MAX_BLOCK).
GPU_BLOCK = 4096
GPU_NUM_WARPS = 16
INTERPRET_MAX_BLOCK = 1 << 16
MIN_BLOCK = 2048  # at least the 2048 histogram bins wide

if AVAILABLE:
    # Reductions go through tl.reduce / tl.associative_scan with Triton's own combine functions
    # rather than tl.sum / tl.max / tl.cumsum: same code on a GPU, but the interpreter maps these
    # combine functions to numpy directly, while every call of a nested @triton.jit function
    # (tl.sum, tl.zeros, ... are such functions) costs it milliseconds.
    _sum_combine = tl.standard._sum_combine
    _max_combine = tl.standard._elementwise_max

    @triton.jit
    def _socd_kernel(
        x_ptr,
        y_ptr,
        out_ptr,
        alpha_ptr,
        div_ptr,
        k_ptr,
        x_stride,
        y_stride,
        out_stride,
        W,  # padded width V'
        V,  # vocab_size: columns that take part
        k_min,  # already clipped to [0, V] by the host (does not change the result)
        k_max,
        DIV: tl.constexpr,  # 0 fkl, 1 rkl, 2 skl, 3 jsd, 4 tvd, 5 l2
        K_CEIL: tl.constexpr,
        SIGNED: tl.constexpr,
        COPY: tl.constexpr,  # False when out is base: write only the changed tokens
        CUDA_MATH: tl.constexpr,  # CUDA libdevice log1p / mul_rn / sub_rn (else portable code)
        BLOCK: tl.constexpr,
    ):
        NINF: tl.constexpr = float("-inf")
        PINF: tl.constexpr = float("inf")
        row = tl.program_id(0).to(tl.int64)
        xr = x_ptr + row * x_stride
        yr = y_ptr + row * y_stride
        orow = out_ptr + row * out_stride
        LOG2E: tl.constexpr = 1.4426950408889634
        NBINS: tl.constexpr = 2048  # radix digits of up to 11 bits
        lanes = tl.arange(0, BLOCK)
        bins = tl.arange(0, NBINS)

        # ---- pass 1: softmax statistics and validity, online -----------------------------------
        # Running maxima (scalars) and per-lane sums rescaled when a chunk raises the maximum:
        # one exponential per element and input (exp2 of a pre-scaled argument), one read.
        mx = tl.full([], NINF, tl.float32)
        my = tl.full([], NINF, tl.float32)
        sx_v = tl.full([BLOCK], 0, tl.float32)
        sy_v = tl.full([BLOCK], 0, tl.float32)
        bad_v = tl.full([BLOCK], 0, tl.int1)
        if DIV <= 2:
            ax_v = tl.full([BLOCK], 0, tl.float32)  # sum e^(x-mx) (x - y)
            ay_v = tl.full([BLOCK], 0, tl.float32)  # sum e^(y-my) (y - x)
            finf_v = tl.full([BLOCK], 0, tl.int1)  # p_j > 0 = q_j somewhere: fkl = +inf
            rinf_v = tl.full([BLOCK], 0, tl.int1)  # q_j > 0 = p_j somewhere: rkl = +inf
        for start in range(0, V, BLOCK):
            offs = start + lanes
            msk = offs < V
            a = tl.load(xr + offs, mask=msk, other=NINF).to(tl.float32)
            b = tl.load(yr + offs, mask=msk, other=NINF).to(tl.float32)
            # NaN and +inf are exactly the values that are not < +inf
            bad_v = bad_v | (((a < PINF) & (b < PINF)) == 0)
            a_fin = a > NINF
            b_fin = b > NINF
            # the chunk's maxima (NaN entries make the row invalid; keep them out of the max)
            nx = tl.maximum(mx, tl.reduce(tl.where(a_fin & (a < PINF), a, NINF), 0, _max_combine))
            ny = tl.maximum(my, tl.reduce(tl.where(b_fin & (b < PINF), b, NINF), 0, _max_combine))
            # rescale factors of the running sums (1 while the maximum stays, 0 from -inf; no
            # -inf - -inf evaluated)
            gx = nx == NINF
            gy = ny == NINF
            fx = tl.exp2((tl.where(gx, 0.0, mx) - tl.where(gx, 0.0, nx)) * LOG2E)
            fy = tl.exp2((tl.where(gy, 0.0, my) - tl.where(gy, 0.0, ny)) * LOG2E)
            rx = tl.where(gx, 0.0, nx * LOG2E)
            ry = tl.where(gy, 0.0, ny * LOG2E)
            # +inf entries (an invalid row) are kept out of the sums, too
            ea = tl.where(a_fin & (a < PINF), tl.exp2(a * LOG2E - rx), 0.0)
            eb = tl.where(b_fin & (b < PINF), tl.exp2(b * LOG2E - ry), 0.0)
            sx_v = sx_v * fx + ea
            sy_v = sy_v * fy + eb
            if DIV <= 2:
                both = a_fin & b_fin
                # terms with p_j = 0 contribute 0; p_j > 0 with q_j = 0 gives +inf
                diff = tl.where(both, a, 0.0) - tl.where(both, b, 0.0)
                if DIV != 1:
                    ax_v = ax_v * fx + ea * diff
                    finf_v = finf_v | (a_fin & (b_fin == 0))
                if DIV != 0:
                    ay_v = ay_v * fy - eb * diff
                    rinf_v = rinf_v | (b_fin & (a_fin == 0))
            mx = nx
            my = ny
        n_bad = tl.reduce(bad_v.to(tl.int32), 0, _sum_combine)
        valid = (n_bad == 0) & (mx > NINF) & (my > NINF)

        d = float("nan")  # divergence (NaN for invalid rows)
        alpha = 0.0
        m = 0  # tokens changed
        thr = tl.full([], 0xFFFFFFFF, tl.uint32)  # threshold on the ordered key
        n_tie = 0  # tokens equal to the threshold that are taken (lowest ids first)
        c = 0.0
        if valid:
            # fp32 per lane, the lanes combined in float64 (as the C++ kernel's double sums)
            sx64 = tl.reduce(sx_v.to(tl.float64), 0, _sum_combine)
            sy64 = tl.reduce(sy_v.to(tl.float64), 0, _sum_combine)
            lse_x = mx + tl.log(sx64).to(tl.float32)
            lse_y = my + tl.log(sy64).to(tl.float32)
            c = lse_y - lse_x
            lx2 = lse_x * LOG2E
            ly2 = lse_y * LOG2E

            if DIV <= 2:
                # E_p[x - y] - lse(x) + lse(y) cancels: combine the sums in float64, as the C++
                # kernel does (the float32 form loses ~1e-6 absolute)
                lx = mx.to(tl.float64) + tl.log(sx64)
                ly = my.to(tl.float64) + tl.log(sy64)
                fkl = 0.0
                rkl = 0.0
                if DIV != 1:
                    ax = tl.reduce(ax_v.to(tl.float64), 0, _sum_combine)
                    fkl = (ax / sx64 - lx + ly).to(tl.float32)
                    fkl = tl.where(tl.reduce(finf_v.to(tl.int32), 0, _sum_combine) > 0, PINF, fkl)
                if DIV != 0:
                    ay = tl.reduce(ay_v.to(tl.float64), 0, _sum_combine)
                    rkl = (ay / sy64 - ly + lx).to(tl.float32)
                    rkl = tl.where(tl.reduce(rinf_v.to(tl.int32), 0, _sum_combine) > 0, PINF, rkl)
                if DIV == 0:
                    d = fkl
                elif DIV == 1:
                    d = rkl
                else:
                    d = 0.5 * (fkl + rkl)

            # ---- pass 2: candidates key > c and the first radix round (top 11 bits); for jsd,
            # tvd and l2 the divergence of the normalised p and q in the same read ---------------
            hist = tl.full([NBINS], 0, tl.int32)
            acc_v = tl.full([BLOCK], 0, tl.float32)
            for start in range(0, V, BLOCK):
                offs = start + lanes
                msk = offs < V
                a = tl.load(xr + offs, mask=msk, other=NINF).to(tl.float32)
                b = tl.load(yr + offs, mask=msk, other=NINF).to(tl.float32)
                if DIV == 3:  # jsd: 1/2 sum p log(p/m) + 1/2 sum q log(q/m), m = (p+q)/2
                    a_fin = a > NINF
                    b_fin = b > NINF
                    lp = tl.where(a_fin, a - lse_x, 0.0)
                    lq = tl.where(b_fin, b - lse_y, 0.0)
                    pj = tl.where(a_fin, tl.exp2(a * LOG2E - lx2), 0.0)
                    qj = tl.where(b_fin, tl.exp2(b * LOG2E - ly2), 0.0)
                    mj = 0.5 * (pj + qj)
                    lm = tl.log(tl.where(mj > 0.0, mj, 1.0))
                    acc_v += pj * (lp - lm) + qj * (lq - lm)
                elif DIV >= 4:
                    pj = tl.exp2(a * LOG2E - lx2)  # 0 for -inf (masked lanes too)
                    qj = tl.exp2(b * LOG2E - ly2)
                    if DIV == 4:
                        acc_v += tl.abs(pj - qj)
                    else:
                        acc_v += (pj - qj) * (pj - qj)
                # key = y - x (float32); y = -inf (masked lanes too) gives -inf, never a candidate,
                # and -0.0 is folded into +0.0 so that equal keys have equal images
                key = b - tl.where(b == NINF, 0.0, a)
                key = tl.where(key == 0.0, 0.0, key)
                kb = key.to(tl.uint32, bitcast=True)
                u = tl.where((kb & 0x80000000) != 0, kb ^ 0xFFFFFFFF, kb | 0x80000000)
                cand = key > c
                hist += tl.histogram((u >> 21).to(tl.int32), NBINS, mask=cand)
            if DIV >= 3:
                acc = tl.reduce(acc_v.to(tl.float64), 0, _sum_combine)
                if DIV == 5:
                    d = tl.sqrt(acc).to(tl.float32)  # float64 sqrt is IEEE-rounded
                else:
                    d = (0.5 * acc).to(tl.float32)

            # ---- alpha and k (csrc/common/socd_params.h) ---------------------------------------
            finite = tl.abs(d) < PINF  # False for +-inf and NaN
            dc = tl.where(finite & (d > 0.0), d, 0.0)
            if CUDA_MATH:
                l1p = libdevice.log1p(dc)
            else:
                # log1p in float64 (Goldberg's form), rounded to float32
                dd = dc.to(tl.float64)
                uu = 1.0 + dd
                uu_m1 = tl.where(uu == 1.0, 1.0, uu - 1.0)
                l1p = tl.where(uu == 1.0, dd, tl.log(uu) * (dd / uu_m1)).to(tl.float32)
            alpha = tl.where(finite, tl.div_rn(l1p, 1.0 + l1p), 0.0)
            s = alpha * (V * 1.0)  # float(V), as static_cast<float>
            if K_CEIL:
                kf = tl.ceil(s)
            else:
                kf = tl.floor(s)
            kk = tl.minimum(tl.maximum(kf.to(tl.int32), k_min), k_max)

            npos = tl.reduce(hist, 0, _sum_combine)
            m = tl.where(finite, tl.minimum(kk, npos), 0)

            # default: every candidate (m == npos), or none (m == 0)
            thr = tl.where(m > 0, tl.full([], 0, tl.uint32), thr)
            if (m > 0) & (m < npos):
                # ---- radix select of the m-th largest key: rounds of 11, 11 and 10 bits, top bits
                # first. Each round finds the bin b holding the rem-th largest live key, counts the
                # live keys in bins above b (all taken) and keeps the keys in b live for the next
                # round. If b is taken whole (its count equals rem), the selection is settled: the
                # threshold is the lowest value of b and every key in b is taken.
                shift = tl.full([], 21, tl.uint32)
                total = tl.reduce(hist, 0, _sum_combine)
                above = total - tl.associative_scan(hist, 0, _sum_combine)
                hit = (above < m) & (above + hist >= m)  # exactly one bin, and it is not empty
                bsel = tl.reduce(tl.where(hit, bins, -1), 0, _max_combine)
                n_above = tl.reduce(tl.where(hit, above, 0), 0, _sum_combine)
                n_bin = tl.reduce(tl.where(hit, hist, 0), 0, _sum_combine)
                rem = m - n_above
                prefix = bsel.to(tl.uint32)  # the key bits above `shift` of the selected keys
                while (shift > 0) & (n_bin > rem):
                    nshift = tl.where(shift == 21, 10, 0).to(tl.uint32)
                    width = shift - nshift
                    hist = tl.full([NBINS], 0, tl.int32)
                    for start in range(0, V, BLOCK):
                        offs = start + lanes
                        msk = offs < V
                        a = tl.load(xr + offs, mask=msk, other=0.0).to(tl.float32)
                        b = tl.load(yr + offs, mask=msk, other=NINF).to(tl.float32)
                        key = b - tl.where(b == NINF, 0.0, a)  # as in pass 2
                        key = tl.where(key == 0.0, 0.0, key)
                        kb = key.to(tl.uint32, bitcast=True)
                        u = tl.where((kb & 0x80000000) != 0, kb ^ 0xFFFFFFFF, kb | 0x80000000)
                        live = (key > c) & ((u >> shift) == prefix)
                        dig = (u >> nshift) & ((tl.full([], 1, tl.uint32) << width) - 1)
                        hist += tl.histogram(dig.to(tl.int32), NBINS, mask=live)
                    total = tl.reduce(hist, 0, _sum_combine)
                    above = total - tl.associative_scan(hist, 0, _sum_combine)
                    hit = (above < rem) & (above + hist >= rem)
                    bsel = tl.reduce(tl.where(hit, bins, -1), 0, _max_combine)
                    n_above = tl.reduce(tl.where(hit, above, 0), 0, _sum_combine)
                    n_bin = tl.reduce(tl.where(hit, hist, 0), 0, _sum_combine)
                    rem = rem - n_above
                    prefix = (prefix << width) | bsel.to(tl.uint32)
                    shift = nshift
                # every live key >= thr is taken, plus the first n_tie (by token id) equal to it
                thr = prefix << shift
                n_tie = rem

        # ---- statistics -----------------------------------------------------------------------
        tl.store(alpha_ptr + row, alpha)
        tl.store(div_ptr + row, d)
        tl.store(k_ptr + row, m)

        # ---- write ------------------------------------------------------------------------------
        if m > 0:
            if COPY:
                end = W
            else:
                end = V
            seen = 0  # candidates equal to the threshold met so far (in token order)
            for start in range(0, end, BLOCK):
                offs = start + lanes
                msk_w = offs < end
                msk = offs < V
                x_raw = tl.load(xr + offs, mask=msk_w, other=0.0)
                a = x_raw.to(tl.float32)
                b = tl.load(yr + offs, mask=msk, other=NINF).to(tl.float32)
                # key = y - x (float32); y = -inf (masked lanes too) gives -inf, never a candidate,
                # and -0.0 is folded into +0.0 so that equal keys have equal images
                key = b - tl.where(b == NINF, 0.0, a)
                key = tl.where(key == 0.0, 0.0, key)
                kb = key.to(tl.uint32, bitcast=True)
                u = tl.where((kb & 0x80000000) != 0, kb ^ 0xFFFFFFFF, kb | 0x80000000)
                cand = key > c
                eq = (cand & (u == thr)).to(tl.int32)
                rank = seen + tl.associative_scan(eq, 0, _sum_combine)  # 1-based rank of a tie
                sel = (cand & (u > thr)) | ((eq != 0) & (rank <= n_tie))
                seen += tl.reduce(eq, 0, _sum_combine)
                b0 = tl.where(b == NINF, 0.0, b)  # selected tokens never have y = -inf
                if SIGNED:
                    sub = b0
                else:
                    sub = tl.abs(b0)
                if CUDA_MATH:  # no fused multiply-add: the same roundings as the CPU kernel
                    new = libdevice.sub_rn(a, libdevice.mul_rn(alpha, sub))
                else:
                    new = a - alpha * sub
                if (not CUDA_MATH) and (x_raw.dtype == tl.bfloat16):
                    # round to nearest even by hand (the interpreter's fp32 -> bf16 cast truncates)
                    nb = new.to(tl.uint32, bitcast=True)
                    nb = (nb + 0x7FFF + ((nb >> 16) & 1)) >> 16
                    new = nb.to(tl.uint16).to(tl.bfloat16, bitcast=True)
                else:
                    new = new.to(x_raw.dtype)
                if COPY:
                    tl.store(orow + offs, tl.where(sel, new, x_raw), mask=msk_w)
                else:
                    tl.store(orow + offs, new, mask=sel)
        else:
            if COPY:
                for start in range(0, W, BLOCK):
                    offs = start + lanes
                    msk_w = offs < W
                    tl.store(orow + offs, tl.load(xr + offs, mask=msk_w), mask=msk_w)

    def _is_interpreted(kernel) -> bool:
        try:
            from triton.runtime.interpreter import InterpretedFunction
        except ImportError:  # pragma: no cover
            return False
        return isinstance(kernel, InterpretedFunction)

    _INTERPRETED = _is_interpreted(_socd_kernel)

    def _cuda_math(t: torch.Tensor) -> bool:
        # libdevice (CUDA) for log1p and for the unfused multiply-subtract of the write; elsewhere
        # (interpreter, ROCm, other backends) portable code with the same roundings.
        on_rocm = getattr(torch.version, "hip", None) is not None
        return (not _INTERPRETED) and t.device.type == "cuda" and not on_rocm

    def _block_for(width: int) -> int:
        if _INTERPRETED:
            return max(MIN_BLOCK, min(INTERPRET_MAX_BLOCK, triton.next_power_of_2(max(width, 1))))
        return max(MIN_BLOCK, min(GPU_BLOCK, triton.next_power_of_2(max(width, 1))))

    def _check(base, toxic, out, alpha, divergence, k, divergence_kind, k_min, k_max, vocab_size):
        if base.dim() != 2:
            raise RuntimeError(
                f"detox::socd_triton: base logits must be [B, V], got base {describe(base)}"
            )
        if toxic.shape != base.shape or out.shape != base.shape:
            raise RuntimeError(
                f"detox::socd_triton: toxic and out must have the shape of the base logits, got base "
                f"{describe(base)}, toxic {describe(toxic)} and out {describe(out)}"
            )
        if base.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise RuntimeError(f"detox::socd_triton: unsupported dtype, got base {describe(base)}")
        if toxic.dtype != base.dtype or out.dtype != base.dtype:
            raise RuntimeError(f"detox::socd_triton: base, toxic and out must share one dtype, got base {describe(base)}, "
                               f"toxic {describe(toxic)} and out {describe(out)}")
        for t in (toxic, out, alpha, divergence, k):
            if t.device != base.device:
                raise RuntimeError(f"detox::socd_triton: all tensors must be on one device, got base {describe(base)} and {describe(t)}")
        rows, cols = base.shape
        if cols > 0 and (base.stride(1) != 1 or toxic.stride(1) != 1 or out.stride(1) != 1):
            raise RuntimeError(f"detox::socd_triton: the last dimension must be contiguous, got strides base {base.stride()}, "
                               f"toxic {toxic.stride()} and out {out.stride()}")
        for name, t, dt in (
            ("alpha", alpha, torch.float32),
            ("divergence", divergence, torch.float32),
            ("k", k, torch.int32),
        ):
            if t.dtype != dt or t.numel() != rows or not t.is_contiguous():
                raise RuntimeError(
                    f"detox::socd_triton: {name} must be a contiguous {dt} [B] tensor, B = {rows}, got {describe(t)}"
                )
        if not 0 <= divergence_kind <= 5:
            raise RuntimeError("detox::socd_triton: divergence_kind must be in [0, 5]")
        if not 0 <= vocab_size <= cols:
            raise RuntimeError(
                f"detox::socd_triton: vocab_size {vocab_size} must be in [0, {cols}]"
            )
        if vocab_size >= 2**31:
            raise RuntimeError("detox::socd_triton: vocab_size must be below 2^31")
        if k_min < 0 or k_max < 0:
            raise RuntimeError("detox::socd_triton: k_min and k_max must be >= 0")

    @torch.library.triton_op("detox::socd_triton", mutates_args={"out", "alpha", "divergence", "k"})
    def socd_triton(
        base: torch.Tensor,
        toxic: torch.Tensor,
        out: torch.Tensor,
        alpha: torch.Tensor,
        divergence: torch.Tensor,
        k: torch.Tensor,
        divergence_kind: int,
        k_min: int,
        k_max: int,
        vocab_size: int,
        k_ceil: bool,
        signed_subtract: bool,
    ) -> None:
        """SoCD with the Triton kernel; the arguments of ``detox::socd`` (see the module doc)."""
        _check(base, toxic, out, alpha, divergence, k, divergence_kind, k_min, k_max, vocab_size)
        rows, cols = base.shape
        if rows == 0:
            return
        v = int(vocab_size)
        # min(clip(r, lo, hi), npos) with npos <= V is unchanged by clipping lo and hi to [0, V];
        # this keeps every count in int32.
        lo = min(int(k_min), v)
        hi = min(int(k_max), v)
        block = _block_for(cols)
        torch.library.wrap_triton(_socd_kernel)[(rows,)](
            base,
            toxic,
            out,
            alpha,
            divergence,
            k,
            base.stride(0),
            toxic.stride(0),
            out.stride(0),
            cols,
            v,
            lo,
            hi,
            DIV=int(divergence_kind),
            K_CEIL=bool(k_ceil),
            SIGNED=bool(signed_subtract),
            COPY=out is not base,
            CUDA_MATH=_cuda_math(base),
            BLOCK=block,
            num_warps=GPU_NUM_WARPS if block >= 2048 else 4,
        )

    @socd_triton.register_fake
    def _socd_triton_fake(base, toxic, out, alpha, divergence, k, divergence_kind, k_min, k_max,
                          vocab_size, k_ceil, signed_subtract):
        # mutates out, alpha, divergence and k only; nothing to allocate
        _check(base, toxic, out, alpha, divergence, k, divergence_kind, k_min, k_max, vocab_size)
        return None

    if _INTERPRETED:
        # Under TRITON_INTERPRET=1 the kernel is an InterpretedFunction, which wrap_triton cannot
        # trace: triton_op's functional decomposition (used by torch.compile / AOT) would run the
        # interpreter on functional tensors. Keep the op opaque instead (auto-functionalized).
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        def _opaque_under_functionalization(mode, op, types, args, kwargs):
            return mode.__torch_dispatch__(op, types, args, kwargs)

        socd_triton.register_torch_dispatch(FunctionalTensorMode, _opaque_under_functionalization)
