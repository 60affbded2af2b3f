"""Benchmark of the SASA re-weighting op: every available backend against the eager baselines.

    python -m bench.bench_sasa                 # CPU: ratios, measured side by side in one run
    python -m bench.bench_sasa --device cuda   # GPU: microseconds, GB/s, fraction of the floor

Baselines on the same inputs: ``reference`` (the float64 reference the tests compare against)
and ``eager-fp32`` (float32 PyTorch: matmul margins, masked softmax, ``scatter_add_``; several
launches). Bytes moved (the floor): the hidden states ``B*K*D``, the ids, and a read and a write
of ``B*K`` logits. Raw numbers go to ``bench/results/sasa-<device>-<host>.json``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import detox_kernels
from detox_kernels.ops import sasa as sasa_mod
from detox_kernels.reference import sasa_reweight_reference

from .common import env_info, measure_copy_bandwidth, op_backends, save_results, time_cpu, time_cuda


def eager_fp32(logits, ids, hidden, w, m, beta, valid):
    """The straightforward float32 PyTorch form (softmax mode)."""
    margins = (hidden.float() - m) @ w
    margins = margins.masked_fill(~valid, float("-inf"))
    wt = torch.softmax(margins, dim=-1).nan_to_num(0.0)
    logits.scatter_add_(1, ids, (beta[:, None] * wt).to(logits.dtype))
    return logits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--k", type=int, default=50, help="candidates per row (default: 50)")
    ap.add_argument("--dims", default="576,896", help="hidden sizes (SmolLM2-135M 576, Qwen2.5-0.5B 896)")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backends", default=None, help="comma-separated subset (default: every available one)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    dtype = getattr(torch, args.dtype)
    backends = op_backends(sasa_mod, dev, args.backends)
    timer = time_cuda if dev == "cuda" else (lambda fn: time_cpu(fn, args.repeats))
    peak = measure_copy_bandwidth() if dev == "cuda" else None
    info = env_info(dev, peak, dtype=args.dtype, K=args.k, V=args.vocab)
    print(f"# SASA re-weighting benchmark on {info['device']} ({dev}), torch {info['torch']}, {args.dtype}, "
          f"K={args.k}, V={args.vocab}, {info['threads']} threads")
    rows = []
    for d in [int(s) for s in args.dims.split(",")]:
        for b in [int(s) for s in args.batches.split(",")]:
            g = torch.Generator().manual_seed(b + d)
            logits = (torch.randn(b, args.vocab, generator=g) * 3).to(dtype).to(dev)
            ids = torch.stack([torch.randperm(args.vocab, generator=g)[:args.k] for _ in range(b)]).to(dev)
            hidden = torch.randn(b, args.k, d, generator=g).to(dtype).to(dev)
            w = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0).to(dev)
            m = (torch.randn(d, generator=g) * 0.1).to(dev)
            beta = torch.full((b,), 10.0, device=dev)
            valid = torch.ones(b, args.k, dtype=torch.bool, device=dev)
            work = logits.clone()
            fns = {"reference": lambda: sasa_reweight_reference(logits, ids, hidden, w, m, beta, valid=valid),
                   "eager-fp32": lambda: eager_fp32(work, ids, hidden, w, m, beta, valid)}
            for name in backends:  # in place on a scratch copy (the values drift; the cost does not)
                fns[name] = (lambda n=name: detox_kernels.sasa_reweight(work, ids, hidden, w, m, beta, valid=valid,
                                                                        check_nan=False, backend=n))
            res = {name: timer(fn) for name, fn in fns.items()}
            med = {name: statistics.median(t) for name, t in res.items()}
            nbytes = b * args.k * (d * hidden.element_size() + 8 + 1 + 4 + 2 * logits.element_size()) + 2 * d * 4
            for name, t in med.items():
                row = {"B": b, "D": d, "impl": name, "median_s": t, "samples_s": res[name],
                       "speedup_vs_reference": med["reference"] / t, "speedup_vs_eager_fp32": med["eager-fp32"] / t}
                if dev == "cuda":
                    row["GBps"] = nbytes / t / 1e9
                    row["fraction_of_floor"] = (nbytes / peak) / t
                rows.append(row)
            print(f"B={b:<4} D={d:<4} " + "  ".join(
                f"{n}: {'%.1f us' % (med[n] * 1e6) if dev == 'cuda' else 'x%.2f' % (med['reference'] / med[n])}"
                + (f" ({med['eager-fp32'] / med[n]:.2f}x eager-fp32)" if n in backends else "") for n in med),
                flush=True)
    save_results({"info": info, "rows": rows}, "sasa", dev, args.out)
    if dev == "cpu":
        print("CPU numbers are speed-ups over the float64 reference measured in this run (x > 1 is faster).")


if __name__ == "__main__":
    main()
