"""Does a fused CMD contrastive loss pay? Times the loss (forward + backward) eager and under
``torch.compile`` (one fused kernel on CPU / GPU), side by side, and sets it against the time of a
whole CMD training step, taken from a ``detox cmd-train`` run's ``cmd_training.json``.

    python -m bench.bench_cmd_loss [--train-json OUT/cmd_training.json] [--hidden 576]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from detox.cmd.loss import contrastive_loss


def timeit(fn, reps):
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--negatives", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=576, help="SmolLM2-135M: 576")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--train-json", default=None, help="cmd_training.json of a real run (for the step time)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cmd-loss-cpu.json"))
    args = ap.parse_args()
    B, K, H, dev = args.batch, args.negatives, args.hidden, args.device
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(B, H, generator=g).to(dev).requires_grad_(), torch.randn(B, H, generator=g).to(dev).requires_grad_(),
               torch.randn(B, K, H, generator=g).to(dev).requires_grad_())
    mask = torch.ones(B, K, dtype=torch.bool, device=dev)
    mask[::2, 1:] = False
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def run(f):
        def step():
            f(a, p, n, mask).backward()
            sync()
        return step

    res = {"device": dev, "B": B, "K": K, "H": H, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine()}
    res["eager_s"] = timeit(run(contrastive_loss), args.reps)
    t0 = time.perf_counter()
    compiled = torch.compile(contrastive_loss, fullgraph=True)
    run(compiled)()
    res["compile_s"] = time.perf_counter() - t0
    res["compiled_s"] = timeit(run(compiled), args.reps)
    res["compiled_vs_eager"] = res["eager_s"] / res["compiled_s"]
    if args.train_json:
        h = json.load(open(args.train_json))["log_history"]
        end = [x for x in h if "train_runtime" in x][-1]
        steps = max(x.get("step", 0) for x in h)
        res["train_step_s"] = float(end["train_runtime"]) / steps
        res["loss_share_of_step_eager"] = res["eager_s"] / res["train_step_s"]
        res["train_json"] = args.train_json
    print(json.dumps(res, indent=1))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
