"""``detox rewrite`` throughput: texts per hour and the share of time in generation, toxicity
scoring and embedding, per mode, on the embedded models; and the gain of prefilling each prompt
once per text instead of once per candidate (measured side by side in one run).

    python -m bench.bench_rewrite --data TEXTS.jsonl               # 16 texts, modes prompt and socd
    python -m bench.bench_rewrite --data TEXTS.jsonl --texts 32 --modes prompt,cd,socd --temperatures 0.6,0.8,1.0,1.2,1.5 --samples 2
    python -m bench.bench_rewrite --collect /tmp/hspd_measure      # gather detox-rewrite summaries (README table)

Raw numbers go to bench/results/rewrite-<device>.json (or rewrite-dghs-sample-<device>.json
for --collect). On a CPU, compare within one run; the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

def device_name():
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu-{os.cpu_count()}cores"


def collect(folder: str, out: str) -> None:
    rows = {}
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name, "summary.json") if os.path.isdir(os.path.join(folder, name)) else None
        if p and os.path.exists(p):
            s = json.load(open(p))
            rows[s["config"]["mode"]] = {k: s[k] for k in (
                "texts", "counts", "malformed", "mean_toxicity_before", "mean_toxicity_after", "toxic_share_before",
                "toxic_share_after", "mean_similarity", "chosen_temperatures", "time_shares", "timing_seconds",
                "texts_this_run", "seconds_this_run", "config", "input")}
    json.dump({"device": device_name(), "host": platform.node(), "runs": rows}, open(out, "w"), indent=1)
    print("| mode | texts | mean toxicity before | after | share > 0.5 before | after | mean similarity |")
    print("|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r['texts']} | {r['mean_toxicity_before']:.3f} | {r['mean_toxicity_after']:.3f} | "
              f"{r['toxic_share_before']:.3f} | {r['toxic_share_after']:.3f} | {r['mean_similarity']:.3f} |")
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=int, default=16)
    ap.add_argument("--modes", default="prompt,socd")
    ap.add_argument("--temperatures", default="0.7,1.0")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", default=None, help="the corpus to rewrite (JSONL, e.g. DGHS texts); needed unless --collect")
    ap.add_argument("--collect", default=None, help="a folder of detox-rewrite work dirs (*.hspd) to summarise")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if args.collect:
        collect(args.collect, args.out or os.path.join(HERE, "results", f"rewrite-dghs-sample-{dev}.json"))
        return
    if not args.data:
        ap.error("--data is required (the corpus to rewrite)")
    from detox.rewrite import RewriteConfig, Rewriter
    from detox.rewrite.corpus import iter_records
    from detox.rewrite.rank import TextEmbedder
    from detox.scorers import load_scorer

    recs = []
    for r in iter_records(args.data):
        recs.append((r.index, r.line, r.text))
        if len(recs) >= args.texts:
            break
    scorer, embedder = load_scorer(None), TextEmbedder(None, device=dev)
    temps = [float(t) for t in args.temperatures.split(",")]
    results = {"device": device_name(), "host": platform.node(), "threads": torch.get_num_threads(),
               "texts": len(recs), "temperatures": temps, "samples_per_temperature": args.samples,
               "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "modes": {}}
    for mode in args.modes.split(","):
        cfg = RewriteConfig(mode=mode, temperatures=temps, samples_per_temperature=args.samples,
                            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        rw = Rewriter(cfg, device=dev, scorer=scorer, embedder=embedder)
        rw.rewrite(recs[:2])  # warm-up
        row = {}
        for shared in (True, False):
            rw.shared_prefill = shared
            rw.timing = dict.fromkeys(rw.timing, 0.0)
            t0 = time.perf_counter()
            for s in range(0, len(recs), args.batch_size):
                rw.rewrite(recs[s:s + args.batch_size])
            wall = time.perf_counter() - t0
            tot = sum(rw.timing.values())
            row["shared_prefill" if shared else "prefill_per_candidate"] = {
                "seconds": wall, "texts_per_hour": len(recs) / wall * 3600,
                "shares": {k: v / tot for k, v in rw.timing.items()}, "timing": dict(rw.timing)}
            print(f"{mode:6s} {'shared prefill' if shared else 'per-candidate prefill':22s} {len(recs) / wall * 3600:8.0f} "
                  f"texts/h  " + "  ".join(f"{k} {v / tot:.0%}" for k, v in rw.timing.items()), flush=True)
        row["shared_prefill_speedup"] = row["prefill_per_candidate"]["seconds"] / row["shared_prefill"]["seconds"]
        results["modes"][mode] = row
        if not args.out:
            pass
    out = args.out or os.path.join(HERE, "results", f"rewrite-{dev}.json")
    json.dump(results, open(out, "w"), indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
