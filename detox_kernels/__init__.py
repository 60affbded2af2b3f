"""detox_kernels: fused kernels for LLM detoxification, as torch.library ops.

Public ops pick a backend (CUDA, Triton, C++ CPU, float64 reference) by device, dtype and
shape; ``DETOX_BACKEND`` forces one. :func:`resolve_backend` makes that choice once and returns
the op bound to it. ``python -m detox_kernels.info`` shows what is available. The ops' modules
are under :mod:`detox_kernels.ops`; the contracts are in ``docs/kernels.md``.
"""

from . import _ext  # noqa: F401  (loads the compiled ops, or warns once and falls back)
from .dispatch import BackendUnavailableError, BoundOp, resolve_backend
from .ops.reversal import reverse_toxification_
from .ops.sampling import sample_top_k_top_p
from .ops.sasa import sasa_reweight
from .ops.socd import SocdStats, socd

__version__ = "0.1.0"
__all__ = [
    "socd",
    "SocdStats",
    "reverse_toxification_",
    "sasa_reweight",
    "sample_top_k_top_p",
    "resolve_backend",
    "BoundOp",
    "BackendUnavailableError",
    "__version__",
]
