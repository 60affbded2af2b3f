"""``detox eval --engine ray`` scaling: prompts per second with one process (``--engine local``) and
with 1, 2, ... Ray workers on a local cluster, on the embedded model (SmolLM2-135M-Instruct), the
embedded held-out RTP prompts and the offline Jigsaw scorer; every run in a fresh process and a
fresh output directory (nothing cached), each actor on one thread.

    python -m bench.bench_eval_ray                                   # 24 prompts x 4 samples x 20 tokens, workers 1,2
    python -m bench.bench_eval_ray --prompts 96 --workers 1,2,4 --methods none,socd

Two rates per run: end to end (the command's wall time: model loading, Ray's start, the actors'
start and the work) and, for Ray, the shards' job alone (``run.json``'s ``work_seconds``: from its
submission, the actors' start and model loading included, to the last shard; the cluster's start
and the probe of the methods' settings before it are ``start_seconds`` and ``probe_seconds``). Also checks that every run wrote the same
``results.json`` bytes. Raw numbers: ``bench/results/eval-ray-<device>.json`` and a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _run(argv, env):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "detox.cli", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv)} failed:\n{p.stderr[-3000:]}")
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24, help="held-out RTP prompts (default: 24)")
    ap.add_argument("--num-samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4, help="prompts per shard (default: 4)")
    ap.add_argument("--methods", default="none")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts (default: 1,2)")
    ap.add_argument("--no-local", action="store_true", help="skip the --engine local run")
    ap.add_argument("--note", default="", help="recorded with the results (e.g. 'shared machine')")
    ap.add_argument("--out", default=None, help="results JSON (default: bench/results/eval-ray-<device>.json)")
    args = ap.parse_args()

    import torch

    dev = "gpu" if torch.cuda.is_available() else "cpu"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python"), os.environ.get("PYTHONPATH", "")]))
    base = ["eval", "--methods", args.methods, "--limit", str(args.prompts), "--num-samples", str(args.num_samples),
            "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size), "--seeds", args.seeds,
            "--scorer", "jigsaw"]
    n_work = args.prompts * len(args.methods.split(",")) * len(args.seeds.split(","))
    configs = ([("local", 1)] if not args.no_local else []) + [("ray", int(w)) for w in args.workers.split(",")]
    tmp = tempfile.mkdtemp(prefix="bench-eval-ray-")
    rows, results_bytes = [], {}
    try:
        for engine, w in configs:
            out = os.path.join(tmp, f"{engine}-{w}")
            extra = ["--engine", "ray", "--ray-workers", str(w)] if engine == "ray" else []
            wall = _run(base + ["--out", out] + extra, env)
            run = json.load(open(os.path.join(out, "run.json")))
            results_bytes[(engine, w)] = open(os.path.join(out, "results.json"), "rb").read()
            row = {"engine": engine, "workers": w, "prompts_x_methods_x_seeds": n_work, "wall_s": wall,
                   "prompts_per_s_end_to_end": n_work / wall, "eval_seconds": run["seconds"]}
            if engine == "ray":
                row.update({k: run[k] for k in ("ray_seconds", "start_seconds", "probe_seconds", "work_seconds",
                                                "shards", "actor_seconds")},
                           prompts_per_s_in_ray=n_work / run["work_seconds"])
            else:
                row["prompts_per_s_in_ray"] = None
            rows.append(row)
            print(f"{engine:5s} workers {w}: {wall:6.1f} s end to end, {n_work / wall:.3f} prompts/s"
                  + (f"; shards' job {run['work_seconds']:.1f} s, {n_work / run['work_seconds']:.3f} prompts/s"
                     if engine == "ray" else ""), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    same = len(set(results_bytes.values())) == 1
    import transformers

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    sys.path.insert(0, ROOT)
    from bench.common import git_commit

    res = {"what": "detox eval prompts/s, --engine local and --engine ray with N local workers",
           "device": torch.cuda.get_device_name(0) if dev == "gpu" else f"cpu ({os.cpu_count()} cores)",
           "host": platform.node(), "commit": git_commit(), "torch": torch.__version__,
           "transformers": transformers.__version__, "ray": ray_version, "note": args.note,
           "load_average_at_end": os.getloadavg(),
           "settings": {"model": "smollm2-135m-instruct", "prompts": args.prompts, "num_samples": args.num_samples,
                        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                        "methods": args.methods, "seeds": args.seeds, "scorer": "jigsaw",
                        "threads_per_process": 1},
           "results_json_identical": same, "rows": rows}
    path = args.out or os.path.join(HERE, "results", f"eval-ray-{dev}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print()
    print("| engine | workers | wall s | prompts/s end to end | prompts/s, shards' job |")
    print("|---|---|---|---|---|")
    for r in rows:
        inray = f"{r['prompts_per_s_in_ray']:.3f}" if r["prompts_per_s_in_ray"] else "—"
        print(f"| {r['engine']} | {r['workers']} | {r['wall_s']:.1f} | {r['prompts_per_s_end_to_end']:.3f} | {inray} |")
    print(f"results.json identical across runs: {same}")
    _plot(res, os.path.splitext(path)[0] + ".png")
    print(f"raw results: {path}")


def _plot(res, png):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    rows = [r for r in res["rows"] if r["engine"] == "ray"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["workers"] for r in rows], [r["prompts_per_s_end_to_end"] for r in rows], "o-", label="ray, end to end")
    ax.plot([r["workers"] for r in rows], [r["prompts_per_s_in_ray"] for r in rows], "s-", label="ray, shards' job")
    for r in res["rows"]:
        if r["engine"] == "local":
            ax.axhline(r["prompts_per_s_end_to_end"], color="gray", ls="--", label="local (one process)")
    ax.set_xlabel("Ray workers")
    ax.set_ylabel("prompts / s")
    ax.set_xticks([r["workers"] for r in rows])
    ax.set_title(f"detox eval on {res['device']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"plot: {png}")


if __name__ == "__main__":
    main()
