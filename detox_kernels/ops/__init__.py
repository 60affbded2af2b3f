"""The public ops, one module per op (named like the op's files in ``reference/``, ``triton/``,
``csrc/``, ``tests/`` and ``bench/``): :mod:`.socd`, :mod:`.sasa` (``sasa_reweight``),
:mod:`.reversal` (``reverse_toxification_``) and :mod:`.sampling`
(``sample_top_k_top_p``). Each module declares its backends (``BACKENDS``)
and registers its :class:`~detox_kernels.dispatch.Op` (``OP``) with the dispatcher.

The op functions are exported by :mod:`detox_kernels` itself; this package holds their modules.
"""

from . import reversal, sampling, sasa, socd  # noqa: F401  (registers the ops)

__all__ = ["reversal", "sampling", "sasa", "socd"]
