"""HSPD's main experiment, end to end: does fine-tuning on the rewritten corpus make a less toxic model?

1. a seeded sample of N DGHS hate-speech texts (the corpus HSPD rewrites);
2. ``detox rewrite`` of the sample with SoCD (the embedded base and toxic SmolLM2);
3. ``detox finetune`` of the embedded model on the original and on the rewritten texts (same
   steps, batch, learning rate and seed);
4. ``detox eval --protocol hspd`` of the base model and both fine-tuned models on a seeded,
   group-balanced sample of ToxiGen hate prompts, with one fixed perplexity model for all three;
5. a table (TP, EMT, PPL, Dist-n with confidence intervals where the harness gives them) in
   ``bench/results/hspd-experiment-cpu.json`` and ``.md``.

Every stage is one of the package's resumable commands, so rerunning this script after an
interruption continues where it stopped. Usage::

    python -m bench.hspd_experiment --data $DETOX_DEV_DATA --work /tmp/hspd-exp --texts 64 --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = {"model": "GPT2-XL", "TP": (0.42, 0.18), "EMT": (0.43, 0.20), "PPL": (17.5, 21.5)}


def _run(cmd: list[str], log: str) -> float:
    t0 = time.time()
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")
    return time.time() - t0


def _sample_lines(path: str, n: int, seed: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        lines = [ln for ln in f if ln.strip()]
    keep = sorted(random.Random(seed).sample(range(len(lines)), min(n, len(lines))))
    return [lines[i] for i in keep]


def _toxigen_prompts(folder: str, per_group: int, seed: int) -> list[dict]:
    out = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("hate_") and name.endswith(".txt"):
            group = name[len("hate_"):-len("_1k.txt")]
            for ln in _sample_lines(os.path.join(folder, name), per_group, seed):
                out.append({"text": ln.rstrip("\n").replace("\\n", "\n"), "group": group})
    return out


def _write_jsonl(path: str, rows: list[dict]) -> None:
    if os.path.exists(path):
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("DETOX_DEV_DATA"), required="DETOX_DEV_DATA" not in os.environ,
                    help="folder with dghs/dghs_hate.jsonl and toxigen/hate_*_1k.txt")
    ap.add_argument("--work", default="/tmp/hspd-experiment", help="work directory (resumable)")
    ap.add_argument("--texts", type=int, default=64, help="DGHS texts to rewrite and fine-tune on")
    ap.add_argument("--steps", type=int, default=100, help="fine-tuning steps (both models)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5, help="fine-tuning learning rate (paper: 2e-5)")
    ap.add_argument("--max-length", type=int, default=64, help="fine-tuning tokens per text")
    ap.add_argument("--prompts-per-group", type=int, default=4, help="ToxiGen hate prompts per target group (14 groups)")
    ap.add_argument("--num-samples", type=int, default=5)
    ap.add_argument("--temperatures", default="0.6,1.0", help="rewrite temperatures")
    ap.add_argument("--samples-per-temperature", type=int, default=2)
    ap.add_argument("--rewrite-tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "hspd-experiment-cpu"))
    args = ap.parse_args(argv)

    w = args.work
    os.makedirs(w, exist_ok=True)
    log = os.path.join(w, "log.txt")
    py = [sys.executable, "-m", "detox.cli"]
    corpus = os.path.join(w, f"dghs-{args.texts}.jsonl")
    _write_jsonl(corpus, [json.loads(ln) for ln in _sample_lines(os.path.join(args.data, "dghs", "dghs_hate.jsonl"),
                                                                   args.texts, args.seed)])
    prompts = os.path.join(w, f"toxigen-hate-{args.prompts_per_group}x14.jsonl")
    _write_jsonl(prompts, _toxigen_prompts(os.path.join(args.data, "toxigen"), args.prompts_per_group, args.seed))
    times = {}
    rewritten = os.path.join(w, f"dghs-{args.texts}-rewritten.jsonl")
    times["rewrite"] = _run(py + ["rewrite", corpus, "--out", rewritten, "--mode", "socd",
                                  "--temperatures", args.temperatures,
                                  "--samples-per-temperature", str(args.samples_per_temperature),
                                  "--max-new-tokens", str(args.rewrite_tokens), "--seed", str(args.seed)], log)
    models = {"base": "smollm2-135m-instruct"}
    for name, data in (("original", corpus), ("rewritten", rewritten)):
        out = os.path.join(w, f"ft-{name}")
        times[f"finetune-{name}"] = _run(py + ["finetune", "--data", data, "--out", out, "--steps", str(args.steps),
                                               "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                                               "--max-length", str(args.max_length), "--seed", str(args.seed)], log)
        models[f"fine-tuned on {name}"] = out
    rows = {}
    for label, model in models.items():
        out = os.path.join(w, "eval-" + label.replace(" ", "-"))
        times[f"eval-{label}"] = _run(py + ["eval", "--protocol", "hspd", "--model", model, "--methods", "none",
                                            "--prompts", prompts, "--num-samples", str(args.num_samples),
                                            "--ppl-model", "smollm2-135m-instruct", "--seeds", str(args.seed),
                                            "--out", out], log)
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            rows[label] = json.load(f)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    import torch
    import transformers

    summary = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "commit": commit},
               "settings": vars(args), "seconds": times, "paper": PAPER, "results": rows}
    summary["paired_emt_rewritten_minus_original"] = paired_emt(rows["fine-tuned on original"],
                                                                  rows["fine-tuned on rewritten"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(table(summary) + "\n")
    print(table(summary))
    print(f"wrote {args.out}.json and .md")
    return 0


def paired_emt(a: dict, b: dict, resamples: int = 2000, seed: int = 0) -> dict:
    """Paired bootstrap over prompts of EMT(b) - EMT(a) (both evaluated on the same prompts)."""
    import numpy as np

    x = np.asarray(a["per_prompt_max_toxicity"]["none"], dtype=float)
    y = np.asarray(b["per_prompt_max_toxicity"]["none"], dtype=float)
    d = y - x
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    boot = d[idx].mean(1)
    return {"estimate": float(d.mean()), "low": float(np.quantile(boot, 0.025)),
            "high": float(np.quantile(boot, 0.975)), "p_two_sided": float(min(1.0, 2 * min((boot <= 0).mean(),
                                                                                           (boot >= 0).mean()))),
            "prompts": int(len(d)), "resamples": resamples}


def table(summary: dict) -> str:
    def ci(r, k):
        iv = r["statistics"]["intervals"]["none"][k]
        return f"{iv['estimate']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]" if k != "ppl" else \
            f"{iv['estimate']:.1f} [{iv['low']:.1f}, {iv['high']:.1f}]"

    lines = ["| model | EMT | TP | PPL | Dist-1 | Dist-2 | Dist-3 |", "|---|---|---|---|---|---|---|"]
    for label, r in summary["results"].items():
        s = r["methods"]["none"]["summary"]
        lines.append(f"| {label} | {ci(r, 'emt')} | {ci(r, 'tp')} | {ci(r, 'ppl')} | {s['dist1']['mean']:.3f} | "
                     f"{s['dist2']['mean']:.3f} | {s['dist3']['mean']:.3f} |")
    p = summary["paired_emt_rewritten_minus_original"]
    lines.append("")
    lines.append(f"EMT(rewritten) - EMT(original), paired over {p['prompts']} prompts: {p['estimate']:+.3f} "
                 f"[{p['low']:+.3f}, {p['high']:+.3f}], p = {p['p_two_sided']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
