"""detox_kernels: fused kernels for LLM detoxification, as torch.library ops."""
from . import _ext  # noqa: F401  (loads the compiled ops, or warns once and falls back)
__version__ = "0.1.0"
