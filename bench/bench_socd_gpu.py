"""GPU benchmark of the SoCD op: the CUDA and Triton kernels against plain PyTorch, side by side.

    python -m bench.bench_socd_gpu                                # the full grid, JSON + table
    python -m bench.bench_socd_gpu --batches 1,64 --vocabs 151936 --dtypes float32
    python -m bench.bench_socd_gpu --logits captured.pt           # real decoding logits

For every B in {1, 8, 64, 256}, V in {32000, 49152, 151936} and dtype in {float32, bfloat16}:

- ``cuda`` / ``triton``: kernel time of ``detox_kernels.socd(..., backend=...)`` (l2, paper
  preset) as CUDA-graph replays over rotated input sets (more than 4x the L2 in all, so the
  inputs come from DRAM as in decoding), median of ``triton.testing.do_bench``;
- ``torch-topk``: the fastest plain-PyTorch form (float32 log-softmaxes, ``torch.topk`` of the key,
  one host sync for k), per call; ``reference``: the float64 reference, per call (B <= 64);
- the floor: 2 reads + 1 write of ``[B, V]`` at the measured device-to-device copy bandwidth;
  GB/s = 3 B V bytes / time, and its fraction of that bandwidth.

Inputs: ``--logits FILE`` takes real next-token logits (a ``torch.save`` of
``{"base": [N, V], "toxic": [N, V]}``; rows are taken cyclically, columns cut or tiled to V);
otherwise synthetic rows ``x = 3 N(0, 1)``, ``y = x + N(0, 1)``, marked ``"inputs": "synthetic"``.
``DETOX_SOCD_CLUSTER`` (0, 8, 16; unset = automatic) is recorded with the results: run the
script once per setting to compare the CUDA paths. Raw numbers: JSON (``--out``, default
``bench/results/socd-gpu-<host>.json``) with the GPU name, versions and commit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from .common import env_info, measure_copy_bandwidth, save_results, time_cuda


def torch_topk_socd(x, y, k_min=10, k_max=None):
    """Plain float32 PyTorch SoCD (l2, ceil, |y|): log-softmaxes, torch.topk over the key."""
    v = x.shape[-1]
    k_max = v // 2 if k_max is None else k_max
    xf, yf = x.float(), y.float()
    lx, ly = torch.log_softmax(xf, -1), torch.log_softmax(yf, -1)
    d = (lx.exp() - ly.exp()).norm(dim=-1)
    l1 = torch.log1p(d)
    alpha = l1 / (1 + l1)
    k = torch.ceil(alpha * v).clamp(min=k_min, max=k_max).long()
    delta = ly - lx
    kk = int(k.max())  # the host sync: topk needs a Python int
    vals, idx = torch.topk(delta, kk, dim=-1)  # sorted: the first k[b] of row b are its top k
    keep = (torch.arange(kk, device=x.device) < k.unsqueeze(-1)) & (vals > 0)
    sub = torch.zeros_like(xf).scatter_(-1, idx, keep.float())
    return (xf - sub * alpha.unsqueeze(-1) * yf.abs()).to(x.dtype)


def graph_time(call, sets, rep_ms):
    """Per-call seconds of ``call(x, y, out)`` captured once per input set in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for x, y, out in sets:  # warm up outside the capture (Triton compiles, allocator settles)
            call(x, y, out)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for x, y, out in sets:
            call(x, y, out)
    g.replay()
    torch.cuda.synchronize()
    return statistics.median(time_cuda(g.replay, rep=rep_ms)) / len(sets)


