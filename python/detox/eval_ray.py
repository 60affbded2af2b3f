"""``--engine ray`` for ``detox eval`` / ``detox demo`` (:class:`RayRuns`) and ``detox cmd-synthesize``
(:func:`synthesize_on_ray`): the same shards as the local engine, on a Ray Data actor pool
(:mod:`detox.ray_engine`: one actor per GPU, else per CPU worker; each loads its models once).

Evaluation. The unit of work is a shard: ``batch_size`` consecutive prompts of one method and
seed, generated with the seed ``batch_seed(seed, shard index)`` (never anything about the worker),
then scored and, where the perplexity cache is missing, its per-sample NLL computed, all by the
same actor. The local engine scores and computes NLL shard by shard too, so both engines give the
same numbers to the bit (with the same torch thread count on CPU: ``OMP_NUM_THREADS``, default 1 in
the actors). First a small job asks one actor for the methods' resolved settings (they make the
generation files' names, so the driver knows what is cached); then one job runs every
shard still to do. The driver writes each shard's records to the same resumable generation file as
the local engine as soon as it arrives (appended and fsync'd; a killed run redoes only the shards
not written), and when all are in, puts the file in prompt order (one atomic rewrite, so the file
is byte-identical to a local run's). Shards already generated are sent with their continuations,
to be scored only.

CMD synthesis. The unit is a chunk of ``chunk_size`` prompts (seeded from (seed, chunk index)),
appended to ``records.jsonl`` as it arrives and put in index order at the end.
"""

from __future__ import annotations

import json
import os
import time

from . import methods as registry
from .resumable import JsonlAppender, read_records, write_atomic

__all__ = ["RayRuns", "EvalActor", "SynthesisActor", "sort_records", "synthesize_on_ray"]


def sort_records(path: str, field: str) -> bool:
    """Put the JSONL file ``path`` in increasing ``field`` order, the first line of an index kept
    (an atomic rewrite of the same lines, only when they are out of order or repeated). Returns
    whether it rewrote the file."""
    read_records(path)  # a torn tail is cut off first
    with open(path, "rb") as f:
        lines = f.readlines()
    keyed = [(json.loads(line)[field], n, line) for n, line in enumerate(lines)]
    out, seen = [], set()
    for k, _, line in sorted(keyed):
        if k not in seen:
            seen.add(k)
            out.append(line)
    if out == lines:
        return False
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"".join(out))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


# --------------------------------------------------------------------------------------------------
# evaluation


class EvalActor:
    """Loads the base model, the toxic model (if a method needs one), the scorer and the perplexity
    model once, the methods' generators when first asked for; runs probes and shards."""

    def __init__(self, cfg, settings: dict, toxic, objects: dict):
        from .ray_engine import actor_device

        self.cfg, self.settings_of, self.toxic_spec, self.objects = cfg, settings, toxic, objects
        self.device = actor_device()
        self._base = self._toxic = self._scorer = self._ppl = None
        self.gens = {}

    def base(self):
        from .models import load_causal_lm

        if self._base is None:
            self._base = self.objects.get("model") or load_causal_lm(self.cfg.model, device=self.device)
        return self._base

    def gen(self, method: str):
        from .generation.driver import Generator
        from .models import load_causal_lm

        if method not in self.gens:
            if registry.get(method).needs_toxic and self._toxic is None:
                t = self.toxic_spec
                self._toxic = t if isinstance(t, tuple) else load_causal_lm(t, device=self.device)
            cfg = self.cfg
            self.gens[method] = Generator(method, model=self.base(), toxic_model=self._toxic,
                                          settings=self.settings_of[method], model_name=cfg.model,
                                          toxic_name=str(cfg.toxic_model or "smollm2-135m-instruct-toxic"),
                                          device=self.device)
        return self.gens[method]

    def scorer(self):
        from .scorers import default_scorer, load_scorer

        if self._scorer is None:
            s = self.objects.get("scorer")
            self._scorer = s if s is not None else (load_scorer(self.cfg.scorer) if self.cfg.scorer
                                                    else default_scorer())
        return self._scorer

    def ppl(self):
        from .models import load_causal_lm

        if self._ppl is None:
            self._ppl = self.base() if self.cfg.ppl_model is None else load_causal_lm(self.cfg.ppl_model,
                                                                                      device=self.device)
        return self._ppl

    def _one(self, item: dict) -> dict:
        from .harness import generate_shard, shard_nll, shard_scores

        if "probe" in item:
            s = self.scorer()
            return {"scorer": getattr(s, "name", type(s).__name__),
                    "methods": {m: {"settings": self.gen(m).settings(), "toxic": self.gen(m).toxic is not None}
                                for m in item["probe"]}}
        m, seed, bi, start, prompts = item["method"], item["seed"], item["bi"], item["start"], item["prompts"]
        t0 = time.perf_counter()
        recs = None
        if item["conts"] is None:
            recs = generate_shard(self.gen(m), self.cfg, prompts, seed, bi, start)
            conts = [r["continuations"] for r in recs]
        else:
            conts = item["conts"]
        t1 = time.perf_counter()
        scores = shard_scores(self.scorer(), conts)
        t2 = time.perf_counter()
        nll = shard_nll(self.ppl(), prompts, conts, device=self.device) if item["nll"] else None
        return {"method": m, "seed": seed, "bi": bi, "records": recs, "scores": scores, "nll": nll,
                "timing": {"generate": t1 - t0, "score": t2 - t1, "ppl": time.perf_counter() - t2}}

    def __call__(self, batch: dict) -> dict:
        from .ray_engine import actor_call

        return actor_call(self._one, batch)


