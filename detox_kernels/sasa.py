"""``detox_kernels.sasa_reweight``: the SASA re-weighting of a batch of next-token scores.

SASA (``../shared/specs/sasa.md``) scores every candidate token ``v`` of a row by the margin of
the LM's hidden state of ``prefix + v`` against a linear toxicity subspace, and adds
``beta * weight`` to the candidate's score, in place. The public function validates arguments,
allocates the margins and picks a backend (CUDA, Triton, C++ CPU, float64 reference) through
:mod:`detox_kernels.dispatch`. The kernel contract is in :mod:`detox_kernels.reference.sasa`.
"""

from __future__ import annotations

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
from .reference.sasa import MODES, sasa_reweight_reference

try:
    from .triton import sasa as _triton_sasa

    _TRITON_REASON = _triton_sasa.UNAVAILABLE_REASON
except ImportError as _exc:  # pragma: no cover
    _TRITON_REASON = f"detox_kernels.triton.sasa failed to import: {_exc}"

MODE_CODES = {name: i for i, name in enumerate(MODES)}  # order fixed by csrc/ops.cpp


def _run_compiled(logits, ids, hidden, w, m, beta, valid, margins, mode):
    torch.ops.detox.sasa_reweight(logits, ids, hidden, w, m, beta, valid, margins, mode)


def _run_triton(logits, ids, hidden, w, m, beta, valid, margins, mode):
    torch.ops.detox.sasa_reweight_triton(logits, ids, hidden, w, m, beta, valid, margins, mode)


def _run_reference(logits, ids, hidden, w, m, beta, valid, margins, mode):
    new, mg = sasa_reweight_reference(logits, ids, hidden, w, m, beta, mode=MODES[mode], valid=valid)
    logits.copy_(new)
    margins.copy_(mg)


def _compiled_reasons(device_type):
    def reasons(logits, hidden, forced=False):
        r = device_reasons(logits, device_type) + dtype_reasons(logits)
        r += [f"hidden: {x}" for x in dtype_reasons(hidden)]
        return r

    return reasons


def _triton_reasons(logits, hidden, forced=False):
    r = dtype_reasons(logits) + [f"hidden: {x}" for x in dtype_reasons(hidden)]
    if hidden.shape[1] > _triton_sasa.MAX_K if _TRITON_REASON is None else False:
        r.append(f"more than {_triton_sasa.MAX_K} candidates per row")
    r += triton_device_reasons(logits, forced)
    return r


CUDA_MAX_K = 4096  # the CUDA kernel keeps a row's K margins and ids in shared memory


def _cuda_reasons(logits, hidden, forced=False):
    r = _compiled_reasons("cuda")(logits, hidden)
    if hidden.shape[1] > CUDA_MAX_K:
        r.append(f"more than {CUDA_MAX_K} candidates per row")
    return r


BACKENDS = (
    Backend("cuda", _run_compiled, cuda_unavailable, _cuda_reasons),
    Backend("triton", _run_triton, lambda: _TRITON_REASON, _triton_reasons),
    Backend("cpu", _run_compiled, cpu_unavailable, _compiled_reasons("cpu")),
    Backend("reference", _run_reference, lambda: None, lambda logits, hidden, forced=False: []),
)

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _as_vector(x, d, name, device):
    t = torch.as_tensor(x, device=device)
    if t.shape != (d,):
        raise ValueError(f"sasa_reweight: {name} must have shape [{d}] (the hidden size), got {tuple(t.shape)}")
    if t.device != device:
        t = t.to(device)
    return t.to(torch.float32).contiguous()


