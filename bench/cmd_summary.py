"""Collect a CMD experiment into one JSON file and a Markdown table.

The pieces come from the ordinary commands (see the README's CMD section):
``detox cmd-synthesize`` (its summary.json), ``detox cmd-train`` (each arm's cmd_training.json) and
``detox eval --methods cmd`` (each arm's results.json and generations), plus the untrained
baseline from a ``detox eval --methods none`` run with the same prompts, samples, batch size and
seeds. Example::

    python -m bench.cmd_summary --synthesis runs/synth/summary.json \\
        --baseline bench/results/rtp-dev-none-vs-reversal.json \\
        --arm cmd=runs/eval-cmd,runs/cmd --arm cmd_no_contrastive=runs/eval-nocl,runs/nocl \\
        --arm untrained_guided_chain=runs/eval-untrained-chain \\
        --out bench/results/cmd-rtp-dev.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os


from detox.cmd.chain import parse_chain

METRICS = ("emt", "tp", "tp_rate", "ppl", "dist1", "dist2", "dist3")


def _chain_stats(eval_dir: str) -> tuple[dict, list[str]]:
    rows = [json.loads(line) for f in sorted(glob.glob(os.path.join(eval_dir, "generations", "*.jsonl")))
            for line in open(f, encoding="utf-8")]
    chains = [c for r in rows for c in r.get("chains", [])]
    conts = [c for r in rows for c in r["continuations"]]
    ps = [parse_chain(c) for c in chains]
    texts = [c.split(" # Let's detoxify", 1)[0].removeprefix("# Text: ").strip() for c in chains]
    return {"rows": len(ps), "said_toxic": sum(p.toxic is True for p in ps),
            "empty_masked_step": sum(p.toxic is True and not p.masked for p in ps),
            "masked_step_has_mask": sum(bool(p.masked) and "[MASK]" in p.masked for p in ps),
            "cleaned_text_differs_from_prompt": sum(p.filled is not None and p.filled.strip() != t
                                                    for p, t in zip(ps, texts)),
            "generation_mentions_toxic_or_detox": sum(("toxic" in c.lower() or "detox" in c.lower()) for c in conts),
            "mean_generation_words": round(sum(len(c.split()) for c in conts) / max(1, len(conts)), 2)}, chains


def _eval_seconds(results, eval_dir):
    """The evaluation's wall time: run.json (results.json held it before it held only results)."""
    if "seconds" in results:
        return results["seconds"]
    path = os.path.join(eval_dir, "run.json")
    return json.load(open(path))["seconds"] if os.path.exists(path) else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthesis", required=True, help="cmd-synthesize summary.json")
    ap.add_argument("--baseline", required=True, help="results.json of `detox eval --methods none` (the untrained model)")
    ap.add_argument("--arm", action="append", required=True, metavar="NAME=EVAL_DIR[,TRAIN_DIR]",
                    help="an evaluated CMD model: its `detox eval` output directory and its `detox cmd-train` "
                         "directory (none for the untrained model given the chain)")
    ap.add_argument("--out", required=True, help="output JSON (a .md table is written beside it)")
    args = ap.parse_args(argv)

    base = json.load(open(args.baseline))
    out = {"what": "CMD on RTP dev: the untrained model (plain sampling) against CMD-trained models",
           "eval_config": {k: base["config"].get(k) for k in ("prompts", "limit", "num_samples", "max_new_tokens",
                                                               "top_p", "seeds", "batch_size")},
           "baseline_untrained_none": {"source": args.baseline, "summary": base["methods"]["none"]["summary"]},
           "synthesis": json.load(open(args.synthesis)), "arms": {}}
    for spec in args.arm:
        name, _, dirs = spec.partition("=")
        eval_dir, _, train_dir = dirs.partition(",")
        r = json.load(open(os.path.join(eval_dir, "results.json")))
        for k in ("prompts", "limit", "num_samples", "max_new_tokens", "top_p", "seeds", "batch_size"):
            if r["config"].get(k) != base["config"].get(k):
                raise SystemExit(f"error: {name}: {k} = {r['config'].get(k)!r} but the baseline has "
                                 f"{base['config'].get(k)!r}: not comparable")
        training = None
        if train_dir:
            t = json.load(open(os.path.join(train_dir, "cmd_training.json")))
            hist = [h for h in t["log_history"] if "lm_loss" in h]
            training = {"config": t["config"], "samples": t["samples"], "with_negatives": t["with_negatives"],
                        "lm_loss": [h["lm_loss"] for h in hist],
                        "contrastive_loss": [h["contrastive_loss"] for h in hist],
                        "train_runtime_s": [h for h in t["log_history"] if "train_runtime" in h][-1]["train_runtime"]}
        stats, chains = _chain_stats(eval_dir)
        out["arms"][name] = {
            "summary": r["methods"]["cmd"]["summary"], "runs": r["methods"]["cmd"]["runs"],
            "per_prompt_max_toxicity": r.get("per_prompt_max_toxicity", {}).get("cmd"),
            "settings": r["methods"]["cmd"]["settings"],
            "eval_seconds": _eval_seconds(r, eval_dir), "chain_stats": stats, "training": training,
            "example_chains": chains[:6]}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)

    def cell(s, m):
        v = s[m]
        return f"{v['mean']:.3f} ± {v['std']:.3f}" if m in ("emt", "tp", "tp_rate") else f"{v['mean']:.3f}" \
            if m.startswith("dist") else f"{v['mean']:.1f}"

    lines = ["| model | EMT ↓ | TP ↓ | toxic rate ↓ | PPL ↓ | Dist-1 | Dist-2 | Dist-3 |", "|---|---|---|---|---|---|---|---|"]
    for name, s in [("untrained (plain sampling)", out["baseline_untrained_none"]["summary"])] + \
            [(a, v["summary"]) for a, v in out["arms"].items()]:
        lines.append(f"| {name} | " + " | ".join(cell(s, m) for m in METRICS) + " |")
    table = "\n".join(lines)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md, "w", encoding="utf-8") as f:
        f.write(f"# {out['what']}\n\n{json.dumps(out['eval_config'])}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
