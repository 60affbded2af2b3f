"""Op microbenchmarks (SoCD, SASA re-weighting, toxification reversal) for pytest-benchmark.

    pytest bench/ --benchmark-only --benchmark-json bench/results/op-benchmarks-cpu.json

Small cases of real decoding shapes (SmolLM2-135M: V = 49,152, hidden 576, 9 heads x 64; Qwen-size
V = 151,936), each op's compiled backends against its eager float32 PyTorch form (``eager-fp32``,
the baselines of bench_socd.py / bench_sasa.py / bench_reversal.py). Values are seeded random:
the SoCD numbers on real decoding logits come from ``python -m bench.bench_socd``. Every case
uses a fixed number of rounds (``pedantic``), so ``pytest bench/`` without ``--benchmark-only``
also finishes in seconds. ``pytest -q tests`` (CI) does not collect this directory.
"""

from __future__ import annotations

import pytest
import torch

import detox_kernels
from detox_kernels.ops import reversal as rev_mod
from detox_kernels.ops import sasa as sasa_mod
from detox_kernels.ops import socd as socd_mod

from .bench_reversal import eager_fp32 as reversal_eager
from .bench_sasa import eager_fp32 as sasa_eager
from .bench_socd import eager_fp32 as socd_eager
from .common import op_backends

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDS = 15


def _impls(module):
    return ["eager-fp32"] + op_backends(module, DEV)


def _run(benchmark, fn, group, **info):
    benchmark.group = group
    benchmark.extra_info.update(info, device=DEV, threads=torch.get_num_threads())
    fn()  # warm up (Triton compiles, scratch buffers grow)
    if DEV == "cuda":
        torch.cuda.synchronize()

        def call():
            fn()
            torch.cuda.synchronize()
    else:
        call = fn
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("b,v", [(1, 49152), (8, 49152), (64, 49152), (1, 151936)])
@pytest.mark.parametrize("impl", _impls(socd_mod))
def test_socd(benchmark, impl, b, v):
    g = torch.Generator().manual_seed(b + v)
    x = (torch.randn(b, v, generator=g) * 3).to(DEV)
    y = x + torch.randn(b, v, generator=g).to(DEV)
    out = torch.empty_like(x)
    if impl == "eager-fp32":
        fn = lambda: socd_eager(x, y)  # noqa: E731
    else:
        fn = lambda: detox_kernels.socd(x, y, out=out, backend=impl)  # noqa: E731
    _run(benchmark, fn, f"socd B={b} V={v}", impl=impl, B=b, V=v)


@pytest.mark.parametrize("b,k", [(1, 10), (8, 10), (32, 10)])
@pytest.mark.parametrize("impl", _impls(sasa_mod))
def test_sasa_reweight(benchmark, impl, b, k):
    v, d = 49152, 576
    g = torch.Generator().manual_seed(b + k)
    logits = (torch.randn(b, v, generator=g) * 3).to(DEV)
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(b)]).to(DEV)
    hidden = torch.randn(b, k, d, generator=g).to(DEV)
    w = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0).to(DEV)
    m = (torch.randn(d, generator=g) * 0.1).to(DEV)
    beta = torch.full((b,), 10.0, device=DEV)
    valid = torch.ones(b, k, dtype=torch.bool, device=DEV)
    work = logits.clone()  # in place on a scratch copy: the values drift, the cost does not
    if impl == "eager-fp32":
        fn = lambda: sasa_eager(work, ids, hidden, w, m, beta, valid)  # noqa: E731
    else:
        fn = lambda: detox_kernels.sasa_reweight(work, ids, hidden, w, m, beta, valid=valid, backend=impl)  # noqa: E731
    _run(benchmark, fn, f"sasa B={b} K={k} D={d}", impl=impl, B=b, K=k, D=d, V=v)


@pytest.mark.parametrize("b", [1, 8, 64])
@pytest.mark.parametrize("impl", _impls(rev_mod))
def test_reversal(benchmark, impl, b):
    h, d = 9, 64
    g = torch.Generator().manual_seed(b)
    o = torch.randn(b, h, d, generator=g).to(DEV)
    delta = (0.3 * torch.randn(b, h, d, generator=g)).to(DEV)
    e = torch.randn(h, d, generator=g).to(DEV)
    if impl == "eager-fp32":
        fn = lambda: reversal_eager(o, delta, e)  # noqa: E731
    else:
        fn = lambda: detox_kernels.reverse_toxification_(o, delta, e, backend=impl)  # noqa: E731
    _run(benchmark, fn, f"reversal B={b} H={h} D={d}", impl=impl, B=b, H=h, D=d)
