"""Benchmark of the SoCD op: every available backend against the eager references.

    python -m bench.bench_socd                 # CPU: ratios, measured side by side in one run
    python -m bench.bench_socd --device cuda   # GPU: microseconds, GB/s, fraction of the floor

Baselines on the same inputs: ``reference`` (the float64 PyTorch reference, what the tests
compare against) and ``eager-fp32`` (a straightforward float32 PyTorch port with torch.topk,
i.e. the obvious vectorised rewrite of the official code). Raw numbers go to a JSON file
(``bench/results/socd-<device>-<host>.json`` by default) with the versions and the commit.
On a CPU only ratios mean something (shared, noisy machines); on a GPU absolute times.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import detox_kernels
from detox_kernels.ops import socd as socd_mod
from detox_kernels.reference import socd_reference

from .common import (
    env_info,
    measure_copy_bandwidth,
    op_backends,
    save_results,
    time_cpu,
    time_cuda,
)


def eager_fp32(x, y, k_min=10, k_max=None):
    """Plain float32 PyTorch SoCD (l2, ceil, |y|): softmaxes, torch.topk over delta."""
    v = x.shape[-1]
    k_max = v // 2 if k_max is None else k_max
    lx, ly = torch.log_softmax(x.float(), -1), torch.log_softmax(y.float(), -1)
    d = (lx.exp() - ly.exp()).norm(dim=-1)
    l1 = torch.log1p(d)
    alpha = l1 / (1 + l1)
    k = torch.ceil(alpha * v).clamp(min=k_min, max=k_max).long()
    delta = ly - lx
    kk = int(k.max())  # one host sync: topk needs a Python int
    vals, idx = torch.topk(delta, kk, dim=-1)
    keep = (torch.arange(kk, device=x.device) < k.unsqueeze(-1)) & (vals > 0)
    sub = torch.zeros_like(x, dtype=torch.float32).scatter_(-1, idx, keep.float())
    return (x.float() - sub * alpha.unsqueeze(-1) * y.float().abs()).to(x.dtype)


def time_cuda_graph(call, make_inputs, bytes_per_set, l2_bytes=50 * 2**20):
    """Kernel time without host overhead and without L2 reuse: enough input sets to exceed the
    L2 (rotated), all calls captured in one CUDA graph, replays timed; per-call median."""
    import triton.testing

    n = max(1, min(64, -(-4 * l2_bytes // max(bytes_per_set, 1))))
    sets = [make_inputs() for _ in range(n)]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm up outside the capture (Triton compiles, allocator settles)
        for args in sets:
            call(*args)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for args in sets:
            call(*args)
    torch.cuda.synchronize()
    times = triton.testing.do_bench(g.replay, warmup=25, rep=200, return_mode="all")
    return [t * 1e-3 / n for t in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--vocabs", default="32000,49152,151936")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--divergence", default="l2")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backends", default=None, help="comma-separated subset (default: every available one)")
    ap.add_argument("--graph", action=argparse.BooleanOptionalAction, default=True,
                    help="GPU: also time each backend as CUDA-graph replays over rotated inputs (kernel time)")
    ap.add_argument("--out", default=None, help="JSON file for the raw results")
    args = ap.parse_args(argv)

    dev = args.device
    dtype = getattr(torch, args.dtype)
    backends = op_backends(socd_mod, dev, args.backends)
    timer = time_cuda if dev == "cuda" else (lambda fn: time_cpu(fn, args.repeats))
    peak = measure_copy_bandwidth() if dev == "cuda" else None
    info = env_info(dev, peak, dtype=args.dtype, divergence=args.divergence,
                    triton=getattr(__import__("triton"), "__version__", None) if "triton" in backends else None)
    rows = []
    print(f"# SoCD benchmark on {info['device']} ({dev}), torch {info['torch']}, {args.dtype}, {args.divergence}, "
          f"{info['threads']} threads")
    for v in [int(s) for s in args.vocabs.split(",")]:
        for b in [int(s) for s in args.batches.split(",")]:
            g = torch.Generator().manual_seed(b * 7 + v)
            x = (torch.randn(b, v, generator=g) * 3).to(dtype).to(dev)
            y = (x.float().cpu() + torch.randn(b, v, generator=g)).to(dtype).to(dev)
            out = torch.empty_like(x)
            fns = {"reference": lambda: socd_reference(x, y, divergence=args.divergence),
                   "eager-fp32": lambda: eager_fp32(x, y)}
            for name in backends:
                fns[name] = (lambda n=name: detox_kernels.socd(x, y, divergence=args.divergence, out=out, backend=n))
            res = {name: timer(fn) for name, fn in fns.items()}
            if dev == "cuda" and args.graph:
                def make_inputs():
                    xs = x + 0  # distinct buffers with the same values
                    return xs, y + 0, torch.empty_like(x)
                for name in backends:
                    res[f"{name}-graph"] = time_cuda_graph(
                        lambda a, b_, o, n=name: detox_kernels.socd(a, b_, divergence=args.divergence, out=o, backend=n),
                        make_inputs, 3 * x.numel() * x.element_size())
            med = {name: statistics.median(t) for name, t in res.items()}
            floor_bytes = 3 * b * v * x.element_size()
            for name, t in med.items():
                row = {"B": b, "V": v, "impl": name, "median_s": t, "samples_s": res[name],
                       "speedup_vs_reference": med["reference"] / t, "speedup_vs_eager_fp32": med["eager-fp32"] / t,
                       "timing": "cuda-graph replay, rotated inputs" if name.endswith("-graph") else "per call (host included)"}
                if dev == "cuda":
                    row["GBps"] = floor_bytes / t / 1e9
                    row["fraction_of_floor"] = (floor_bytes / peak) / t
                rows.append(row)
            line = f"B={b:<3} V={v:<6} " + "  ".join(
                f"{n}: {'%.1f us' % (med[n] * 1e6) if dev == 'cuda' else 'x%.2f' % (med['reference'] / med[n])}"
                + (f" ({med['eager-fp32'] / med[n]:.2f}x eager-fp32)" if n in backends else "")
                + (f" ({(floor_bytes / peak) / med[n]:.2f} of floor)" if n.endswith("-graph") else "")
                for n in med)
            print(line, flush=True)
    save_results({"info": info, "rows": rows}, "socd", dev, args.out)
    if dev == "cpu":
        print("CPU numbers are speed-ups over the float64 reference measured in this run (x > 1 is faster).")


if __name__ == "__main__":
    main()
