"""The SASA op, :func:`detox_kernels.sasa_reweight`: the SASA re-weighting of next-token scores.

SASA scores every candidate token ``v`` of a row by the margin ``(h - m) . w`` of the LM's hidden
state ``h`` of ``prefix + v`` against a linear toxicity subspace (unit direction ``w``, midpoint
``m``), and adds ``beta * weight`` to the candidate's score, in place. The public function checks
its tensors, picks a backend (CUDA, Triton, C++ CPU, float64 reference) through
:mod:`detox_kernels.dispatch`, allocates the margins and runs it. The kernel contract every backend
implements is the docstring of :mod:`detox_kernels.reference.sasa` (and ``docs/kernels.md``).
"""

from __future__ import annotations

import torch

from .. import _ext
from ..dispatch import SUPPORTED_DTYPES, Op, describe, import_triton_module, register, standard_backends
from ..reference.sasa import MODES, sasa_reweight_reference

_triton_sasa, _ = import_triton_module("sasa")
MODE_CODES = {name: i for i, name in enumerate(MODES)}  # order fixed by csrc/ops.cpp
CUDA_MAX_K = 4096  # the CUDA kernel keeps a row's K margins and ids in shared memory


def _run_reference(logits, ids, hidden, w, m, beta, valid, margins, mode):
    new, mg = sasa_reweight_reference(logits, ids, hidden, w, m, beta, mode=MODES[mode], valid=valid)
    logits.copy_(new)
    margins.copy_(mg)


def _max_k(limit):
    def reasons(logits, hidden):
        return [f"more than {limit} candidates per row (candidate_hidden {describe(hidden)})"] if hidden.shape[1] > limit else []

    return reasons


# chosen on logits and candidate_hidden
BACKENDS = standard_backends(
    "sasa_reweight",
    ("logits", "candidate_hidden"),
    reference_run=_run_reference,
    triton_module="sasa",
    limits={"cuda": _max_k(CUDA_MAX_K), "triton": _max_k(getattr(_triton_sasa, "MAX_K", 0))},
)


def _as_vector(x, d, name, device):
    t = torch.as_tensor(x, device=device)
    if t.shape != (d,):
        raise ValueError(f"sasa_reweight: {name} must have shape [{d}] (the hidden size), got {name} {describe(t)}")
    if t.device != device:
        t = t.to(device)
    return t.to(torch.float32).contiguous()


def _check(logits, candidate_ids, candidate_hidden, direction=None, midpoint=None, beta=10.0, *, valid=None,
           out=None, **_options) -> tuple:
    """The tensor checks of :func:`sasa_reweight` (shapes, dtypes, devices); returns the dispatch
    inputs. ``direction`` and ``midpoint`` are checked when they are converted (any float dtype)."""
    if not all(isinstance(t, torch.Tensor) for t in (logits, candidate_ids, candidate_hidden)):
        raise TypeError(f"sasa_reweight: logits, candidate_ids and candidate_hidden must be tensors, got logits "
                        f"{describe(logits)}, candidate_ids {describe(candidate_ids)} and candidate_hidden "
                        f"{describe(candidate_hidden)}")
    if logits.dim() != 2:
        raise ValueError(f"sasa_reweight: logits must be [B, V], got logits {describe(logits)}")
    b = logits.shape[0]
    if candidate_ids.dim() != 2 or candidate_ids.shape[0] != b:
        raise ValueError(f"sasa_reweight: candidate_ids must be [B, K] with B = {b} (logits {describe(logits)}), "
                         f"got candidate_ids {describe(candidate_ids)}")
    k = candidate_ids.shape[1]
    if candidate_hidden.dim() != 3 or tuple(candidate_hidden.shape[:2]) != (b, k):
        raise ValueError(f"sasa_reweight: candidate_hidden must be [B, K, D] = [{b}, {k}, D] (candidate_ids "
                         f"{describe(candidate_ids)}), got candidate_hidden {describe(candidate_hidden)}")
    if logits.dtype not in SUPPORTED_DTYPES or candidate_hidden.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"sasa_reweight: logits and candidate_hidden must be float32/float16/bfloat16, got logits "
                         f"{describe(logits)} and candidate_hidden {describe(candidate_hidden)}")
    if candidate_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"sasa_reweight: candidate_ids must be int64 or int32, got candidate_ids "
                         f"{describe(candidate_ids)}")
    dev = logits.device
    for name, t in (("candidate_ids", candidate_ids), ("candidate_hidden", candidate_hidden)):
        if t.device != dev:
            raise ValueError(f"sasa_reweight: {name} must be on the device of logits, got {name} {describe(t)} and "
                             f"logits {describe(logits)}")
    if isinstance(beta, torch.Tensor) and beta.numel() not in (1, b):
        raise ValueError(f"sasa_reweight: beta must be a number or a [B] = [{b}] tensor, got beta {describe(beta)}")
    if valid is not None and (not isinstance(valid, torch.Tensor) or valid.shape != (b, k)):
        raise ValueError(f"sasa_reweight: valid must be [B, K] = [{b}, {k}], got valid {describe(valid)}")
    if out is not None and out is not logits and (
        not isinstance(out, torch.Tensor) or out.shape != logits.shape or out.dtype != logits.dtype
        or out.device != dev
    ):
        raise ValueError(f"sasa_reweight: out must be a tensor like logits ({describe(logits)}), got out "
                         f"{describe(out)}")
    return (logits, candidate_hidden)


def _launch(chosen, logits, candidate_ids, candidate_hidden, direction, midpoint, beta=10.0, *, mode="softmax",
            valid=None, out=None, return_margins=False, check_nan=None):
    """:func:`sasa_reweight` on the backend ``chosen``, without the tensor checks (same defaults)."""
    if mode not in MODE_CODES:
        raise ValueError(f"sasa_reweight: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    dev = logits.device
    b, k = candidate_ids.shape
    d = candidate_hidden.shape[2]
    w = _as_vector(direction, d, "direction", dev)
    m = _as_vector(midpoint, d, "midpoint", dev)
    if isinstance(beta, torch.Tensor):
        beta_t = beta.to(device=dev, dtype=torch.float32).reshape(-1)
        if beta_t.numel() == 1:
            beta_t = beta_t.expand(b)
        beta_t = beta_t.contiguous()
    else:
        beta_t = torch.full((b,), float(beta), dtype=torch.float32, device=dev)
    if valid is not None:
        valid = valid.to(device=dev, dtype=torch.bool).contiguous()
    ids = candidate_ids.to(torch.int64).contiguous()
    hidden = candidate_hidden if (d == 0 or candidate_hidden.stride(2) == 1) else candidate_hidden.contiguous()
    if out is not None and out is not logits:
        out.copy_(logits)
        target = out
    else:
        target = logits
    work = target if (target.shape[1] == 0 or target.stride(1) == 1) else target.contiguous()
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


OP = register(Op("sasa_reweight", BACKENDS, _check, _launch))


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
    chosen = OP.select(*_check(logits, candidate_ids, candidate_hidden, beta=beta, valid=valid, out=out),
                       backend=backend)
    return _launch(chosen, logits, candidate_ids, candidate_hidden, direction, midpoint, beta, mode=mode,
                   valid=valid, out=out, return_margins=return_margins, check_nan=check_nan)


if _ext.has_cpu_kernels():

    @torch.library.register_fake("detox::sasa_reweight")
    def _sasa_reweight_fake(logits, ids, hidden, direction, midpoint, beta, valid, margins, weighting):
        return None
