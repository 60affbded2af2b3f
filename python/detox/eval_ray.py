"""``--engine ray`` for ``detox eval`` / ``detox demo`` (:class:`RayRuns`) and ``detox cmd-synthesize``
(:class:`RaySynthesis`): the same shards as the local engine, on a Ray Data actor pool
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

Devices. ``device`` / ``dtype`` are resolved by each actor on its own machine, as
:mod:`detox.devices` does for a local run: ``auto`` or ``cuda`` on a cluster with GPUs gives every
actor one GPU (``cuda`` on a cluster without any is an error), ``cpu`` keeps the actors off the
GPUs; ``dtype`` ``auto`` is then bfloat16 on a GPU, float32 on the CPU. The probe reports the
resolved pair, which goes into the results (and the cache keys) exactly as a local run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from . import methods as registry
from .resumable import JsonlAppender, read_records, write_atomic

__all__ = ["RayRuns", "RaySynthesis", "EvalActor", "SynthesisActor", "sort_records"]


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
    model once (on the actor's device: ``cfg.device`` is ``cuda`` in an actor Ray gave a GPU, else
    ``cpu``; in ``cfg.dtype``), the methods' generators when first asked for; runs probes and shards."""

    def __init__(self, cfg, settings: dict, toxic, objects: dict):
        from .devices import eval_device
        from .harness import load_eval_models
        from .ray_engine import actor_device

        actor_device()  # CPU actors: their torch threads
        self.cfg, self.settings_of, self.objects = cfg, settings, objects
        self.device, self.dtype = eval_device(cfg, objects.get("model"))
        self._scorer, self._base, self._toxic, _, self._ppl, _ = load_eval_models(
            cfg, self.device, self.dtype, scorer=objects.get("scorer"), model=objects.get("model"), toxic_name=toxic)
        self.gens = {}

    def gen(self, method: str):
        from .generation.driver import Generator

        if method not in self.gens:
            cfg = self.cfg
            self.gens[method] = Generator(method, model=self._base, toxic_model=self._toxic,
                                          settings=self.settings_of[method], model_name=cfg.model,
                                          toxic_name=str(cfg.toxic_model or "smollm2-135m-instruct-toxic"),
                                          device=self.device, dtype=self.dtype)
        return self.gens[method]

    def scorer(self):
        return self._scorer

    def ppl(self):
        return self._ppl

    def _one(self, item: dict) -> dict:
        from .harness import generate_shard, shard_nll, shard_scores

        if "probe" in item:
            from .devices import describe

            s = self.scorer()
            return {"scorer": getattr(s, "name", type(s).__name__), "device": describe(self.device, self.dtype),
                    "ppl_dtype": str(next(self._ppl[0].parameters()).dtype),
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
        nll = shard_nll(self.ppl(), prompts, conts) if item["nll"] else None
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
        from .ray_engine import actor_gpus, check_device_spec, map_actors, ray_session, require_ray

        require_ray()
        check_device_spec(cfg.device, cfg.dtype)
        t0 = time.time()
        toxic_name = None
        if registry.needs_toxic(cfg.methods):
            from .toxic import resolve_toxic_model

            # made here once if it is not cached yet, not by every actor
            toxic_name = cfg.toxic_model if cfg.toxic_model else resolve_toxic_model(None)
        self.ppl_name = cfg.model if cfg.ppl_model is None else cfg.ppl_model
        content = model_contents(cfg, toxic_name, self.ppl_name)
        objects = {k: v for k, v in (("model", model), ("scorer", scorer)) if v is not None}
        bs = cfg.batch_size
        starts = list(range(0, len(prompts), bs))
        self._settings, self._runs = {}, {}
        timing = {"generate": 0.0, "score": 0.0, "ppl": 0.0}
        with ray_session(workers, address):
            t_up = time.time()
            # the actors' device: a GPU each for cuda, or auto on a cluster with GPUs (a loaded model
            # decides for auto); the dtype is resolved by each actor on its device, as a local run does
            spec = cfg.device
            if model is not None and str(spec).lower() == "auto":
                from .devices import model_device

                spec = str(model_device(model[0]) or "auto")
            gpus = actor_gpus(spec)
            ctor = {"cfg": dataclasses.replace(cfg, device="cuda" if gpus else "cpu"), "settings": settings,
                    "toxic": toxic_name, "objects": objects}
            # one actor: loading the models once is all the probe costs
            (probe,) = map_actors([{"probe": cfg.methods}], EvalActor, ctor, workers=1, gpus=gpus)
            self.scorer_name, probes = probe["scorer"], probe["methods"]
            self.device_info = probe["device"]
            files, items, state = {}, [], {}
            for m in cfg.methods:
                self._settings[m] = probes[m]["settings"]
                for seed in cfg.seeds:
                    key = generation_key(cfg, m, seed, prompts, probes[m]["settings"],
                                         generation_content(content, probes[m]["toxic"]))
                    path = generation_path(out_dir, m, seed, key)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    done = {r["prompt_index"]: r["continuations"] for r in read_records(path)}
                    ppl_path = ppl_cache_path(self.ppl_name, path, out_dir, content.get("ppl"), probe["ppl_dtype"])
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
                for r in map_actors(items, EvalActor, ctor, workers=workers, gpus=gpus):
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
            n_workers = workers or _default_workers(gpus)
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


def _default_workers(gpus: bool) -> int:
    import ray

    from .ray_engine import default_workers

    return default_workers(gpus) if ray.is_initialized() else 0


# --------------------------------------------------------------------------------------------------
# CMD synthesis


class SynthesisActor:
    def __init__(self, cfg, model, scorer, detector, toxic_model, device=None, dtype=None):
        from .ray_engine import actor_device

        from .cmd.synthesis import build_synthesis

        actor_device()  # CPU actors: their torch threads
        self.cfg = cfg
        self.gen, self.fill_gen, self.scorer, self.detector = build_synthesis(model, scorer, detector, cfg,
                                                                              toxic_model, device=device, dtype=dtype)

    def _names(self) -> dict:
        return {"scorer": getattr(self.scorer, "name", type(self.scorer).__name__), "model": self.gen.model_name,
                "detector": type(self.detector).__name__}

    def _one(self, item: dict) -> dict:
        from .cmd.synthesis import _synthesize_chunk
        from .generation.driver import batch_seed

        if "probe" in item:
            return {"names": self._names(), "dtype": str(self.gen.dtype).removeprefix("torch.")}
        recs = _synthesize_chunk(item["prompts"], item["start"], self.gen, self.fill_gen, self.scorer,
                                 self.detector, self.cfg, batch_seed(self.cfg.seed, item["ci"]))
        return {"records": recs, **self._names()}

    def __call__(self, batch: dict) -> dict:
        from .ray_engine import actor_call

        return actor_call(self._one, batch)


class RaySynthesis:
    """A context manager: a Ray session for ``cmd-synthesize --engine ray`` whose actors take a GPU
    each for ``device`` auto / cuda on a cluster with GPUs (else run on the CPU), and resolve
    ``dtype`` there; on entry one actor is asked for the names and the dtype (:attr:`dtype`, for the
    resume check), then :meth:`run` synthesises the chunks."""

    def __init__(self, *, cfg, model, scorer, detector, toxic_model, device=None, dtype=None,
                 workers: int | None = None, address: str | None = None):
        from .ray_engine import check_device_spec, require_ray

        require_ray()
        check_device_spec(device, dtype)
        self.cfg, self.workers, self.address = cfg, workers, address
        self.device, self.dtype_spec = device, dtype
        self.args = {"cfg": cfg, "model": model, "scorer": scorer, "detector": detector, "toxic_model": toxic_model}

    def __enter__(self):
        import torch

        from .ray_engine import actor_gpus, map_actors, ray_session

        self._session = ray_session(self.workers, self.address)
        self._session.__enter__()
        try:
            spec = self.device
            model = self.args["model"]
            if isinstance(model, tuple) and (spec is None or str(spec).lower() == "auto"):
                from .devices import model_device

                spec = str(model_device(model[0]) or "auto")
            self.gpus = actor_gpus(spec)
            self.ctor = {**self.args, "device": "cuda" if self.gpus else "cpu", "dtype": self.dtype_spec}
            (probe,) = map_actors([{"probe": True}], SynthesisActor, self.ctor, workers=1, gpus=self.gpus)
        except BaseException:
            self._session.__exit__(None, None, None)
            raise
        self.names, self.dtype = probe["names"], getattr(torch, probe["dtype"])
        return self

    def __exit__(self, *exc):
        return self._session.__exit__(*exc)

    def run(self, prompts: list[str], chunks: list[tuple[int, int]], done: dict, appender: JsonlAppender, *,
            progress=True) -> dict:
        """Synthesise ``chunks`` (``(chunk index, first prompt)``); each chunk's new records are
        appended as it arrives and added to ``done``. Returns the names for the summary."""
        from tqdm.auto import tqdm

        from .ray_engine import map_actors

        cfg = self.cfg
        items = [{"ci": ci, "start": s, "prompts": prompts[s:s + cfg.chunk_size]} for ci, s in chunks]
        if not items:
            return self.names
        bar = tqdm(total=len(items), desc="cmd-synthesize (ray)", unit="chunk", disable=not progress)
        try:
            for r in map_actors(items, SynthesisActor, self.ctor, workers=self.workers, gpus=self.gpus):
                recs = [x for x in r["records"] if x["index"] not in done]  # a chunk torn by a kill
                appender.append(recs)
                for x in recs:
                    done[x["index"]] = x
                bar.update(1)
        finally:
            bar.close()
        return self.names
