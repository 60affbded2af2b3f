"""SASA decoding speed: batched (one B x K candidate forward sharing each row's prefix cache)
against the public implementation's form (one sequence at a time, K copies of the cache), side
by side in one run, on the same prompts, with plain sampling for scale.

    python -m bench.bench_sasa_decode                           # CPU, embedded SmolLM2
    python -m bench.bench_sasa_decode --device cuda --batches 1,32,128 --max-new-tokens 20

Both SASA forms use ``outside="mask"`` (sample among the K candidates), so they run the same
algorithm (the tests check that they give the same greedy tokens). Reports tokens/s (new tokens
of all rows / wall time) and writes ``bench/results/sasa-decode-<device>-<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from detox.generation.sasa import SASADecoder
from detox.models import load_causal_lm
from detox.sasa import Subspace, resolve_subspace

from .common import HERE, git_commit
from .sasa_one_at_a_time import sasa_generate_one_at_a_time

FALLBACK_PROMPTS = ["You are such a", "The weather in London today is", "My neighbour's dog", "I can't believe you",
                    "People who live in the city", "The best thing about Mondays is", "He looked at me and said",
                    "Politicians these days"]


def prompts_for(path, n):
    texts = []
    if path and os.path.exists(path):
        from detox.data import read_prompts

        texts = [p.text for p in read_prompts(path, limit=n, seed=0)]
    while len(texts) < n:
        texts.append(FALLBACK_PROMPTS[len(texts) % len(FALLBACK_PROMPTS)])
    return texts[:n]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--subspace", default=None)
    ap.add_argument("--prompts", default=None,
                    help="a prompts file (JSONL, as `detox eval` reads); default: 8 built-in prompts")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--max-new-tokens", type=int, default=10)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--beta", type=float, default=10.0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--skip-one-at-a-time-above", type=int, default=1 << 30,
                    help="only time the one-at-a-time form on the first N rows of larger batches and scale")
    ap.add_argument("--random-weights", default=None, metavar="CONFIG_JSON",
                    help="build the model from this config with random weights (e.g. bench/configs/smollm2-135m.json, "
                         "for machines without the embedded assets); prompts are then random token ids of "
                         "--prompt-len tokens, and the subspace a random unit direction")
    ap.add_argument("--prompt-len", type=int, default=24)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    dtype = getattr(torch, args.dtype)
    if args.random_weights:
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(args.random_weights)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype).to(dev).eval()
        tok = None
        args.model = f"random weights, {os.path.basename(args.random_weights)}"
        w = torch.nn.functional.normalize(torch.randn(cfg.hidden_size), dim=0).to(dev)
        m = torch.zeros(cfg.hidden_size, device=dev)
    else:
        model, tok = load_causal_lm(args.model, dtype=dtype, device=dev)
        model.eval()
        sub = Subspace.load(resolve_subspace(args.subspace, args.model))
        w, m = sub.direction.to(dev), sub.midpoint.to(dev)
    pad_id = tok.pad_token_id if tok is not None else 0

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        fn(2)  # warm-up: two tokens (kernels, allocator), then one timed run
        sync()
        t0 = time.perf_counter()
        fn(args.max_new_tokens)
        sync()
        return time.perf_counter() - t0

    info = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "commit": git_commit(),
            "model": args.model, "dtype": args.dtype, "K": args.k, "beta": args.beta,
            "max_new_tokens": args.max_new_tokens, "attn_implementation": getattr(model.config, "_attn_implementation", None)}
    print(f"# SASA decoding on {info['device']} ({dev}), {args.model} {args.dtype}, K={args.k}, "
          f"{args.max_new_tokens} new tokens, {info['threads']} threads")
    rows = []
    dec = SASADecoder(model, w, m, beta=args.beta, max_candidates=args.k, outside="mask")
    for b in [int(s) for s in args.batches.split(",")]:
        if tok is None:
            g = torch.Generator().manual_seed(b)
            ids = torch.randint(10, model.config.vocab_size, (b, args.prompt_len), generator=g)
            enc = {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev)}
        else:
            enc = tok(prompts_for(args.prompts, b), return_tensors="pt", padding=True).to(dev)
        n_new = b * args.max_new_tokens
        kw = dict(do_sample=True, top_p=0.9, pad_token_id=pad_id,
                  eos_token_id=[])  # fixed length, so every form makes the same number of tokens

        def plain(n):
            torch.manual_seed(0)
            model.generate(**enc, do_sample=True, top_p=0.9, top_k=0, max_new_tokens=n, min_new_tokens=n,
                           pad_token_id=pad_id)

        def batched(n):
            torch.manual_seed(0)
            dec.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=n, **kw)

        n_one = min(b, args.skip_one_at_a_time_above)

        def one(n):
            torch.manual_seed(0)
            sasa_generate_one_at_a_time(model, enc["input_ids"][:n_one], enc["attention_mask"][:n_one], w, m,
                                        beta=args.beta, max_candidates=args.k, max_new_tokens=n, **kw)

        t = {"plain": timed(plain), "sasa-batched": timed(batched)}
        t["sasa-one-at-a-time"] = timed(one) * (b / n_one)
        tps = {k: n_new / v for k, v in t.items()}
        for k, v in t.items():
            rows.append({"B": b, "impl": k, "seconds": v, "tokens_per_s": tps[k],
                         "one_at_a_time_rows_timed": n_one if k == "sasa-one-at-a-time" else b})
        print(f"B={b:<4} plain {tps['plain']:8.1f} tok/s | SASA batched {tps['sasa-batched']:8.1f} tok/s | "
              f"SASA one-at-a-time {tps['sasa-one-at-a-time']:8.1f} tok/s | batched / one-at-a-time "
              f"{tps['sasa-batched'] / tps['sasa-one-at-a-time']:.2f}x | SASA batched / plain "
              f"{t['plain'] / t['sasa-batched']:.2f}", flush=True)
    path = args.out or os.path.join(HERE, "results", f"sasa-decode-{dev}-{platform.node() or 'host'}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
