"""Generation throughput of plain sampling, SoCD, CD and DExperts inside HuggingFace generate.

    python -m bench.bench_generate                       # embedded SmolLM2 + its toxic model
    python -m bench.bench_generate --model M --toxic-model T --batches 1,8,32 --tokens 32

For every method and batch size: tokens per second (new tokens of all rows over wall time),
and the share of each step spent outside the model forwards (processors, the SoCD op,
sampling, generate's own bookkeeping) measured with forward hooks on every model. Raw
numbers go to bench/results/generate-<device>-<host>.json. On a CPU, compare methods within
one run (ratios); absolute numbers only from a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import torch



class ForwardClock:
    """Accumulates the wall time spent inside the forwards of the given modules."""

    def __init__(self, modules, sync):
        self.total = 0.0
        self.sync = sync
        self._t = {}
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, mod, args):
        self.sync()
        self._t[id(mod)] = time.perf_counter()

    def _post(self, mod, args, out):
        self.sync()
        self.total += time.perf_counter() - self._t.pop(id(mod))

    def remove(self):
        for h in self.handles:
            h.remove()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--toxic-model", default=None, help="default: the embedded toxic SmolLM2 (made if missing)")
    ap.add_argument("--methods", default="none,socd,cd,dexperts")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=24, help="new tokens per row")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from detox.generation.driver import Generator
    from detox.models import load_causal_lm
    from detox.toxic import resolve_toxic_model

    dev = args.device
    base = load_causal_lm(args.model, device=dev)
    toxic = load_causal_lm(args.toxic_model or resolve_toxic_model(None), device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    prompt_pool = ["The city council met on Tuesday to discuss", "You are such a", "My favourite recipe uses",
                   "When the game ended, the fans", "I can't believe that people still", "The report says that"]
    rows = []
    for b in [int(s) for s in args.batches.split(",")]:
        prompts = [prompt_pool[i % len(prompt_pool)] for i in range(b)]
        for method in args.methods.split(","):
            gen = Generator(method, model=base, toxic_model=toxic if method != "none" else None, device=dev)
            mods = [base[0]] + ([toxic[0]] if method != "none" else [])
            gen.generate_batch(prompts[:1], max_new_tokens=2, seed=0)  # warm up
            walls, fwds = [], []
            for r in range(args.repeats):
                clock = ForwardClock(mods, sync)
                sync()
                t0 = time.perf_counter()
                gen.generate_batch(prompts, max_new_tokens=args.tokens, seed=r, num_samples=1)
                sync()
                walls.append(time.perf_counter() - t0)
                fwds.append(clock.total)
                clock.remove()
            wall, fwd = statistics.median(walls), statistics.median(fwds)
            row = {"method": method, "batch": b, "new_tokens": args.tokens, "wall_s": wall, "forward_s": fwd,
                   "tokens_per_s": b * args.tokens / wall, "outside_forward_share": max(0.0, 1 - fwd / wall),
                   "samples_wall_s": walls, "samples_forward_s": fwds}
            rows.append(row)
            print(f"B={b:<3} {method:<9} {row['tokens_per_s']:8.1f} tok/s   outside the forwards: "
                  f"{100 * row['outside_forward_share']:5.1f} % of the step", flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:  # noqa: BLE001
        commit = None
    info = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "model": args.model, "toxic_model": args.toxic_model or "embedded",
            "commit": commit}
    path = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                    f"generate-{dev}-{platform.node() or 'host'}.json")
    with open(path, "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