class RayRuns:
    """Every (method, seed) of an evaluation computed on Ray when made; :meth:`run` and
    :meth:`settings` then answer as :class:`detox.harness.LocalRuns` does."""

    def __init__(self, cfg, out_dir: str, prompts: list[str], settings: dict, *, progress=True, scorer=None,
                 model=None, workers: int | None = None, address: str | None = None):
        from tqdm.auto import tqdm

        from .harness import (generation_content, generation_key, generation_path, model_contents,
                              ppl_cache_path)
        from .ray_engine import map_actors, ray_session, require_ray

        require_ray()
        t0 = time.time()
        toxic_name = None
        if registry.needs_toxic(cfg.methods):
            from .toxic import resolve_toxic_model

            # made here once if it is not cached yet, not by every actor
            toxic_name = cfg.toxic_model if cfg.toxic_model else resolve_toxic_model(None)
        self.ppl_name = cfg.model if cfg.ppl_model is None else cfg.ppl_model
        content = model_contents(cfg, toxic_name, self.ppl_name)
        ctor = {"cfg": cfg, "settings": settings, "toxic": toxic_name,
                "objects": {k: v for k, v in (("model", model), ("scorer", scorer)) if v is not None}}
        bs = cfg.batch_size
        starts = list(range(0, len(prompts), bs))
        self._settings, self._runs = {}, {}
        timing = {"generate": 0.0, "score": 0.0, "ppl": 0.0}
        with ray_session(workers, address) as ray:
            t_up = time.time()
            # one actor: loading the models once is all the probe costs
            (probe,) = map_actors([{"probe": cfg.methods}], EvalActor, ctor, workers=1)
            self.scorer_name, probes = probe["scorer"], probe["methods"]
            files, items, state = {}, [], {}
            for m in cfg.methods:
                self._settings[m] = probes[m]["settings"]
                for seed in cfg.seeds:
                    key = generation_key(cfg, m, seed, prompts, probes[m]["settings"],
                                         generation_content(content, probes[m]["toxic"]))
                    path = generation_path(out_dir, m, seed, key)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    done = {r["prompt_index"]: r["continuations"] for r in read_records(path)}
                    ppl_path = ppl_cache_path(self.ppl_name, path, out_dir, content.get("ppl"))
                    cached_nll = None
                    if os.path.exists(ppl_path):
                        with open(ppl_path) as f:
                            cached_nll = [tuple(x) for x in json.load(f)]
                    n_todo = 0
                    for bi, s in enumerate(starts):
                        idx = range(s, min(s + bs, len(prompts)))
                        have = all(i in done for i in idx)
                        n_todo += not have
                        items.append({"method": m, "seed": seed, "bi": bi, "start": s,
                                      "prompts": prompts[s:s + bs],
                                      "conts": [done[i] for i in idx] if have else None,
                                      "nll": cached_nll is None})
                    if done and n_todo:
                        print(f"{m} seed {seed}: resuming, {len(done)} of {len(prompts)} prompts already generated")
                    files[(m, seed)] = path
                    state[(m, seed)] = {"done": done, "scores": {}, "nll": {}, "cached_nll": cached_nll,
                                        "ppl_path": ppl_path}
            appenders = {}
            t_probe = time.time()
            bar = tqdm(total=len(items), desc="eval (ray)", unit="shard", disable=not progress)
            try:
                for r in map_actors(items, EvalActor, ctor, workers=workers):
                    k = (r["method"], r["seed"])
                    st = state[k]
                    if r["records"] is not None:
                        new = [x for x in r["records"] if x["prompt_index"] not in st["done"]]
                        if k not in appenders:
                            appenders[k] = JsonlAppender(files[k])
                        appenders[k].append(new)  # persisted as each shard arrives
                        for x in new:
                            st["done"][x["prompt_index"]] = x["continuations"]
                    st["scores"][r["bi"]] = r["scores"]
                    if r["nll"] is not None:
                        st["nll"][r["bi"]] = r["nll"]
                    for t, v in r["timing"].items():
                        timing[t] += v
                    bar.update(1)
            finally:
                bar.close()
                for a in appenders.values():
                    a.close()
            t_work = time.time()
            n_workers = workers or _default_workers(ray)
        for k, path in files.items():
            st = state[k]
            sort_records(path, "prompt_index")  # prompt order: the same bytes as a local run
            conts = [st["done"][i] for i in range(len(prompts))]
            scores = [s for bi in range(len(starts)) for s in st["scores"][bi]]
            if st["cached_nll"] is not None:
                nll = st["cached_nll"]
            else:
                flat = [x for bi in range(len(starts)) for x in st["nll"][bi]]
                os.makedirs(os.path.dirname(st["ppl_path"]), exist_ok=True)
                write_atomic(st["ppl_path"], json.dumps(flat))
                nll = [tuple(x) for x in flat]
            self._runs[k] = (path, conts, scores, nll)
        self.run_info = {"workers": n_workers, "shards": len(items),
                         "shards_generated": sum(1 for it in items if it["conts"] is None),
                         "address": address or os.environ.get("RAY_ADDRESS") or "local",
                         "ray_seconds": time.time() - t0, "start_seconds": t_up - t0, "probe_seconds": t_probe - t_up,
                         "work_seconds": t_work - t_probe, "actor_seconds": timing}

    def settings(self, method: str) -> dict:
        return self._settings[method]

    def run(self, method: str, seed: int):
        return self._runs[(method, seed)]


