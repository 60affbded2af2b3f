"""SoCD: inputs aimed at the kernels' inner paths, on every available backend, against the
float64 reference (tests/socd_check.py).

- softmax statistics gathered online over several chunks of a row, with the maximum rising
  from chunk to chunk (the running sums are rescaled; on the Triton interpreter the chunk is made
  small so that a short row spans several chunks);
- a radix select that needs every round: candidate keys that share their top 21 bits and differ
  only in the low bits, with exact ties at the threshold (the lowest ids must be taken);
- bfloat16 inputs through the same paths.
"""

from __future__ import annotations

import pytest
import torch

from detox_kernels import socd
from detox_kernels.ops import socd as socd_module
from detox_kernels.reference import DIVERGENCES

from backends import available_backends
from socd_check import check_against_reference

BACKENDS = available_backends(socd_module)
DEVICE = {"cuda": "cuda", "triton": "cuda" if torch.cuda.is_available() else "cpu", "cpu": "cpu"}


@pytest.fixture
def small_triton_chunks(monkeypatch):
    """On the Triton interpreter, rows are streamed in chunks of 2048 (the minimum) instead of
    one chunk for the whole row."""
    if not torch.cuda.is_available():
        try:
            from detox_kernels.triton import socd as tsocd
        except Exception:  # pragma: no cover - Triton missing: nothing to shrink
            return
        if getattr(tsocd, "AVAILABLE", False):
            monkeypatch.setattr(tsocd, "INTERPRET_MAX_BLOCK", 2048)


def _run(backend, x, y, **kw):
    dev = DEVICE[backend]
    return socd(x.to(dev), y.to(dev), return_stats=True, backend=backend, **kw)


@pytest.mark.skipif(not BACKENDS, reason="no compiled or Triton backend available")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("div", DIVERGENCES)
def test_online_statistics_with_rising_maximum(backend, div, small_triton_chunks):
    g = torch.Generator().manual_seed(7)
    v = 5003  # three chunks of 2048 and a partial one
    ramp = torch.linspace(-30.0, 30.0, v, dtype=torch.float64)
    x = (ramp + torch.randn(2, v, generator=g, dtype=torch.float64)).float()
    y = (x.double() * 0.8 + torch.randn(2, v, generator=g, dtype=torch.float64)).float()
    y[1] = y[1].flip(0)  # the toxic maximum in the first chunk, the base maximum in the last
    x[1, :7] = float("-inf")
    out, stats = _run(backend, x, y, divergence=div)
    check_against_reference(out, stats, x, y, divergence=div, k_min=10, k_max=None, k_rounding="ceil",
                            subtract="abs")


def _deep_radix_inputs(v: int, dtype: torch.dtype):
    # x = 0, so key = y exactly. y = 0.5 + (perm % 701) * 2^-20: every candidate key shares
    # its top 21 ordered bits (sign, exponent, 12 mantissa bits), the keys differ in bits 4..13
    # only, and each value occurs about v / 701 times (ties at any threshold).
    g = torch.Generator().manual_seed(11)
    perm = torch.randperm(v, generator=g)
    y = 0.5 + (perm % 701).double() * 2.0**-20
    x = torch.zeros(v, dtype=torch.float64)
    if dtype == torch.bfloat16:  # bf16 has 8 mantissa bits: spread the keys over its grid
        y = 0.5 + (perm % 97).double() * 2.0**-9
    return x.to(dtype).unsqueeze(0).repeat(2, 1), y.to(dtype).unsqueeze(0).repeat(2, 1)


@pytest.mark.skipif(not BACKENDS, reason="no compiled or Triton backend available")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("k", [1, 777, 1234])
def test_radix_select_in_every_round_with_ties(backend, dtype, k, small_triton_chunks):
    dt = getattr(torch, dtype)
    x, y = _deep_radix_inputs(4099, dt)
    out, stats = _run(backend, x, y, divergence="l2", k_min=k, k_max=k)
    check_against_reference(out, stats, x, y, divergence="l2", k_min=k, k_max=k, k_rounding="ceil",
                            subtract="abs")
    assert (stats.k.cpu() == k).all()  # far more candidates than k: exactly k are changed
