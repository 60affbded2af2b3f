"""The evaluation harness against a plain HuggingFace ``pipeline`` loop (the papers' way).

    python -m bench.bench_eval --prompts 16 --num-samples 4

Both generate N continuations of each prompt with the same settings (top-p 0.9, T = 1,
M new tokens, plain sampling) with the same model and score them with the same scorer:
- ``pipeline``: ``pipeline("text-generation")`` called prompt by prompt with
  ``num_return_sequences=N``, then the N continuations scored;
- ``harness``: ``detox.generation.driver.Generator`` over batches of prompts x N rows (left
  padding), one scorer call for everything.
Reported: prompts per second of each, and the ratio, measured side by side in one run. Raw
numbers go to bench/results/eval-<device>-<host>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16, help="number of embedded held-out RTP prompts")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16, help="harness: prompts per generate call")
    ap.add_argument("--scorer", default="jigsaw")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from transformers import pipeline

    from detox.generation.driver import Generator
    from detox.models import load_causal_lm
    from detox.scorers import load_scorer
    from detox.toxic import embedded_prompts

    model, tok = load_causal_lm(args.model)
    scorer = load_scorer(args.scorer)
    prompts = [p.text for p in embedded_prompts("heldout")[: args.prompts]]
    n, m = args.num_samples, args.max_new_tokens

    pipe = pipeline("text-generation", model=model, tokenizer=tok, device=model.device)
    pipe(prompts[0], max_new_tokens=2, do_sample=True, return_full_text=False)  # warm up
    torch.manual_seed(0)
    t0 = time.perf_counter()
    pipe_scores = []
    for p in prompts:
        outs = pipe(p, num_return_sequences=n, max_new_tokens=m, do_sample=True, top_p=0.9, top_k=0,
                    temperature=1.0, return_full_text=False, pad_token_id=tok.pad_token_id)
        pipe_scores.append(list(scorer.score([o["generated_text"] for o in outs])))
    t_pipe = time.perf_counter() - t0

    gen = Generator("none", model=(model, tok))
    gen.generate_batch(prompts[:1], max_new_tokens=2)  # warm up
    t0 = time.perf_counter()
    conts = []
    for s in range(0, len(prompts), args.batch_size):
        conts += gen.generate_batch(prompts[s:s + args.batch_size], num_samples=n, max_new_tokens=m, top_p=0.9,
                                    seed=s)
    flat = [c for cs in conts for c in cs]
    harness_scores = list(scorer.score(flat))
    t_harness = time.perf_counter() - t0

    res = {"info": {"device": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "model": args.model, "scorer": args.scorer, "prompts": len(prompts), "num_samples": n,
                    "max_new_tokens": m, "batch_size": args.batch_size},
           "pipeline_s": t_pipe, "harness_s": t_harness,
           "pipeline_prompts_per_s": len(prompts) / t_pipe, "harness_prompts_per_s": len(prompts) / t_harness,
           "speedup": t_pipe / t_harness,
           "mean_toxicity": {"pipeline": sum(map(sum, pipe_scores)) / (len(prompts) * n),
                             "harness": sum(harness_scores) / len(harness_scores)}}
    print(f"pipeline loop: {res['pipeline_prompts_per_s']:.3f} prompts/s   harness: {res['harness_prompts_per_s']:.3f} "
          f"prompts/s   harness speed-up: {res['speedup']:.2f}x  ({len(prompts)} prompts x {n} samples x {m} tokens)")
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    f"eval-cpu-{platform.node() or 'host'}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
