"""The fused sampling op, :func:`detox_kernels.sample_top_k_top_p`: temperature, top-k, top-p and
inverse-CDF sampling in one pass over each row, without sorting the vocabulary.

The caller draws ``uniform`` (one number in ``[0, 1)`` per row, e.g. ``torch.rand(B,
generator=g, device=logits.device)``), which makes every backend deterministic and comparable token
for token. The public function checks its tensors, picks a backend (CUDA, Triton, C++ CPU, float64
reference) through :mod:`detox_kernels.dispatch` and returns the token ids. The kernel contract
every backend implements is the docstring of :mod:`detox_kernels.reference.sampling` (and
``docs/kernels.md``).
"""

from __future__ import annotations

import math

import torch

from .. import _ext
from ..dispatch import SUPPORTED_DTYPES, Op, describe, register, standard_backends
from ..reference.sampling import sample_top_k_top_p_reference


def _run_reference(logits, uniform, out, top_k, top_p, temperature):
    out.copy_(sample_top_k_top_p_reference(logits, uniform, top_k=top_k, top_p=top_p, temperature=temperature))


# chosen on logits
BACKENDS = standard_backends("sample_top_k_top_p", ("logits",), reference_run=_run_reference,
                             triton_module="sampling")


def _check_options(top_k, top_p, temperature) -> tuple[int, float, float]:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"sample_top_k_top_p: top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    top_p = float(top_p)
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"sample_top_k_top_p: top_p must be in [0, 1] (1.0 = off), got {top_p!r}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"sample_top_k_top_p: temperature must be a finite number > 0, got {temperature!r}")
    return top_k, top_p, temperature


def _check(logits, uniform, *, top_k=0, top_p=1.0, temperature=1.0, out=None) -> tuple:
    """The tensor checks of :func:`sample_top_k_top_p`; returns the dispatch inputs."""
    if not isinstance(logits, torch.Tensor) or not isinstance(uniform, torch.Tensor):
        raise TypeError(f"sample_top_k_top_p: logits and uniform must be tensors, got logits {describe(logits)} and "
                        f"uniform {describe(uniform)}")
    if logits.dim() != 2:
        raise ValueError(f"sample_top_k_top_p: logits must be [B, V], got logits {describe(logits)}")
    if logits.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"sample_top_k_top_p: logits must be float32/float16/bfloat16, got logits {describe(logits)}")
    b = logits.shape[0]
    if uniform.shape != (b,) or not uniform.is_floating_point():
        raise ValueError(f"sample_top_k_top_p: uniform must be a float [B] = [{b}] tensor (logits {describe(logits)}), "
                         f"got uniform {describe(uniform)}")
    if uniform.device != logits.device:
        raise ValueError(f"sample_top_k_top_p: uniform must be on the device of logits, got uniform "
                         f"{describe(uniform)} and logits {describe(logits)}")
    if out is not None and (not isinstance(out, torch.Tensor) or out.shape != (b,) or out.dtype != torch.int64
                            or out.device != logits.device):
        raise ValueError(f"sample_top_k_top_p: out must be an int64 [B] = [{b}] tensor on {logits.device}, got out "
                         f"{describe(out)}")
    _check_options(top_k, top_p, temperature)
    return (logits,)


def _launch(chosen, logits, uniform, *, top_k=0, top_p=1.0, temperature=1.0, out=None):
    """:func:`sample_top_k_top_p` on the backend ``chosen``, without the tensor checks."""
    top_k, top_p, temperature = _check_options(top_k, top_p, temperature)
    b, v = logits.shape
    if top_k >= v:
        top_k = 0
    work = logits if (v == 0 or logits.stride(1) == 1) else logits.contiguous()
    u = uniform if (uniform.dtype == torch.float32 and uniform.is_contiguous()) else \
        uniform.to(torch.float32).contiguous()
    target = out if (out is not None and out.is_contiguous()) else torch.empty(b, dtype=torch.int64,
                                                                               device=logits.device)
    chosen.run(work, u, target, top_k, top_p, temperature)
    if out is not None and target is not out:
        out.copy_(target)
        return out
    return target


OP = register(Op("sample_top_k_top_p", BACKENDS, _check, _launch))


def sample_top_k_top_p(
    logits: torch.Tensor,
    uniform: torch.Tensor,
    *,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Samples one token per row from HuggingFace's temperature -> top-k -> top-p warper chain.

    Args:
        logits: ``[B, V]`` next-token scores (float32; float16/bfloat16 are computed in float32);
            ``-inf`` entries are never drawn, NaN counts as ``-inf``.
        uniform: ``[B]`` float32 numbers in ``[0, 1)``, one per row (draw them on the logits'
            device, e.g. with a ``torch.Generator``); the token is found by inverse CDF.
        top_k: keep the tokens whose score is ``>=`` the ``top_k``-th largest (all ties at that
            value are kept, as HuggingFace's ``TopKLogitsWarper``); ``0`` or ``>= V``: off.
        top_p: nucleus mass in ``[0, 1]``; ``1.0``: off. Ties at the cut-off value are ranked by
            token id (the lower id first); at least one token is kept.
        temperature: ``> 0``; the scores are ``float32(logits) / temperature``.
        out: optional int64 ``[B]`` tensor to write the tokens into (returned).
        backend: force ``cuda | triton | cpu | reference`` (else ``DETOX_BACKEND``, else auto).

    Returns the ``[B]`` int64 token ids. A row that is entirely ``-inf`` returns token ``0`` (no
    error: the op never synchronises with the host). The exact contract is the docstring of
    :mod:`detox_kernels.reference.sampling`.
    """
    chosen = OP.select(*_check(logits, uniform, top_k=top_k, top_p=top_p, temperature=temperature, out=out),
                       backend=backend)
    return _launch(chosen, logits, uniform, top_k=top_k, top_p=top_p, temperature=temperature, out=out)


if _ext.has_cpu_kernels():

    @torch.library.register_fake("detox::sample_top_k_top_p")
    def _sample_top_k_top_p_fake(logits, uniform, out, top_k, top_p, temperature):
        return None
