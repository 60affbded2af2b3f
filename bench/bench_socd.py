"""Benchmark of the SoCD op on real decoding logits: every available backend against the eager
references, side by side in one run.

    python -m bench.bench_socd                 # CPU: all threads and 1 thread -> bench/results/socd-cpu.json
    python -m bench.bench_socd --device cuda   # GPU: microseconds, GB/s, fraction of the copy bandwidth
    python -m bench.bench_socd --vocabs 49152 --batches 1,8,64 --dtypes float32   # the CPU target only

Inputs (``--inputs``): ``real`` (default) are next-token logits of the embedded base and toxic
models on held-out RTP prompts over several decode steps (``bench/socd_logits.py``: captured once,
cached under ``~/.cache/detox-kernels/bench/``; ``--prompts FILE`` for another prompt file). V =
49,152 is the models' own vocabulary; V = 32,000 and 151,936 (no offline model has them) are rows
with the real rows' statistics (columns of the real rows drawn per row, the same for base and
toxic; ``--logits FILE.pt`` takes a captured file instead, e.g. copied to a GPU machine without the
models). ``synthetic`` is the old ``y = x + N(0, 1)``, ``x = 3 N(0, 1)``: an extra row only.

Baselines on the same inputs: ``reference`` (the float64 PyTorch reference, what the tests
compare against) and ``eager-fp32`` (plain float32 PyTorch: softmaxes and torch.topk, the fastest
plain-PyTorch form we have). On a CPU the implementations are timed interleaved (round robin,
several calls per sample, ``--repeats`` samples, medians) and only the ratios mean something
(shared, noisy machines); on a GPU absolute times, GB/s and the fraction of the measured copy
bandwidth. Raw numbers go to a JSON file (default ``bench/results/socd-<device>.json``) with the
machine, the versions, the commit and the logits' source.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import detox_kernels
from detox_kernels.ops import socd as socd_mod
from detox_kernels.reference import socd_reference

from . import socd_logits
from .common import (
    env_info,
    measure_copy_bandwidth,
    op_backends,
    save_results,
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
    kk = max(int(k.max()), 1)  # one host sync: topk needs a Python int
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


def time_interleaved(fns, repeats, target_s=0.01, clock=time.perf_counter):
    """Per-call seconds of each of ``fns`` (name -> callable): warm up, calibrate a number of calls
    per sample (about ``target_s`` each), then ``repeats`` rounds, each timing every function once
    in a rotated order. Returns name -> list of samples. ``clock`` = time.process_time gives CPU
    seconds (all threads), which a machine crowded by other processes inflates far less than wall
    time (use it with one thread: with more, threads waiting at a barrier may spin)."""
    n = {}
    for name, fn in fns.items():
        fn()
        t0 = clock()
        fn()
        one = clock() - t0
        n[name] = max(1, min(200, int(target_s / max(one, 1e-7))))
    names = list(fns)
    res = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, k = fns[name], n[name]
            t0 = clock()
            for _ in range(k):
                fn()
            res[name].append((clock() - t0) / k)
    return res


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_inputs(kind, b, v, dtype, data):
    if kind == "real":
        x, y = socd_logits.rows(data, b, None if v == data["x"].shape[1] else v, seed=b)
    else:
        g = torch.Generator().manual_seed(b * 7 + v)
        x = torch.randn(b, v, generator=g) * 3
        y = x + torch.randn(b, v, generator=g)
    return x.to(dtype), y.to(dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--vocabs", default="32000,49152,151936")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16, float16")
    ap.add_argument("--inputs", default="real,synthetic",
                    help="real (decoding logits) and/or synthetic (y = x + N(0,1)); synthetic runs at "
                         "--synthetic-vocabs only")
    ap.add_argument("--synthetic-vocabs", default="49152")
    ap.add_argument("--prompts", default=None, help="prompt file for the real logits (default: embedded held-out RTP)")
    ap.add_argument("--logits", default=None,
                    help="a captured logits file (socd_logits cache, .pt) to use instead of capturing: e.g. on a "
                         "GPU machine without the models")
    ap.add_argument("--threads", default=None,
                    help="CPU: comma-separated torch thread counts, each a full pass (default: all, then 1)")
    ap.add_argument("--divergence", default="l2")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backends", default=None, help="comma-separated subset (default: every available one)")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) float64 reference")
    ap.add_argument("--graph", action=argparse.BooleanOptionalAction, default=True,
                    help="GPU: also time each backend as CUDA-graph replays over rotated inputs (kernel time)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="CPU: wall time (default) or process CPU time (robust on a crowded machine, 1 thread)")
    ap.add_argument("--label", default=None, help="a tag stored with the results (e.g. the build compared)")
    ap.add_argument("--out", default=None, help="JSON file for the raw results")
    args = ap.parse_args(argv)

    dev = args.device
    backends = op_backends(socd_mod, dev, args.backends)
    peak = measure_copy_bandwidth() if dev == "cuda" else None
    kinds = [s for s in args.inputs.split(",") if s]
    data = None
    if "real" in kinds:
        data = torch.load(args.logits) if args.logits else socd_logits.capture(args.prompts, quiet=True)
    threads = ([int(t) for t in args.threads.split(",")] if args.threads
               else ([torch.get_num_threads(), 1] if dev == "cpu" and torch.get_num_threads() > 1
                     else [torch.get_num_threads()]))
    info = env_info(dev, peak, dtypes=args.dtypes, divergence=args.divergence, label=args.label, clock=args.clock,
                    triton=getattr(__import__("triton"), "__version__", None) if "triton" in backends else None)
    info["machine"] = cpu_model() if dev == "cpu" else info["device"]
    info["cpu_count"] = os.cpu_count()
    info["logits"] = data["meta"] if data is not None else None
    info["vocab_note"] = ("V = 49,152: the models' own logits; other V: columns of the real rows drawn per row "
                          "(without replacement below 49,152, with replacement above), base and toxic alike")
    rows = []
    base_names = ([] if args.no_reference else ["reference"]) + ["eager-fp32"]
    print(f"# SoCD on {info['machine']} ({dev}), torch {info['torch']}, {args.divergence}, commit {info['commit']}"
          + (f", {args.label}" if args.label else ""))
    hdr = f"{'thr':>3} {'input':9} {'dtype':8} {'V':>6} {'B':>3} {'k mean':>7}  " + "  ".join(
        f"{n:>22}" for n in base_names + backends)
    old_threads = torch.get_num_threads()
    for nthr in threads:
        torch.set_num_threads(nthr)
        print(hdr)
        for kind in kinds:
            vocabs = args.synthetic_vocabs if kind == "synthetic" else args.vocabs
            for dname in args.dtypes.split(","):
                dtype = getattr(torch, dname)
                for v in [int(s) for s in vocabs.split(",")]:
                    for b in [int(s) for s in args.batches.split(",")]:
                        rows += bench_one(kind, b, v, dtype, dname, data, dev, backends, base_names, args, nthr, peak)
    torch.set_num_threads(old_threads)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"socd-{dev}.json")
    save_results({"info": info, "rows": rows}, "socd", dev, out)
    if dev == "cpu":
        print("Each cell: median time per call, and (xN) its speed-up over eager-fp32 (softmaxes + torch.topk) "
              "measured interleaved in this run; > 1 is faster.")


def bench_one(kind, b, v, dtype, dname, data, dev, backends, base_names, args, nthr, peak):
    x, y = make_inputs(kind, b, v, dtype, data)
    x, y = x.to(dev), y.to(dev)
    out = torch.empty_like(x)
    _, st = detox_kernels.socd(x, y, divergence=args.divergence, return_stats=True)
    k_mean = float(st.k.double().mean())
    fns = {}
    if "reference" in base_names:
        fns["reference"] = lambda: socd_reference(x, y, divergence=args.divergence)
    fns["eager-fp32"] = lambda: eager_fp32(x, y)
    for name in backends:
        fns[name] = (lambda n=name: detox_kernels.socd(x, y, divergence=args.divergence, out=out, backend=n))
    if dev == "cuda":
        res = {name: time_cuda(fn) for name, fn in fns.items()}
        if args.graph:
            def make():
                return x + 0, y + 0, torch.empty_like(x)  # distinct buffers with the same values
            for name in backends:
                res[f"{name}-graph"] = time_cuda_graph(
                    lambda a, b_, o, n=name: detox_kernels.socd(a, b_, divergence=args.divergence, out=o, backend=n),
                    make, 3 * x.numel() * x.element_size())
    else:
        res = time_interleaved(fns, args.repeats, clock=time.process_time if args.clock == "cpu" else time.perf_counter)
    med = {name: statistics.median(t) for name, t in res.items()}
    floor_bytes = 3 * b * v * x.element_size()
    rows = []
    for name, t in med.items():
        row = {"input": kind, "dtype": dname, "threads": nthr, "B": b, "V": v, "k_mean": k_mean, "impl": name,
               "median_s": t, "samples_s": res[name], "speedup_vs_eager_fp32": med["eager-fp32"] / t,
               "timing": "cuda-graph replay, rotated inputs" if name.endswith("-graph")
               else ("per call (host included)" if dev == "cuda" else f"interleaved round robin, per call, {args.clock} clock")}
        if "reference" in med:
            row["speedup_vs_reference"] = med["reference"] / t
        if dev == "cuda":
            row["GBps"] = floor_bytes / t / 1e9
            row["fraction_of_copy_bandwidth"] = (floor_bytes / peak) / t
        rows.append(row)

    def cell(n):
        t = med[n]
        s = f"{t * 1e6:9.0f}us (x{med['eager-fp32'] / t:5.2f})"
        if n.endswith("-graph"):
            s += f" {(floor_bytes / peak) / t:.2f}bw"
        return f"{s:>22}"

    print(f"{nthr:>3} {kind:9} {dname:8} {v:>6} {b:>3} {k_mean:>7.0f}  " + "  ".join(cell(n) for n in med), flush=True)
    return rows


if __name__ == "__main__":
    main()
