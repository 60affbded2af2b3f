"""``--engine ray``: the same shards through Ray Data ``map_batches`` with an actor pool.

Each actor loads the models once and rewrites one shard per call (the same ``Rewriter.rewrite``
as the local engine, on the same shards, so the output is identical for the same seed). GPU
actors (``num_gpus=1``) are used when the cluster has GPUs. The driver streams the input in
windows of ``window`` shards, so its memory does not grow with the corpus; each shard's results
are written as soon as it arrives, to the same resumable part files as the local engine (a shard
that arrives out of order starts a new part, so that every part stays sorted by text index).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("--engine ray needs Ray Data: pip install 'detox-kernels[ray]'") from None
    return ray


class RewriteActor:
    def __init__(self, cfg: dict):
        import torch

        from .pipeline import RewriteConfig, Rewriter

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.rw = Rewriter(RewriteConfig(**cfg))

    def __call__(self, batch: dict) -> dict:
        out = []
        for payload in batch["shard"]:
            shard = [tuple(r) for r in json.loads(payload)]
            before = dict(self.rw.timing)
            res = self.rw.rewrite(shard)
            dt = {k: self.rw.timing[k] - before[k] for k in before}
            out.append(json.dumps({"results": res, "timing": dt}, ensure_ascii=False))
        return {"result": np.array(out, dtype=object)}


def run_on_ray(shards, store, cfg, bar, *, workers: int = 2, window: int = 64, address: str | None = None):
    ray = _require_ray()
    started = False
    if not ray.is_initialized():
        env = {"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""),
                            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "1"),
                            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "")}}
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False)
        else:
            # one CPU per actor plus one for Ray Data's own tasks (reading the window's blocks)
            ray.init(num_cpus=max(workers, 1) + 1, runtime_env=env, log_to_driver=False, include_dashboard=False)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    # an actor on a GPU sees only the GPU Ray gives it (as cuda); --device cpu keeps the actors off the GPUs
    on_gpu = str(cfg.device).startswith("cuda") or (str(cfg.device) == "auto" and ray.cluster_resources().get("GPU", 0))
    gpus = int(ray.cluster_resources().get("GPU", 0)) if on_gpu else 0
    actor_cfg = {**asdict(cfg), "device": "cuda" if gpus else "cpu"}
    timing = {"generate": 0.0, "score": 0.0, "embed": 0.0, "other": 0.0}
    written = 0
    try:
        it = iter(shards)
        while True:
            win = []
            for shard in it:
                if all(i in store.done for i, _, _ in shard):
                    bar.update(len(shard))
                    continue
                win.append(shard)
                if len(win) >= window:
                    break
            if not win:
                break
            # one block per shard, so the actors share the window's shards out one at a time
            ds = ray.data.from_items([{"shard": json.dumps(s, ensure_ascii=False)} for s in win],
                                     override_num_blocks=len(win))
            ds = ds.map_batches(RewriteActor, fn_constructor_kwargs={"cfg": actor_cfg}, batch_size=1,
                                compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(win)))),
                                num_cpus=0 if gpus else 1,
                                num_gpus=1 if gpus else 0)
            for row in ds.iter_rows():
                d = json.loads(row["result"])
                # persisted as each shard arrives: a kill loses only the shards still running
                written += store.append(d["results"])
                for k, v in d["timing"].items():
                    timing[k] += v
                bar.update(len(d["results"]))
    finally:
        if started:
            ray.shutdown()
    return written, timing
