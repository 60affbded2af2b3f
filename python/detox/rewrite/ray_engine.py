"""``--engine ray``: the same shards through Ray Data ``map_batches`` with an actor pool.

Each actor loads the models once and rewrites one shard per call (the same ``Rewriter.rewrite``
as the local engine, on the same shards, so the output is identical for the same seed). GPU
actors (``num_gpus=1``) are used when the cluster has GPUs, unless ``--device cpu``. The driver streams the input in
windows of ``window`` shards, so its memory does not grow with the corpus; each shard's results
are written as soon as it arrives, to the same resumable part files as the local engine (a shard
that arrives out of order starts a new part, so that every part stays sorted by text index).
"""

from __future__ import annotations

from dataclasses import asdict


class RewriteActor:
    def __init__(self, cfg: dict):
        from ..ray_engine import actor_threads
        import torch

        from .pipeline import RewriteConfig, Rewriter

        torch.set_num_threads(actor_threads())
        self.rw = Rewriter(RewriteConfig(**cfg))

    def _one(self, item: dict) -> dict:
        shard = [tuple(r) for r in item["shard"]]
        before = dict(self.rw.timing)
        res = self.rw.rewrite(shard)
        return {"results": res, "timing": {k: self.rw.timing[k] - before[k] for k in before}}

    def __call__(self, batch: dict) -> dict:
        from ..ray_engine import actor_call

        return actor_call(self._one, batch)


def run_on_ray(shards, store, cfg, bar, *, workers: int = 2, window: int = 64, address: str | None = None):
    from ..ray_engine import actor_gpus, map_actors, ray_session

    timing = {"generate": 0.0, "score": 0.0, "embed": 0.0, "other": 0.0}
    written = 0
    with ray_session(workers, address):
        # an actor on a GPU sees only the GPU Ray gives it (as cuda); --device cpu keeps the actors off the GPUs
        gpus = actor_gpus(cfg.device, strict=False)
        actor_cfg = {**asdict(cfg), "device": "cuda" if gpus else "cpu"}
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
            for d in map_actors([{"shard": s} for s in win], RewriteActor, {"cfg": actor_cfg}, workers=workers,
                                gpus=gpus):
                # persisted as each shard arrives: a kill loses only the shards still running
                written += store.append(d["results"])
                for k, v in d["timing"].items():
                    timing[k] += v
                bar.update(len(d["results"]))
    return written, timing
