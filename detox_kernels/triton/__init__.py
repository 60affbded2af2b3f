"""Triton backends of the ops (one module per op). Triton is imported here once: without it (or
with a broken install) the modules still import, with ``AVAILABLE = False`` and the reason in
``UNAVAILABLE_REASON``, and their kernels are not defined."""

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except Exception as exc:  # noqa: BLE001  (ImportError, or a broken Triton install)
    triton = None
    tl = None
    libdevice = None
    AVAILABLE = False
    UNAVAILABLE_REASON: str | None = f"triton could not be imported ({type(exc).__name__}: {exc})"
else:
    AVAILABLE = True
    UNAVAILABLE_REASON = None
