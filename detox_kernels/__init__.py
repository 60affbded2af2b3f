"""detox_kernels: fused kernels for LLM detoxification, as torch.library ops.

Public ops pick a backend (CUDA, Triton, C++ CPU, float64 reference) by device, dtype and
shape; ``DETOX_BACKEND`` forces one. ``python -m detox_kernels.info`` shows what is available.
"""

from . import _ext  # noqa: F401  (loads the compiled ops, or warns once and falls back)
from .dispatch import BackendUnavailableError
from .sasa import sasa_reweight
from .socd import SocdStats, socd
from .reversal import reverse_toxification_

__version__ = "0.1.0"
__all__ = ["socd", "SocdStats", "reverse_toxification_", "sasa_reweight", "BackendUnavailableError", "__version__"]
