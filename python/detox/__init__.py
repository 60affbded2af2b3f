"""detox: the thin layer on top of detox_kernels (generation, methods, pipeline, harness, CLI)."""

__version__ = "0.1.0"