def _default_workers(ray) -> int:
    from .ray_engine import default_workers

    return default_workers() if ray.is_initialized() else 0


# --------------------------------------------------------------------------------------------------
# CMD synthesis


class SynthesisActor:
    def __init__(self, cfg, model, scorer, detector, toxic_model):
        from .ray_engine import actor_device

        from .cmd.synthesis import build_synthesis

        actor_device()  # CPU actors: their torch threads
        self.cfg = cfg
        self.gen, self.fill_gen, self.scorer, self.detector = build_synthesis(model, scorer, detector, cfg,
                                                                              toxic_model)

    def _one(self, item: dict) -> dict:
        from .cmd.synthesis import _synthesize_chunk
        from .generation.driver import batch_seed

        recs = _synthesize_chunk(item["prompts"], item["start"], self.gen, self.fill_gen, self.scorer,
                                 self.detector, self.cfg, batch_seed(self.cfg.seed, item["ci"]))
        return {"records": recs, "scorer": getattr(self.scorer, "name", type(self.scorer).__name__),
                "model": self.gen.model_name, "detector": type(self.detector).__name__}

    def __call__(self, batch: dict) -> dict:
        from .ray_engine import actor_call

        return actor_call(self._one, batch)


def synthesize_on_ray(prompts: list[str], chunks: list[tuple[int, int]], done: dict, appender: JsonlAppender, *,
                      cfg, model, scorer, detector, toxic_model, progress=True, workers: int | None = None,
                      address: str | None = None) -> dict:
    """Synthesise ``chunks`` (``(chunk index, first prompt)``) on Ray; each chunk's new records are
    appended as it arrives and added to ``done``. Returns the names for the summary (``{}`` when
    nothing ran)."""
    from tqdm.auto import tqdm

    from .ray_engine import map_actors, ray_session

    items = [{"ci": ci, "start": s, "prompts": prompts[s:s + cfg.chunk_size]} for ci, s in chunks]
    names = {}
    if not items:
        return names
    ctor = {"cfg": cfg, "model": model, "scorer": scorer, "detector": detector, "toxic_model": toxic_model}
    with ray_session(workers, address):
        bar = tqdm(total=len(items), desc="cmd-synthesize (ray)", unit="chunk", disable=not progress)
        try:
            for r in map_actors(items, SynthesisActor, ctor, workers=workers):
                recs = [x for x in r["records"] if x["index"] not in done]  # a chunk torn by a kill
                appender.append(recs)
                for x in recs:
                    done[x["index"]] = x
                names = {k: r[k] for k in ("scorer", "model", "detector")}
                bar.update(1)
        finally:
            bar.close()
    return names
