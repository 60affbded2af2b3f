"""Benchmarks of the ops and the pipelines; run them as modules from the repository root,
e.g. ``python -m bench.bench_socd --help`` (see ``bench/common.py``)."""
