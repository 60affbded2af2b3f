"""Seconds per method of `detox demo`'s generation, on the embedded models and real held-out RTP
prompts, so that the demo's size (prompts x samples x tokens) can be chosen for a time budget.

    python -m bench.bench_demo_methods [--limit 32] [--num-samples 4] [--max-new-tokens 20] \
        [--batch-size 16] [--methods none,socd,cd,dexperts,sasa,reversal] [--out FILE]

Times, per method, building the generator (loading its extra state: SASA's subspace, the
reversal's negative-prefix pass set-up) and generating every batch; then the scorer and the
perplexity pass over all continuations. Writes JSON (default
``bench/results/demo-methods-cpu-<host>.json``) and prints a table. On a shared machine the times
are upper bounds: run it on an idle one for the numbers to quote. The process's CPU seconds
(``*_cpu_s``, all threads together) are recorded too: on a busy machine they are the better guide
(on T idle cores the wall time is at least CPU / T).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bench.common import env_info, save_results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--methods", default="none,socd,cd,dexperts,sasa,reversal")
    ap.add_argument("--toxic-model", default=None,
                    help="the toxic model (default: the embedded one, made if not cached); its weights do not change "
                         "the time, so 'smollm2-135m-instruct' itself times the contrastive methods without making it")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from detox import metrics as M
    from detox.generation.driver import Generator, batch_seed
    from detox.harness import EvalConfig, load_prompt_texts
    from detox.models import load_causal_lm
    from detox.scorers import default_scorer
    from detox.toxic import resolve_toxic_model

    from detox import methods as registry

    t0 = time.perf_counter()
    base = load_causal_lm("smollm2-135m-instruct")
    toxic = None
    if registry.needs_toxic(args.methods.split(",")):
        toxic = load_causal_lm(args.toxic_model or resolve_toxic_model(None))
    t_load = time.perf_counter() - t0
    prompts, desc = load_prompt_texts(EvalConfig(limit=args.limit))
    rows = {}
    all_conts = {}
    for method in args.methods.split(","):
        t0, c0 = time.perf_counter(), time.process_time()
        gen = Generator(method, model=base, toxic_model=toxic, model_name="smollm2-135m-instruct",
                        toxic_name="smollm2-135m-instruct-toxic")
        t_setup, c_setup = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        conts = []
        for bi, s in enumerate(range(0, len(prompts), args.batch_size)):
            conts += gen.run_batch(prompts[s:s + args.batch_size], num_samples=args.num_samples,
                                   max_new_tokens=args.max_new_tokens, seed=batch_seed(0, bi)).texts
        t_gen, c_gen = time.perf_counter() - t0, time.process_time() - c0
        all_conts[method] = conts
        rows[method] = {"setup_s": t_setup, "generate_s": t_gen, "setup_cpu_s": c_setup, "generate_cpu_s": c_gen}
        print(f"{method:10s} setup {t_setup:6.1f} s ({c_setup:6.1f} s CPU)  generate {t_gen:7.1f} s "
              f"({c_gen:7.1f} s CPU)", flush=True)
    t0 = time.perf_counter()
    scorer = default_scorer()
    t_scorer_load = time.perf_counter() - t0
    for method, conts in all_conts.items():
        flat = [c for cs in conts for c in cs]
        t0 = time.perf_counter()
        scorer.score(flat)
        t_score = time.perf_counter() - t0
        t0 = time.perf_counter()
        M.sample_nll(base[0], base[1], [p for p, cs in zip(prompts, conts) for _ in cs], flat)
        t_ppl = time.perf_counter() - t0
        rows[method].update(score_s=t_score, ppl_s=t_ppl)
    result = {"what": "detox demo per-method time", "prompts": desc, "num_samples": args.num_samples,
              "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "load_models_s": t_load,
              "load_scorer_s": t_scorer_load, "toxic_model": args.toxic_model or "embedded", "methods": rows,
              "env": env_info("cpu", load_average_1_5_15=os.getloadavg(), cpu_count=os.cpu_count())}
    print(f"\n{'method':10s} {'setup':>7s} {'generate':>9s} {'score':>7s} {'ppl':>7s}   (seconds; "
          f"{len(prompts)} prompts x {args.num_samples} x {args.max_new_tokens} tokens, {torch.get_num_threads()} threads)")
    for m, r in rows.items():
        print(f"{m:10s} {r['setup_s']:7.1f} {r['generate_s']:9.1f} {r['score_s']:7.2f} {r['ppl_s']:7.1f}")
    save_results(result, "demo-methods", "cpu", args.out)


if __name__ == "__main__":
    main()
