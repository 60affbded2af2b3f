"""CMD phase 1: synthesise the self-detoxification data set (docs/methods/context-aware-self-detoxification.md).

For each toxic prompt:
1. toxic span detection: a pluggable detector returns word spans with scores; the default,
   :class:`OcclusionDetector`, removes words one at a time and measures the drop in toxicity with
   the configured scorer (batched over all prompts and words at once), greedily, until the rest
   is non-toxic. Flagged words are masked as bigrams and merged into one ``[MASK]`` per span;
2. mask filling: a generator (the model itself by default, optionally SoCD-decoded) writes a
   phrase for each mask, K candidates, the least toxic kept; the filled prompt must be
   non-toxic or the sample is dropped;
3. context-following generation: the model continues the cleaned prompt N times; the least toxic
   continuation is the positive, up to 3 of the most toxic with toxicity > 0.3 the negatives;
   samples whose best continuation is > 0.5 are dropped;
4. the chain-of-thought training text (:mod:`detox.cmd.chain`).

Prompts the scorer calls non-toxic skip steps 1-2 (their chain says so).

Output directory (resumable: rerun the same command after an interruption):
    records.jsonl   one line per prompt, kept or dropped (with the reason), appended a chunk at a time
    summary.json    counts kept / dropped by reason, settings, sizes
    train.jsonl     the kept samples (what ``detox cmd-train --data DIR`` reads)
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ..resumable import JsonlAppender, check_settings, read_records, write_json_atomic, write_settings
from . import chain as C


@dataclass
class SynthesisConfig:
    num_continuations: int = 8          # the paper: 25
    max_new_tokens: int = 20
    top_p: float = 0.9
    toxic_threshold: float = 0.5        # prompt / filling / best continuation must be <= this
    negative_threshold: float = 0.3     # negatives must be > this
    max_negatives: int = 3
    fill_candidates: int = 4
    fill_method: str = "none"           # a method of detox.methods with its defaults: "none" (plain sampling), "socd", ...
    max_spans: int = 3
    detector_max_rounds: int = 4
    detector_target: float = 0.3        # the detector masks words until the rest scores <= this
    batch_size: int = 8                 # prompts per generate call
    chunk_size: int = 16                # prompts per resumable chunk
    seed: int = 0
    extra: dict = field(default_factory=dict)


class SpanDetector(Protocol):
    """Anything that returns, per text, its toxic word spans ``(start, end, score)`` (end exclusive)."""

    def detect(self, texts: list[str]) -> list[list[tuple[int, int, float]]]: ...


class OcclusionDetector:
    """Greedy occlusion with a toxicity scorer: drop the word whose removal lowers toxicity most,
    repeat on the rest while it is still toxic (``max_rounds`` words at most). One batched scorer
    call per round over every remaining word of every still-toxic text."""

    def __init__(self, scorer, threshold: float = 0.5, max_rounds: int = 4, min_drop: float = 0.0):
        self.scorer, self.threshold, self.max_rounds, self.min_drop = scorer, threshold, max_rounds, min_drop

    def detect(self, texts: list[str]) -> list[list[tuple[int, int, float]]]:
        words = [t.split() for t in texts]
        removed = [set() for _ in texts]
        found: list[list[tuple[int, int, float]]] = [[] for _ in texts]
        current = [float(s) for s in self.scorer.score([" ".join(w) for w in words])]
        for _ in range(self.max_rounds):
            active = [i for i, s in enumerate(current) if s > self.threshold and len(removed[i]) < len(words[i])]
            if not active:
                break
            variants, owner = [], []
            for i in active:
                keep = [j for j in range(len(words[i])) if j not in removed[i]]
                for j in keep:
                    variants.append(" ".join(words[i][k] for k in keep if k != j))
                    owner.append((i, j))
            scores = self.scorer.score(variants)
            best: dict[int, tuple[float, int, float]] = {}
            for (i, j), s in zip(owner, scores):
                drop = current[i] - float(s)
                if i not in best or drop > best[i][0]:
                    best[i] = (drop, j, float(s))
            for i, (drop, j, s) in best.items():
                if drop <= self.min_drop:
                    current[i] = -1.0  # nothing helps: stop on this text
                    continue
                removed[i].add(j)
                found[i].append((j, j + 1, drop))
                current[i] = s
        return [sorted(f) for f in found]


def mask_spans(words: list[str], flagged: list[tuple[int, int, float]], max_spans: int) -> list[tuple[int, int]]:
    """Flagged words masked as bigrams (the word and the next one), merged into spans."""
    n = len(words)
    cover = [False] * n
    for s, e, _ in flagged:
        lo, hi = (s, e + 1) if e < n else (max(0, s - 1), e)
        for k in range(lo, hi):
            cover[k] = True
    spans, k = [], 0
    while k < n:
        if cover[k]:
            s = k
            while k < n and cover[k]:
                k += 1
            spans.append((s, k))
        else:
            k += 1
    while len(spans) > max_spans:  # merge the two closest neighbours
        gaps = [spans[i + 1][0] - spans[i][1] for i in range(len(spans) - 1)]
        g = gaps.index(min(gaps))
        spans[g:g + 2] = [(spans[g][0], spans[g + 1][1])]
    return spans


def masked_text(words: list[str], spans: list[tuple[int, int]]) -> str:
    out, k = [], 0
    for s, e in spans:
        out.extend(words[k:s])
        out.append(C.MASK)
        k = e
    out.extend(words[k:])
    return " ".join(out)


def _fill_context(masked: str, prefix: str) -> str:
    return f"Sentence: {masked}\nThe same sentence, said politely: {prefix}".rstrip()


def fill_masks(gen, scorer, words_list, spans_list, cfg: SynthesisConfig, seed: int):
    """Fill every mask of every text; returns (filled text, toxicity) per text. Round r fills mask r
    of all texts at once (batched); K sampled candidates, the least toxic one is kept."""
    n = len(words_list)
    parts = [[] for _ in range(n)]          # filled text built left to right
    pos = [0] * n
    masked = [masked_text(w, s) for w, s in zip(words_list, spans_list)]
    rounds = max((len(s) for s in spans_list), default=0)
    for r in range(rounds):
        todo = [i for i in range(n) if r < len(spans_list[i])]
        ctx, lens = [], []
        for i in todo:
            s, e = spans_list[i][r]
            parts[i].extend(words_list[i][pos[i]:s])
            pos[i] = e
            ctx.append(_fill_context(masked[i], " ".join(parts[i])))
            lens.append(e - s)
        for b in range(0, len(todo), cfg.batch_size):
            idx = todo[b:b + cfg.batch_size]
            res = gen.generate_batch(ctx[b:b + cfg.batch_size], num_samples=cfg.fill_candidates,
                                     max_new_tokens=max(lens[b:b + cfg.batch_size]) * 2 + 2, top_p=cfg.top_p,
                                     seed=seed * 7919 + r * 131 + b)
            cands, owner = [], []
            for k, i in enumerate(idx):
                want = lens[b + k]
                for c in res[k]:
                    w = c.replace("\n", " ").split()[:want]
                    if not w or any(ch in " ".join(w) for ch in "[]{}<>#"):
                        continue
                    cands.append(" ".join(parts[i] + w))
                    owner.append((i, w))
            scores = scorer.score(cands) if cands else []
            best = {}
            for (i, w), s in zip(owner, scores):
                if i not in best or float(s) < best[i][0]:
                    best[i] = (float(s), w)
            for i in idx:
                parts[i].extend(best[i][1] if i in best else [])
    filled = []
    for i in range(n):
        parts[i].extend(words_list[i][pos[i]:])
        filled.append(" ".join(parts[i]))
    tox = [float(s) for s in scorer.score(filled)] if filled else []
    return filled, tox


def _check_meta(out_dir: str, prompts: list[str], cfg: SynthesisConfig, model, dtype=None) -> None:
    """Records are reused by prompt index: refuse to resume a directory made from other prompts or
    settings (they would be mixed into train.jsonl)."""
    import hashlib

    meta = {"prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(), "prompts": len(prompts),
            "config": asdict(cfg), "model": model if isinstance(model, str) else None,
            "dtype": None if dtype in (None, torch.float32) else str(dtype).removeprefix("torch.")}
    path = os.path.join(out_dir, "meta.json")
    if check_settings(path, meta, ("prompts_sha256", "config", "model", "dtype"),
                      what="a synthesis of other prompts or settings",
                      hint="rerun with the same options to resume, or use another --out"):
        return
    if os.path.exists(os.path.join(out_dir, "records.jsonl")):
        return  # made before meta.json existed: nothing to compare against
    write_settings(path, meta)


def build_synthesis(model, scorer, detector, cfg: SynthesisConfig, toxic_model=None, *, device=None, dtype=None):
    """``(generator, mask-filling generator, scorer, detector)`` of a synthesis: the models loaded
    once (by the process, or by each Ray actor) on ``device`` in ``dtype``, the scorer on that device."""
    from ..generation.driver import Generator
    from ..scorers import default_scorer, load_scorer

    gen = Generator("none", model=model, device=device, dtype=dtype)
    fill_gen = gen if cfg.fill_method == "none" else Generator(cfg.fill_method, model=(gen.model, gen.tokenizer),
                                                               toxic_model=toxic_model, model_name=gen.model_name)
    if scorer is None or isinstance(scorer, str):
        scorer = load_scorer(scorer, device=gen.device) if scorer else default_scorer(device=gen.device)
    detector = detector or OcclusionDetector(scorer, threshold=cfg.detector_target, max_rounds=cfg.detector_max_rounds)
    return gen, fill_gen, scorer, detector


def _todo(path: str, prompts: list[str], cfg: SynthesisConfig) -> tuple[dict, list[tuple[int, int]]]:
    """The records already in ``path`` by index, and the chunks ``(chunk index, first prompt)`` still to do."""
    done = {r["index"]: r for r in read_records(path)}
    chunks = [(ci, s) for ci, s in enumerate(range(0, len(prompts), cfg.chunk_size))
              if any(i not in done for i in range(s, min(s + cfg.chunk_size, len(prompts))))]
    if done and chunks:
        print(f"resuming: {len(done)} of {len(prompts)} prompts already synthesised")
    return done, chunks


def synthesize(prompts: list[str], out_dir: str, *, model=None, scorer=None, detector: SpanDetector | None = None,
               cfg: SynthesisConfig | None = None, toxic_model=None, progress: bool = True, prompt_source: str = "",
               engine: str = "local", ray_workers: int | None = None, ray_address: str | None = None,
               device=None, dtype=None) -> dict:
    """Run the synthesis (resumable); returns the summary (also written to ``out_dir``).

    ``device`` / ``dtype``: where the models and the scorer run and the models' precision (see
    :class:`detox.generation.driver.Generator`; default: a loaded ``model``'s, else ``auto``).
    ``engine``: ``local`` (this process) or ``ray`` (the same chunks on Ray Data actors, see
    :mod:`detox.eval_ray`; the same records; each actor resolves ``device`` / ``dtype`` on its own
    machine: its GPU for ``auto`` / ``cuda`` on a cluster with GPUs)."""
    from ..generation.driver import batch_seed

    cfg = cfg or SynthesisConfig()
    if not prompts:
        raise ValueError("no prompts to synthesise from")
    from .. import methods as registry

    if registry.get(cfg.fill_method).extra_outputs or cfg.fill_method == "cmd":
        raise ValueError(f"fill_method must be a decoding method other than cmd, got {cfg.fill_method!r}")
    if engine not in ("local", "ray"):
        raise ValueError(f"unknown engine {engine!r}; use local or ray")
    os.makedirs(out_dir, exist_ok=True)
    model = model if model is not None else "smollm2-135m-instruct"
    path = os.path.join(out_dir, "records.jsonl")
    t0 = time.time()
    names = {}
    if engine == "ray":
        from ..eval_ray import RaySynthesis, sort_records

        with RaySynthesis(cfg=cfg, model=model, scorer=scorer, detector=detector, toxic_model=toxic_model,
                          device=device, dtype=dtype, workers=ray_workers, address=ray_address) as rs:
            _check_meta(out_dir, prompts, cfg, model, rs.dtype)  # the actors' dtype
            done, chunks = _todo(path, prompts, cfg)
            with JsonlAppender(path) as f:
                names = rs.run(prompts, chunks, done, f, progress=progress)
    else:
        gen, fill_gen, scorer, detector = build_synthesis(model, scorer, detector, cfg, toxic_model,
                                                          device=device, dtype=dtype)
        _check_meta(out_dir, prompts, cfg, model, gen.dtype)
        done, chunks = _todo(path, prompts, cfg)
        names = {"scorer": getattr(scorer, "name", type(scorer).__name__), "model": gen.model_name,
                 "detector": type(detector).__name__}
        with JsonlAppender(path) as f:
            for ci, s in tqdm(chunks, desc="cmd-synthesize", unit="chunk", disable=not progress):
                recs = _synthesize_chunk(prompts[s:s + cfg.chunk_size], s, gen, fill_gen, scorer, detector, cfg,
                                         batch_seed(cfg.seed, ci))
                recs = [r for r in recs if r["index"] not in done]  # a chunk torn by a kill: append only the rest
                f.append(recs)
                for r in recs:
                    done[r["index"]] = r
    if engine == "ray":
        sort_records(path, "index")  # chunks arrive in any order: index order, as a local run writes
    recs = [done[i] for i in sorted(done) if i < len(prompts)]
    kept = [r for r in recs if r["kept"]]
    with open(os.path.join(out_dir, "train.jsonl.tmp"), "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps({k: r[k] for k in ("index", "prompt", "masked", "filled", "positive", "negatives",
                                                  "text")}, ensure_ascii=False) + "\n")
    os.replace(os.path.join(out_dir, "train.jsonl.tmp"), os.path.join(out_dir, "train.jsonl"))
    summary = {
        "prompts": len(prompts), "prompt_source": prompt_source, "kept": len(kept),
        "dropped": dict(Counter(r["reason"] for r in recs if not r["kept"])),
        "kept_toxic_context": sum(1 for r in kept if r["masked"] is not None),
        "kept_nontoxic_context": sum(1 for r in kept if r["masked"] is None),
        "with_negatives": sum(1 for r in kept if r["negatives"]),
        "negatives": sum(len(r["negatives"]) for r in kept),
        "scorer": names["scorer"], "model": names["model"],
        "detector": names["detector"], "config": asdict(cfg), "seconds_this_run": time.time() - t0,
        "engine": engine,
    }
    write_json_atomic(os.path.join(out_dir, "summary.json"), summary)
    return summary


def _synthesize_chunk(prompts, offset, gen, fill_gen, scorer, detector, cfg, seed):
    words = [p.split() for p in prompts]
    tox = [float(s) for s in scorer.score([" ".join(w) for w in words])]
    recs = [{"index": offset + i, "prompt": p, "prompt_toxicity": tox[i], "toxic": tox[i] > cfg.toxic_threshold,
             "spans": [], "masked": None, "filled": None, "fill_toxicity": None, "continuations": [], "scores": [],
             "positive": None, "negatives": [], "text": None, "kept": False, "reason": None}
            for i, p in enumerate(prompts)]
    toxic_i = [i for i in range(len(prompts)) if recs[i]["toxic"]]
    if toxic_i:
        flagged = detector.detect([" ".join(words[i]) for i in toxic_i])
        spans = [mask_spans(words[i], fl, cfg.max_spans) for i, fl in zip(toxic_i, flagged)]
        for i, fl, sp in zip(toxic_i, flagged, spans):
            recs[i]["spans"] = [[s, e, round(sc, 4)] for s, e, sc in fl]
            if not sp:
                recs[i]["reason"] = "no toxic span found"
        has = [(i, sp) for i, sp in zip(toxic_i, spans) if sp]
        if has:
            filled, ftox = fill_masks(fill_gen, scorer, [words[i] for i, _ in has], [sp for _, sp in has], cfg, seed)
            for (i, sp), fl, ft in zip(has, filled, ftox):
                recs[i].update(masked=masked_text(words[i], sp), filled=fl, fill_toxicity=ft)
                if ft > cfg.toxic_threshold:
                    recs[i]["reason"] = "filled prompt still toxic"
    ready = [i for i in range(len(prompts)) if recs[i]["reason"] is None]
    contexts = [recs[i]["filled"] if recs[i]["toxic"] else recs[i]["prompt"] for i in ready]
    conts = []
    for b in range(0, len(contexts), cfg.batch_size):
        conts.extend(gen.generate_batch(contexts[b:b + cfg.batch_size], num_samples=cfg.num_continuations,
                                        max_new_tokens=cfg.max_new_tokens, top_p=cfg.top_p, seed=seed + b))
    flat = [c for cs in conts for c in cs]
    sc = [float(s) for s in scorer.score(flat)] if flat else []
    N = cfg.num_continuations
    for k, i in enumerate(ready):
        cs, ss = conts[k], sc[k * N:(k + 1) * N]
        r = recs[i]
        r["continuations"], r["scores"] = cs, [round(s, 5) for s in ss]
        order = sorted(range(len(cs)), key=lambda j: ss[j])
        # a "#" would end the generation step of the chain early: such continuations are not used
        usable = [j for j in order if cs[j].strip() and "#" not in cs[j]]
        if not usable:
            r["reason"] = "all continuations empty or with '#'"
            continue
        best = usable[0]
        if ss[best] > cfg.toxic_threshold:
            r["reason"] = "best continuation toxic"
            continue
        negs = [j for j in reversed(order) if j != best and ss[j] > cfg.negative_threshold and j in usable]
        r["positive"] = cs[best]
        r["negatives"] = [cs[j] for j in negs[:cfg.max_negatives]]
        r["text"] = C.training_text(r["prompt"], cs[best], r["masked"], r["filled"])
        r["kept"], r["reason"] = True, "kept"
    return recs