def make_sets(b, v, dtype, n, source, gen):
    sets = []
    for i in range(n):
        if source is not None:
            base, toxic = source
            rows = (torch.arange(b) + i * b) % base.shape[0]
            x, y = base[rows], toxic[rows]
            if x.shape[1] >= v:
                x, y = x[:, :v], y[:, :v]
            else:
                reps = -(-v // x.shape[1])
                x, y = x.repeat(1, reps)[:, :v], y.repeat(1, reps)[:, :v]
        else:
            x = torch.randn(b, v, generator=gen) * 3
            y = x + torch.randn(b, v, generator=gen)
        x = x.to("cuda", dtype).contiguous()
        y = y.to("cuda", dtype).contiguous()
        sets.append((x, y, torch.empty_like(x)))
    return sets


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--vocabs", default="32000,49152,151936")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--backends", default="cuda,triton,torch-topk,reference")
    ap.add_argument("--logits", default=None, help="torch.save'd {'base': [N, V], 'toxic': [N, V]} real logits")
    ap.add_argument("--rep-ms", type=int, default=100, help="do_bench sampling time per measurement (ms)")
    ap.add_argument("--reference-max-batch", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_socd_gpu: needs a CUDA GPU (the CPU benchmark is bench/bench_socd.py)")
    import detox_kernels
    from detox_kernels.reference import socd_reference

    backends = args.backends.split(",")
    source = None
    if args.logits:
        blob = torch.load(args.logits, map_location="cpu")
        source = (blob["base"].float(), blob["toxic"].float())
    peak = measure_copy_bandwidth()
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20) or 50 * 2**20
    gen = torch.Generator().manual_seed(0)
    cluster = os.environ.get("DETOX_SOCD_CLUSTER", "auto")
    rows = []
    t_start = time.time()
    print(f"copy bandwidth {peak / 1e9:.0f} GB/s, L2 {l2 / 2**20:.0f} MiB, DETOX_SOCD_CLUSTER={cluster}, "
          f"inputs {'real: ' + args.logits if source else 'synthetic'}")
    hdr = (f"{'dtype':<8} {'B':>4} {'V':>6} {'floor':>7} | " + " | ".join(f"{b:>10} {'GB/s':>5} {'frac':>4}" for b in backends))
    print(hdr)
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        esize = torch.empty((), dtype=dtype).element_size()
        for v in (int(s) for s in args.vocabs.split(",")):
            for b in (int(s) for s in args.batches.split(",")):
                nbytes = 3 * b * v * esize
                n = max(1, min(32, -(-4 * l2 // max(2 * b * v * esize, 1))))
                sets = make_sets(b, v, dtype, n, source, gen)
                row = {"dtype": dname, "B": b, "V": v, "floor_us": nbytes / peak * 1e6, "sets": n, "times_us": {}}
                for name in backends:
                    try:
                        if name in ("cuda", "triton"):
                            t = graph_time(lambda x, y, out, nm=name: detox_kernels.socd(x, y, out=out, backend=nm),
                                           sets, args.rep_ms)
                        elif name == "torch-topk":
                            x, y, _ = sets[0]
                            t = statistics.median(time_cuda(lambda: torch_topk_socd(x, y), rep=args.rep_ms))
                        elif name == "reference":
                            if b > args.reference_max_batch:
                                continue
                            x, y, _ = sets[0]
                            t = statistics.median(time_cuda(lambda: socd_reference(x, y), rep=args.rep_ms))
                        else:
                            raise SystemExit(f"bench_socd_gpu: unknown backend {name!r}")
                    except Exception as e:  # noqa: BLE001 - record and go on (e.g. a backend not built)
                        row.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:300]
                        continue
                    row["times_us"][name] = t * 1e6
                row["GBps"] = {k: nbytes / (t * 1e-6) / 1e9 for k, t in row["times_us"].items()}
                row["fraction_of_copy_bw"] = {k: g * 1e9 / peak for k, g in row["GBps"].items()}
                base = row["times_us"].get("torch-topk")
                if base:
                    row["speedup_vs_torch_topk"] = {k: base / t for k, t in row["times_us"].items()}
                rows.append(row)
                cells = []
                for name in backends:
                    t = row["times_us"].get(name)
                    cells.append(f"{t:>10.1f} {row['GBps'][name]:>5.0f} {row['fraction_of_copy_bw'][name]:>4.2f}"
                                 if t is not None else f"{'-':>10} {'':>5} {'':>4}")
                print(f"{dname:<8} {b:>4} {v:>6} {row['floor_us']:>7.1f} | " + " | ".join(cells), flush=True)
                del sets
                torch.cuda.empty_cache()
    import triton

    result = {
        "op": "socd",
        "what": "GPU kernel times (us): CUDA/Triton as CUDA-graph replays over rotated inputs; torch-topk and "
                "the float64 reference per call",
        "inputs": f"real: {args.logits}" if source else "synthetic: x = 3 N(0,1), y = x + N(0,1)",
        "divergence": "l2",
        "preset": "paper",
        "DETOX_SOCD_CLUSTER": cluster,
        "env": env_info("cuda", peak, triton=triton.__version__, cuda=torch.version.cuda,
                        capability=".".join(map(str, torch.cuda.get_device_capability(0)))),
        "wall_s": round(time.time() - t_start, 1),
        "rows": rows,
    }
    save_results(result, "socd-gpu", "cuda", args.out)


if __name__ == "__main__":
    main()
