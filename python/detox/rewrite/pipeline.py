"""One shard of texts -> their best rewrites (steps 1-4 of docs/corpus-rewriting.md), on one process.

``Rewriter`` holds the base model, the toxic model (modes ``cd`` and ``socd``), the toxicity
scorer and the embedder. ``rewrite(records)`` renders the prompts, expands every text into
``len(temperatures) * samples_per_temperature`` rows, generates all of them in one ``generate``
call (per-row temperature and per-row seeded sampling, see ``sampling.py``), extracts and
de-duplicates the answers, scores toxicity and similarity in batches, and keeps the argmax of
the fusion score. Each candidate is seeded from (seed, text index, candidate number) only.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .. import methods as registry
from ..generation.processors import cache_keyword, model_cache
from .rank import TextEmbedder, dedupe, fusion_scores
from .sampling import RowSeededSampler, hash32
from .templates import load_template

MODES = ("prompt", "cd", "socd")  # prompt: the base model alone; cd / socd: that method of detox.methods


@dataclass
class RewriteConfig:
    mode: str = "socd"
    model: str = "smollm2-135m-instruct"
    toxic_model: str | None = None          # None: the embedded toxic SmolLM2
    template: str = "fewshot"
    temperatures: list = field(default_factory=lambda: [0.6, 0.8, 1.0, 1.2, 1.5])
    samples_per_temperature: int = 2
    top_p: float = 1.0
    max_new_tokens: int = 48
    max_input_tokens: int = 512
    lam: float = 0.5
    scorer: str | None = None               # None: the default scorer (jigsaw offline)
    embedder: str | None = None             # None: the embedded all-MiniLM-L6-v2
    method_settings: dict = field(default_factory=dict)  # the settings of the mode's method (socd / cd)
    seed: int = 0
    batch_size: int = 8                     # texts per generate call (the shard size)
    dtype: str = "auto"                     # the models' precision; validate() resolves "auto" (detox.devices)
    device: str = "auto"                    # where the models, scorer and embedder run; not in key()

    def validate(self):
        from ..devices import dtype_name, resolve_device, resolve_dtype

        # "auto" becomes a name now, so that the resume key says which precision the texts were made in
        self.dtype = dtype_name(resolve_dtype(self.dtype, resolve_device(self.device, what="device"), what="dtype"))
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode == "prompt":
            if self.method_settings:
                raise ValueError("mode prompt takes no method settings")
        else:  # every field, defaults included, so that the resume key does not depend on how they were given
            self.method_settings = registry.settings_for(self.mode, self.method_settings).to_dict()
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be positive, got {self.temperatures}")
        if self.samples_per_temperature < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("samples per temperature, batch size and max new tokens must be >= 1")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lambda must be in [0, 1], got {self.lam}")
        return self

    def key(self) -> str:
        """A hash of everything that changes the output (resume refuses a different one); the device
        changes it only through float rounding and is left out (a run may resume on another device)."""
        d = asdict(self)
        d.pop("device")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class Rewriter:
    def __init__(self, cfg: RewriteConfig, device: str | None = None, models=None, scorer=None, embedder=None):
        from ..models import check_same_vocabulary, load_causal_lm
        from ..scorers import load_scorer

        from ..devices import check_same_device, resolve_device

        if device is not None:
            cfg.device = str(device)
        self.cfg = cfg.validate()
        self.device = resolve_device(cfg.device, what="device")
        self.template = load_template(cfg.template)
        if models is not None:
            (self.model, self.tok), toxic = models[0], (models[1] if len(models) > 1 else None)
        else:
            self.model, self.tok = load_causal_lm(cfg.model, dtype=cfg.dtype, device=self.device, quiet=True)
            toxic = None
        self.toxic, self.vocab_size, self.method = None, None, None
        if cfg.mode != "prompt":
            if toxic is None:
                from ..toxic import resolve_toxic_model

                toxic = load_causal_lm(resolve_toxic_model(cfg.toxic_model), dtype=cfg.dtype, device=self.device,
                                       quiet=True)
            self.vocab_size = check_same_vocabulary(self.tok, toxic[1], self.model, toxic[0])
            self.toxic = toxic[0].eval()
            models = registry.Models(self.model, self.tok, str(cfg.model), device=self.device, toxic=self.toxic,
                                     vocab_size=self.vocab_size)
            self.method = registry.get(cfg.mode)(registry.settings_for(cfg.mode, cfg.method_settings), models)
        check_same_device([("base", self.model), ("toxic", self.toxic)], self.device)
        self.scorer = scorer if scorer is not None else load_scorer(cfg.scorer, device=self.device)
        self.embedder = embedder if embedder is not None else TextEmbedder(cfg.embedder, device=self.device)
        self.timing = {"generate": 0.0, "score": 0.0, "embed": 0.0, "other": 0.0}
        self.n_candidates = len(cfg.temperatures) * cfg.samples_per_temperature
        self.shared_prefill = True   # prefill each prompt once, not once per candidate (same result)

    def _processors(self, mask, seeds, temps, prompt_len):
        c = self.cfg
        procs = [] if self.method is None else [self.method.processor(mask)]
        procs.append(RowSeededSampler(seeds, temps, prompt_len, top_p=c.top_p))
        return LogitsProcessorList(procs)

    @torch.inference_mode()
    def generate(self, texts: list[str], keys: list[int]) -> list[list[str]]:
        """Raw generations: ``len(texts)`` lists of ``n_candidates`` strings (candidate j at
        temperature ``temperatures[j // samples_per_temperature]``)."""
        c, tok = self.cfg, self.tok
        k = self.n_candidates
        prompts = [self.template.render(tok, t) for t in texts]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not self.template.chat)
        ids1, mask1 = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        ids, mask = ids1.repeat_interleave(k, 0), mask1.repeat_interleave(k, 0)
        seeds = torch.tensor([hash32(c.seed, key, j) for key in keys for j in range(k)], dtype=torch.long)
        temps = torch.tensor([c.temperatures[j // c.samples_per_temperature] for _ in keys for j in range(k)])
        procs = self._processors(mask, seeds.to(self.device), temps.to(self.device), ids.shape[1])
        # The k candidates of a text share its prompt: prefill it once per text (base and toxic
        # model), then repeat the caches k times, instead of prefilling k identical rows.
        kw = {}
        if self.shared_prefill and ids1.shape[1] > 1:
            kw[cache_keyword(self.model)] = self._prefill(self.model, ids1, mask1, k)
            if self.toxic is not None:
                (aux,) = procs[0].auxiliaries
                aux.prime(self._prefill(self.toxic, ids1, mask1, k), mask)
        crit = self._stopping()
        if crit is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([crit])
        out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=c.max_new_tokens,
                                  logits_processor=procs, pad_token_id=tok.pad_token_id, num_beams=1,
                                  temperature=None, top_p=None, top_k=None, **kw)
        dec = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return [dec[i * k:(i + 1) * k] for i in range(len(texts))]

    def _stopping(self):
        """Stop a row at the template's stop strings: HF's StopStringCriteria, or, for tokenizers it
        cannot handle, a per-token test (tokens whose text contains a stop string)."""
        if hasattr(self, "_stop"):
            return self._stop
        stops = [s for s in self.template.stop if s]
        self._stop = None
        if stops:
            try:
                from transformers import StopStringCriteria

                self._stop = StopStringCriteria(self.tok, stops)
            except Exception:
                ids = [i for i in range(len(self.tok)) if any(s in self.tok.decode([i]) for s in stops)]
                if ids:
                    self._stop = _TokenStop(ids, self.model.get_output_embeddings().weight.shape[0], self.device)
        return self._stop

    @staticmethod
    def _prefill(model, ids, mask, k):
        pos = (mask.long().cumsum(-1) - 1).clamp_min(0)
        out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True,
                    logits_to_keep=1)
        cache = model_cache(out)
        cache.batch_repeat_interleave(k)
        return cache

    def too_long(self, text: str) -> int | None:
        n = len(self.tok(self.template.render(self.tok, text))["input_ids"])
        return n if n > self.cfg.max_input_tokens else None

    def rewrite(self, records: list[tuple[int, int, str]]) -> list[dict]:
        """``records``: (index, line, text). One provenance dict per record, in order."""
        c = self.cfg
        t0 = time.perf_counter()
        results, work = [], []
        for index, line, text in records:
            n = self.too_long(text)
            base = {"index": index, "line": line, "original": text}
            if n is not None:
                results.append(dict(base, status="skipped", reason=f"prompt has {n} tokens > max_input_tokens "
                                                                       f"{c.max_input_tokens}"))
            else:
                results.append(base)
                work.append(len(results) - 1)
        t1 = time.perf_counter()
        gens = self.generate([results[i]["original"] for i in work], [results[i]["index"] for i in work]) if work else []
        t2 = time.perf_counter()
        # extraction and de-duplication
        cand_lists = []
        for g in gens:
            answers = [self.template.extract(x) for x in g]
            keep = dedupe(answers)
            cand_lists.append([(answers[j], j) for j in keep])
        originals = [results[i]["original"] for i in work]
        flat = [a for cl in cand_lists for a, _ in cl]
        t3 = time.perf_counter()
        tox = self.scorer.score(originals + flat) if work else np.zeros(0)
        t4 = time.perf_counter()
        emb = self.embedder.encode(originals + flat) if work else np.zeros((0, 1))
        t5 = time.perf_counter()
        n0, pos = len(originals), len(originals)
        for w, (ri, cl) in enumerate(zip(work, cand_lists)):
            r = results[ri]
            r["tox_before"] = float(tox[w])
            r["raw_generations"] = len(gens[w])
            if not cl:
                r.update(status="no_candidate", rewrite=r["original"], temperature=None, tox_after=float(tox[w]),
                         similarity=1.0, score=None, candidates=[])
                continue
            sl = slice(pos, pos + len(cl))
            pos += len(cl)
            ctox = tox[sl]
            cos = emb[sl] @ emb[w]
            fs = fusion_scores(ctox, cos, c.lam)
            b = int(np.argmax(fs))
            j = cl[b][1]
            r.update(status="ok", rewrite=cl[b][0], temperature=c.temperatures[j // c.samples_per_temperature],
                     sample=j % c.samples_per_temperature, tox_after=float(ctox[b]), similarity=float(cos[b]),
                     score=float(fs[b]),
                     candidates=[{"text": a, "temperature": c.temperatures[jj // c.samples_per_temperature],
                                  "tox": round(float(ctox[q]), 5), "similarity": round(float(cos[q]), 5),
                                  "score": round(float(fs[q]), 5)} for q, (a, jj) in enumerate(cl)])
        assert pos == n0 + len(flat)
        t6 = time.perf_counter()
        self.timing["generate"] += t2 - t1
        self.timing["score"] += t4 - t3
        self.timing["embed"] += t5 - t4
        self.timing["other"] += (t1 - t0) + (t3 - t2) + (t6 - t5)
        return results


class _TokenStop(StoppingCriteria):
    def __init__(self, ids, vocab, device):
        self.mask = torch.zeros(vocab, dtype=torch.bool, device=device)
        self.mask[torch.tensor(ids, dtype=torch.long)] = True

    def __call__(self, input_ids, scores, **kwargs):
        return self.mask[input_ids[:, -1]]
