"""Benchmark of Toxification Reversal: the op, and decoding with it.

    python -m bench.bench_reversal                 # CPU: ratios, measured side by side in one run
    python -m bench.bench_reversal --device cuda   # GPU: microseconds, GB/s, fraction of the floor

1. The op ``reverse_toxification_`` on ``[B, H, D]`` (SmolLM2 9 x 64, Llama-7B 32 x 128) on every
   available backend against the float64 reference and an eager float32 PyTorch port (about a
   dozen separate kernels). Floor: one read of ``o`` and ``delta``, one write of ``o`` (``e_neg``
   is shared by all rows and stays in cache).
2. Decoding step time with a SmolLM2-shaped Llama (random weights: timing does not depend on
   them; ``--model`` loads a real one): plain decode steps (``B`` rows), the prefix forward alone
   (the read pass: the decoder over ``2B`` prefixed rows with its own cache), and reversal decoding
   (read pass + write pass with the hooks on every layer). Reported: the reversal step time
   against the bound ``plain + prefix`` (target <= 1.05 on a GPU) and against plain.

Raw numbers go to a JSON file (``bench/results/reversal-<device>-<host>.json`` by default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import detox_kernels
from detox_kernels.ops import reversal as rev_mod
from detox_kernels.reference.reversal import reverse_toxification_reference

from .common import (
    env_info,
    measure_copy_bandwidth,
    op_backends,
    save_results,
    time_cpu,
    time_cuda,
    word_tokenizer,
)


def eager_fp32(o, delta, e, norm_exp=0.4, sim_exp=0.6):
    """A straightforward float32 PyTorch port (what the update costs without a fused kernel)."""
    of, df, ef = o.float(), delta.float(), e.float()
    s_norm = (1 + df.norm(dim=-1)) ** norm_exp
    cos = torch.nn.functional.cosine_similarity(of, ef.unsqueeze(0), dim=-1)
    s_sim = (1 + cos.clamp_min(0)) ** sim_exp
    new = of - (s_norm * s_sim).unsqueeze(-1) * df
    ratio = of.flatten(1).norm(dim=-1) / new.flatten(1).norm(dim=-1)
    o.copy_(new * ratio.view(-1, 1, 1))
    return o


def bench_op(args, dev, dtype, timer, peak):
    backends = op_backends(rev_mod, dev)
    rows = []
    for shape in args.shapes.split(","):
        h, d = (int(s) for s in shape.split("x"))
        for b in [int(s) for s in args.batches.split(",")]:
            g = torch.Generator().manual_seed(b + h + d)
            # rotate through several input sets so decode-sized inputs are not all served from L1/L2
            sets = [tuple(t.to(dev, dtype) for t in (torch.randn(b, h, d, generator=g), 0.3 * torch.randn(b, h, d, generator=g),
                                                    torch.randn(h, d, generator=g))) for _ in range(4)]
            it = [0]

            def pick():
                it[0] = (it[0] + 1) % len(sets)
                return sets[it[0]]

            fns = {"reference": lambda: reverse_toxification_reference(*pick()),
                   "eager-fp32": lambda: eager_fp32(*pick())}
            for name in backends:
                fns[name] = lambda n=name: detox_kernels.reverse_toxification_(*pick(), backend=n)
                fns[name + "-raw"] = (lambda n=name: (torch.ops.detox.reverse_toxification_triton if n == "triton"
                                                      else torch.ops.detox.reverse_toxification_)(*pick(), 0.4, 0.6, True))
            res = {n: timer(f) for n, f in fns.items()}
            med = {n: statistics.median(t) for n, t in res.items()}
            floor_bytes = 3 * b * h * d * sets[0][0].element_size()
            for n, t in med.items():
                row = {"B": b, "H": h, "D": d, "impl": n, "median_s": t, "samples_s": res[n],
                       "speedup_vs_reference": med["reference"] / t, "speedup_vs_eager_fp32": med["eager-fp32"] / t}
                if dev == "cuda":
                    row["GBps"] = floor_bytes / t / 1e9
                    row["fraction_of_floor"] = (floor_bytes / peak) / t
                rows.append(row)
            print(f"op B={b:<4} {h}x{d:<4} " + "  ".join(
                f"{n}: " + (f"{med[n] * 1e6:.1f} us" + (f" ({floor_bytes / med[n] / 1e9:.0f} GB/s)" if n in backends else "")
                            if dev == "cuda" else f"x{med['reference'] / med[n]:.2f} vs ref, x{med['eager-fp32'] / med[n]:.2f} vs eager")
                for n in med), flush=True)
    return rows


def _model(args, dev, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.model:
        from detox.models import load_causal_lm

        m, tok = load_causal_lm(args.model, dtype=dtype, device=dev)
        return m.eval(), tok, args.model
    # SmolLM2-135M's shape (30 layers, 9 heads of 64, 3 KV heads), random weights
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).to(dev, dtype).eval()
    return m, word_tokenizer(), "random SmolLM2-135M-shaped Llama"


def bench_decode(args, dev, dtype):
    from detox.generation.reversal import ToxificationReversal

    model, tok, name = _model(args, dev, dtype)
    rev = ToxificationReversal(model, tok)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    rows = []
    for b in [int(s) for s in args.decode_batches.split(",")]:
        g = torch.Generator().manual_seed(b)
        ids = torch.randint(10, 1000, (b, args.prompt_len), generator=g).to(dev)
        nxt = torch.randint(10, 1000, (b, args.steps), generator=g).to(dev)
        p = rev.prefix_ids.shape[1]
        pre = torch.cat([rev.prefix_ids.to(dev)[:, None].expand(2, b, p).reshape(2 * b, p), ids.repeat(2, 1)], 1)
        pre_mask = torch.cat([rev.prefix_mask.to(dev)[:, None].expand(2, b, p).reshape(2 * b, p),
                              torch.ones(2 * b, args.prompt_len, dtype=torch.long, device=dev)], 1)

        @torch.no_grad()
        def run(kind):
            """Prefill, then `steps` timed decode steps; returns the seconds of the decode steps."""
            if kind == "prefix":  # what the read pass runs: the decoder over 2B prefixed rows
                mdl, x, mask, rep = model.base_model, pre, pre_mask, 2
            else:
                mdl, x, mask, rep = model, ids, torch.ones_like(ids), 1
            kw = dict(use_cache=True) if kind == "prefix" else dict(use_cache=True, logits_to_keep=1)
            out = mdl(input_ids=x, attention_mask=mask, **kw)
            sync()
            t0 = time.perf_counter()
            for s in range(args.steps):
                mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype, device=dev)], 1)
                out = mdl(input_ids=nxt[:, s:s + 1].repeat(rep, 1), attention_mask=mask,
                          past_key_values=out.past_key_values, **kw)
            sync()
            return time.perf_counter() - t0

        def run_reversal():
            with rev.active():
                return run("plain")

        fns = {"plain": lambda: run("plain"), "prefix": lambda: run("prefix"), "reversal": run_reversal}
        for f in fns.values():  # warm up
            f()
        times = {k: [] for k in fns}
        for _ in range(args.decode_repeats):  # interleaved, so that load changes hit all three alike
            for k, f in fns.items():
                times[k].append(f() / args.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        bound = med["plain"] + med["prefix"]
        row = {"B": b, "prompt_len": args.prompt_len, "prefix_len": p, "steps": args.steps, "model": name,
               **{f"{k}_step_s": v for k, v in med.items()}, "samples_step_s": times,
               "reversal_over_plain_plus_prefix": med["reversal"] / bound, "reversal_over_plain": med["reversal"] / med["plain"]}
        rows.append(row)
        print(f"decode B={b:<3} step: plain {med['plain'] * 1e3:.2f} ms, prefix {med['prefix'] * 1e3:.2f} ms, reversal "
              f"{med['reversal'] * 1e3:.2f} ms -> reversal / (plain + prefix) = {row['reversal_over_plain_plus_prefix']:.3f}, "
              f"reversal / plain = {row['reversal_over_plain']:.2f}", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shapes", default="9x64,32x128", help="H x D of the op (default: SmolLM2, Llama-7B)")
    ap.add_argument("--batches", default="1,8,64,256", help="op batch sizes")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--skip-op", action="store_true")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--model", default=None, help="decode with this model (default: a random SmolLM2-shaped Llama)")
    ap.add_argument("--decode-batches", default=None, help="decode batch sizes (default: 1,8 on CPU, 1,8,32 on GPU)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps (default: 8 on CPU, 32 on GPU)")
    ap.add_argument("--decode-repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON file for the raw results")
    args = ap.parse_args(argv)
    dev = args.device
    args.decode_batches = args.decode_batches or ("1,8" if dev == "cpu" else "1,8,32")
    args.steps = args.steps or (8 if dev == "cpu" else 32)
    dtype = getattr(torch, args.dtype)
    # shorter GPU samples and more CPU samples than the other op benchmarks (decode-sized inputs)
    timer = (lambda fn: time_cuda(fn, rep=100)) if dev == "cuda" else (lambda fn: time_cpu(fn, args.repeats, max_factor=20))
    peak = measure_copy_bandwidth(rep=100) if dev == "cuda" else None
    info = env_info(dev, peak, dtype=args.dtype)
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    print(f"# reversal benchmark on {info['device']} ({dev}), torch {info['torch']}, {args.dtype}, {info['threads']} threads")
    result = {"info": info}
    if not args.skip_op:
        result["op"] = bench_op(args, dev, dtype, timer, peak)
    if not args.skip_decode:
        try:
            result["decode"] = bench_decode(args, dev, dtype)
        except ImportError as exc:  # transformers / tokenizers missing: keep the op numbers
            print(f"decode benchmark skipped: {exc}")
            result["decode_error"] = str(exc)
    save_results(result, "reversal", dev, args.out)


if __name__ == "__main__":
    main()