def sasa_reweight(
    logits: torch.Tensor,
    candidate_ids: torch.Tensor,
    candidate_hidden: torch.Tensor,
    direction: torch.Tensor,
    midpoint: torch.Tensor,
    beta=10.0,
    *,
    mode: str = "softmax",
    valid: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    return_margins: bool = False,
    check_nan: bool | None = None,
    backend: str | None = None,
):
    """SASA re-weighting: ``logits[b, ids[b, k]] += beta[b] * weight[b, k]``.

    Args:
        logits: ``[B, V]`` scores (fp32/fp16/bf16), typically after temperature / top-p.
        candidate_ids: ``[B, K]`` token ids (int64 or int32); ids outside ``[0, V)`` are ignored.
        candidate_hidden: ``[B, K, D]`` hidden state of ``prefix + candidate`` (fp32/fp16/bf16).
        direction, midpoint: ``[D]`` the subspace (unit direction, midpoint), any float dtype.
        beta: strength, a number or a ``[B]`` tensor (one per row).
        mode: ``"softmax"`` (the public implementation: ``beta * softmax(margins)``) or
            ``"tilt"`` (the KL-constrained optimum: ``beta * margin``).
        valid: optional ``[B, K]`` bool; False entries are not candidates (padding of K).
        out: where to write (``None``: in place into ``logits``, which is returned). If given and
            not ``logits``, ``logits`` is copied into it first and left unchanged.
        return_margins: also return the float32 ``[B, K]`` margins ``(h - m) . w``.
        check_nan: raise on NaN margins of valid candidates (default: on CPU only, where the
            check costs no device synchronisation).
        backend: force ``cuda | triton | cpu | reference`` (else ``DETOX_BACKEND``, else auto).

    Duplicate ids: each occurrence counts in the softmax; their weights are summed and added
    once. A row without valid candidates is unchanged. No host synchronisation on GPU.
    """
    if not all(isinstance(t, torch.Tensor) for t in (logits, candidate_ids, candidate_hidden)):
        raise TypeError("sasa_reweight: logits, candidate_ids and candidate_hidden must be tensors")
    if logits.dim() != 2:
        raise ValueError(f"sasa_reweight: logits must be [B, V], got {tuple(logits.shape)}")
    b = logits.shape[0]
    if candidate_ids.dim() != 2 or candidate_ids.shape[0] != b:
        raise ValueError(f"sasa_reweight: candidate_ids must be [B, K] with B = {b}, got {tuple(candidate_ids.shape)}")
    k = candidate_ids.shape[1]
    if candidate_hidden.dim() != 3 or tuple(candidate_hidden.shape[:2]) != (b, k):
        raise ValueError(f"sasa_reweight: candidate_hidden must be [B, K, D] = [{b}, {k}, D], got "
                         f"{tuple(candidate_hidden.shape)}")
    if logits.dtype not in _FLOATS or candidate_hidden.dtype not in _FLOATS:
        raise ValueError(f"sasa_reweight: logits and candidate_hidden must be float32/float16/bfloat16, got "
                         f"{logits.dtype} and {candidate_hidden.dtype}")
    if candidate_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"sasa_reweight: candidate_ids must be int64 or int32, got {candidate_ids.dtype}")
    if mode not in MODE_CODES:
        raise ValueError(f"sasa_reweight: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    dev = logits.device
    for name, t in (("candidate_ids", candidate_ids), ("candidate_hidden", candidate_hidden)):
        if t.device != dev:
            raise ValueError(f"sasa_reweight: {name} is on {t.device} but logits are on {dev}")
    d = candidate_hidden.shape[2]
    w = _as_vector(direction, d, "direction", dev)
    m = _as_vector(midpoint, d, "midpoint", dev)
    if isinstance(beta, torch.Tensor):
        beta_t = beta.to(device=dev, dtype=torch.float32).reshape(-1)
        if beta_t.numel() == 1:
            beta_t = beta_t.expand(b)
        if beta_t.shape != (b,):
            raise ValueError(f"sasa_reweight: beta must be a number or a [B] = [{b}] tensor, got {tuple(beta.shape)}")
        beta_t = beta_t.contiguous()
    else:
        beta_t = torch.full((b,), float(beta), dtype=torch.float32, device=dev)
    if valid is not None:
        if valid.shape != (b, k):
            raise ValueError(f"sasa_reweight: valid must be [B, K] = [{b}, {k}], got {tuple(valid.shape)}")
        valid = valid.to(device=dev, dtype=torch.bool).contiguous()
    ids = candidate_ids.to(torch.int64).contiguous()
    hidden = candidate_hidden if (d == 0 or candidate_hidden.stride(2) == 1) else candidate_hidden.contiguous()
    if out is not None and out is not logits:
        if out.shape != logits.shape or out.dtype != logits.dtype or out.device != dev:
            raise ValueError(f"sasa_reweight: out must be a {logits.dtype} tensor of shape {tuple(logits.shape)} on {dev}")
        out.copy_(logits)
        target = out
    else:
        target = logits
    work = target if (target.shape[1] == 0 or target.stride(1) == 1) else target.contiguous()
    chosen = select("sasa_reweight", BACKENDS, work, hidden, backend=backend)
    margins = torch.empty(b, k, dtype=torch.float32, device=dev)
    chosen.run(work, ids, hidden, w, m, beta_t, valid, margins, MODE_CODES[mode])
    if work is not target:
        target.copy_(work)
    if check_nan is None:
        check_nan = dev.type == "cpu"
    if check_nan and not torch.compiler.is_compiling():
        take = (ids >= 0) & (ids < logits.shape[1])
        if valid is not None:
            take &= valid
        bad = torch.isnan(margins) & take
        if bool(bad.any()):
            rows = bad.any(1).nonzero().flatten().tolist()
            raise ValueError(f"sasa_reweight: NaN in the hidden states of valid candidates in row(s) {rows[:10]}")
    return (target, margins) if return_margins else target


if _ext.has_cpu_kernels():

    @torch.library.register_fake("detox::sasa_reweight")
    def _sasa_reweight_fake(logits, ids, hidden, direction, midpoint, beta, valid, margins, weighting):
        return None
