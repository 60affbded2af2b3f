"""``detox rewrite``: stream a corpus through the rewriter, resumably, on one process or on Ray.

Work directory ``OUT.hspd/``:
    meta.json          the settings (their hash must match to resume)
    parts/part-N.jsonl provenance records, one per text, appended one shard at a time with
                       flush + fsync; every part file is in increasing text index order
    provenance.jsonl   all parts merged in text order (at the end)
    summary.json, report.md, rewrite.png   the summary report (at the end)
and ``OUT`` itself: the corpus with each text replaced by its rewrite, in the input's format.

Resume: on start every part file is read back, a torn last line (a kill during a write) is cut
off, and the indices found there are done; shards (``batch_size`` consecutive texts) with a
missing text are recomputed as a whole (so the batch composition, and so the output, is the
same as in an uninterrupted run) and only the missing texts are written. Memory holds one shard
(or one Ray window) of texts and a bitmap of the done indices, not the corpus.
"""

from __future__ import annotations

import heapq
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Iterator

import numpy as np

from ..errors import UserError
from ..resumable import JsonlAppender, check_settings, read_records, write_atomic, write_json_atomic, write_settings
from .corpus import Malformed, count_rows, detect_format, iter_records, warn_malformed, write_corpus
from .pipeline import RewriteConfig

BINS = 20


class Bitmap:
    def __init__(self):
        self.bits = bytearray()
        self.count = 0

    def add(self, i: int) -> bool:
        b, m = divmod(i, 8)
        if b >= len(self.bits):
            self.bits.extend(bytes(b + 1 - len(self.bits) + 1024))
        if self.bits[b] & (1 << m):
            return False
        self.bits[b] |= 1 << m
        self.count += 1
        return True

    def __contains__(self, i: int) -> bool:
        b, m = divmod(i, 8)
        return b < len(self.bits) and bool(self.bits[b] & (1 << m))


def work_dir_for(out: str) -> str:
    return out + ".hspd"


class PartStore:
    def __init__(self, work: str):
        self.dir = os.path.join(work, "parts")
        os.makedirs(self.dir, exist_ok=True)
        self.done = Bitmap()
        self.dupes = 0
        for name in self.part_files():
            # the indices only (memory does not grow with the corpus); a torn or corrupt tail is cut off
            for i in read_records(name, lambda r: r["index"], note=True):
                if not self.done.add(i):
                    self.dupes += 1
        self.f = None
        self._new_part()

    def _new_part(self) -> None:
        """Appends go to a fresh part file (each part is sorted by index: see :meth:`merged`)."""
        self.close()
        n = len(self.part_files())
        self.path = os.path.join(self.dir, f"part-{n:05d}.jsonl")
        while os.path.exists(self.path):
            n += 1
            self.path = os.path.join(self.dir, f"part-{n:05d}.jsonl")
        self.last = -1

    def part_files(self) -> list[str]:
        return sorted(os.path.join(self.dir, p) for p in os.listdir(self.dir) if p.startswith("part-") and
                      p.endswith(".jsonl"))

    def append(self, results: list[dict]) -> int:
        new = [r for r in sorted(results, key=lambda r: r["index"]) if r["index"] not in self.done]
        if not new:
            return 0
        if new[0]["index"] < self.last:
            # results out of order (a Ray shard that finished early): a new part keeps each part sorted
            self._new_part()
        if self.f is None:
            self.f = JsonlAppender(self.path)
        self.f.append(new)
        for r in new:
            self.done.add(r["index"])
        self.last = new[-1]["index"]
        return len(new)

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None

    def merged(self) -> Iterator[dict]:
        """All records in index order (each part is sorted; a k-way merge)."""
        files = [open(p, encoding="utf-8") for p in self.part_files()]
        try:
            streams = [(json.loads(line) for line in f) for f in files]
            last = -1
            for r in heapq.merge(*streams, key=lambda r: r["index"]):
                if r["index"] == last:
                    continue  # a duplicate could only come from a crash between two writers; keep the first
                last = r["index"]
                yield r
        finally:
            for f in files:
                f.close()


def iter_shards(path, fmt, text_field, malformed, limit, size, max_chars):
    shard = []
    for rec in iter_records(path, fmt, text_field, malformed, max_chars):
        if limit is not None and rec.index >= limit:
            break
        shard.append((rec.index, rec.line, rec.text))
        if len(shard) == size:
            yield shard
            shard = []
    if shard:
        yield shard


def _fingerprint(path: str, span: int = 1 << 20) -> str:
    """A cheap identity of the input: SHA-256 of its size, first and last MiB (an edited input of the
    same size is refused on resume, without reading a large corpus whole)."""
    import hashlib

    h = hashlib.sha256()
    size = os.path.getsize(path)
    h.update(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            h.update(f.read(span))
    return h.hexdigest()[:16]


def _check_meta(work: str, meta: dict, overwrite: bool) -> None:
    path = os.path.join(work, "meta.json")
    if not overwrite and os.path.exists(path):
        before = json.load(open(path)).get("limit", None)
        now = meta["limit"]
        if now is not None and (before is None or before > now):
            raise UserError(f"{work} holds a run over {'all' if before is None else before} texts; --limit {now} "
                            f"would shrink its output to {now}: pass --overwrite to start over, or a --limit >= "
                            f"{'all' if before is None else before}")
    # max_chars decides which lines are valid records, so it fixes the text numbering too
    if not overwrite and check_settings(
            path, meta, ("key", "input", "input_bytes", "input_sha", "text_field", "format", "max_chars"),
            what="a run with other settings or input",
            hint="rerun with the same options to resume, or pass --overwrite to start over"):
        write_settings(path, meta)  # the same run; a larger --limit is recorded, so it is never shrunk later
        return
    if overwrite and os.path.isdir(work):
        import shutil

        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    write_settings(path, meta)


def run_rewrite(input_path: str, out: str, cfg: RewriteConfig, *, fmt: str | None = None, text_field: str = "text",
                limit: int | None = None, engine: str = "local", workers: int = 2, window: int = 64,
                overwrite: bool = False, progress: bool = True, max_chars: int = 20000, ray_address: str | None = None,
                _rewriter=None, _stop_after_shards: int | None = None) -> dict:
    from tqdm.auto import tqdm

    cfg.validate()
    if not os.path.exists(input_path):
        raise FileNotFoundError(f"input not found: {input_path}")
    fmt = detect_format(input_path, fmt)
    work = work_dir_for(out)
    meta = {"key": cfg.key(), "input": os.path.abspath(input_path), "input_bytes": os.path.getsize(input_path),
            "input_sha": _fingerprint(input_path), "format": fmt, "text_field": text_field, "max_chars": max_chars,
            "limit": limit, "config": asdict(cfg)}
    _check_meta(work, meta, overwrite)
    store = PartStore(work)
    total = count_rows(input_path, fmt)
    if limit is not None:
        total = min(total, limit)
    bad = Malformed()
    bar = tqdm(total=total, initial=0, desc=f"rewrite ({cfg.mode})", unit="text", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    shards = iter_shards(input_path, fmt, text_field, bad, limit, cfg.batch_size, max_chars)
    timing = {}
    t0 = time.time()
    written = 0
    try:
        if engine == "local":
            rw = _rewriter
            ran = 0
            for shard in shards:
                if all(i in store.done for i, _, _ in shard):
                    bar.update(len(shard))
                    continue
                if rw is None:
                    from .pipeline import Rewriter

                    rw = Rewriter(cfg)
                written += store.append(rw.rewrite(shard))
                bar.update(len(shard))
                ran += 1
                if _stop_after_shards is not None and ran >= _stop_after_shards:
                    return {"stopped": True, "written": written}
            timing = dict(rw.timing) if rw is not None else {}
        elif engine == "ray":
            from .ray_engine import run_on_ray

            written, timing = run_on_ray(shards, store, cfg, bar, workers=workers, window=window, address=ray_address)
        else:
            raise ValueError(f"unknown engine {engine!r}; use local or ray")
    finally:
        bar.close()
        store.close()
    warn_malformed(bad, input_path)
    elapsed = time.time() - t0
    return finish(input_path, out, store, cfg, fmt=fmt, text_field=text_field, limit=limit, bad=bad,
                  timing=timing, elapsed=elapsed, written=written, max_chars=max_chars, engine=engine)


def finish(input_path, out, store, cfg, *, fmt, text_field, limit, bad, timing, elapsed, written, max_chars, engine):
    work = work_dir_for(out)
    prov = os.path.join(work, "provenance.jsonl")
    stats = Summary()

    def records():  # a rerun with a smaller --limit reports on that prefix only
        for r in store.merged():
            if limit is None or r["index"] < limit:
                yield r

    with open(prov + ".tmp", "w", encoding="utf-8") as f:
        for r in records():
            stats.add(r)
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(prov + ".tmp", prov)

    def rewrites():
        for r in records():
            if r.get("status") in ("ok", "no_candidate"):
                yield r["index"], r["rewrite"]

    n_out = write_corpus(input_path, out, rewrites(), fmt=fmt, text_field=text_field, max_chars=max_chars, limit=limit)
    summary = stats.result()
    summary.update(
        input=os.path.abspath(input_path), output=os.path.abspath(out), format=fmt, records_written=n_out,
        malformed=len(bad.lines), malformed_lines=[{"line": n, "reason": w} for n, w in bad.lines[:1000]],
        lines_read=bad.read, engine=engine, config=asdict(cfg), seconds_this_run=elapsed,
        texts_this_run=written, texts_per_hour_this_run=(written / elapsed * 3600 if elapsed > 0 and written else None),
        time_shares=_shares(timing), timing_seconds=timing, provenance=prov)
    write_json_atomic(os.path.join(work, "summary.json"), summary)
    write_report(summary, stats, work)
    return summary


def _shares(t: dict) -> dict:
    tot = sum(t.values())
    return {k: v / tot for k, v in t.items()} if tot > 0 else {}


class Summary:
    """Running statistics (constant memory): counts, sums and fixed-bin histograms."""

    def __init__(self):
        self.n = {"ok": 0, "no_candidate": 0, "skipped": 0}
        self.sums = {"tox_before": 0.0, "tox_after": 0.0, "similarity": 0.0}
        self.toxic = {"before": 0, "after": 0}
        self.m = 0
        self.hist = {k: np.zeros(BINS, dtype=np.int64) for k in ("tox_before", "tox_after", "similarity")}
        self.temps = {}

    def add(self, r):
        st = r.get("status", "ok")
        self.n[st] = self.n.get(st, 0) + 1
        if st == "skipped":
            return
        self.m += 1
        for k in self.sums:
            v = float(r[k])
            self.sums[k] += v
            lo = -1.0 if k == "similarity" else 0.0
            b = min(BINS - 1, max(0, int((v - lo) / (1.0 - lo) * BINS)))
            self.hist[k][b] += 1
        self.toxic["before"] += r["tox_before"] > 0.5
        self.toxic["after"] += r["tox_after"] > 0.5
        if r.get("temperature") is not None:
            t = str(r["temperature"])
            self.temps[t] = self.temps.get(t, 0) + 1

    def result(self) -> dict:
        m = max(self.m, 1)
        return {"texts": sum(self.n.values()), "counts": dict(self.n),
                "mean_toxicity_before": self.sums["tox_before"] / m if self.m else None,
                "mean_toxicity_after": self.sums["tox_after"] / m if self.m else None,
                "mean_similarity": self.sums["similarity"] / m if self.m else None,
                "toxic_share_before": self.toxic["before"] / m if self.m else None,
                "toxic_share_after": self.toxic["after"] / m if self.m else None,
                "chosen_temperatures": self.temps,
                "histograms": {k: v.tolist() for k, v in self.hist.items()}}


def write_report(summary: dict, stats: Summary, work: str) -> None:
    plot = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        edges = np.linspace(0, 1, BINS + 1)
        w = edges[1] - edges[0]
        ax[0].bar(edges[:-1], stats.hist["tox_before"], width=w, align="edge", alpha=0.6, label="before")
        ax[0].bar(edges[:-1], stats.hist["tox_after"], width=w, align="edge", alpha=0.6, label="after")
        ax[0].set_xlabel("toxicity")
        ax[0].set_ylabel("texts")
        ax[0].legend()
        se = np.linspace(-1, 1, BINS + 1)
        ax[1].bar(se[:-1], stats.hist["similarity"], width=se[1] - se[0], align="edge", color="C2")
        ax[1].set_xlabel("cosine similarity (original, rewrite)")
        fig.suptitle(f"detox rewrite ({summary['config']['mode']}): {summary['texts']} texts")
        fig.tight_layout()
        plot = os.path.join(work, "rewrite.png")
        fig.savefig(plot, dpi=100)
        plt.close(fig)
    except Exception as e:  # the report is still written without the plot
        print(f"warning: no plot ({type(e).__name__}: {e})", file=sys.stderr)

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    c = summary["config"]
    lines = [
        f"# detox rewrite: {os.path.basename(summary['input'])} -> {os.path.basename(summary['output'])}", "",
        f"mode `{c['mode']}`, model `{c['model']}`, toxic model `{c['toxic_model'] or 'embedded'}`, template "
        f"`{c['template']}`, temperatures {c['temperatures']} x {c['samples_per_temperature']}, top-p {c['top_p']}, "
        f"{c['max_new_tokens']} new tokens, lambda {c['lam']}, scorer `{c['scorer'] or 'default'}`, seed {c['seed']}", "",
        "| texts | rewritten | no candidate (kept) | skipped (too long) | malformed lines |",
        "|---|---|---|---|---|",
        f"| {summary['texts']} | {summary['counts'].get('ok', 0)} | {summary['counts'].get('no_candidate', 0)} | "
        f"{summary['counts'].get('skipped', 0)} | {summary['malformed']} |", "",
        "| mean toxicity before | after | share > 0.5 before | after | mean similarity |", "|---|---|---|---|---|",
        f"| {f(summary['mean_toxicity_before'])} | {f(summary['mean_toxicity_after'])} | "
        f"{f(summary['toxic_share_before'])} | {f(summary['toxic_share_after'])} | {f(summary['mean_similarity'])} |", "",
    ]
    if summary.get("texts_per_hour_this_run"):
        sh = ", ".join(f"{k} {v:.0%}" for k, v in summary["time_shares"].items())
        lines += [f"This run: {summary['texts_this_run']} texts in {summary['seconds_this_run']:.0f} s "
                  f"({summary['texts_per_hour_this_run']:.0f} texts/hour); time: {sh}.", ""]
    if summary["malformed"]:
        lines += ["Malformed input lines (skipped): " + ", ".join(
            f"{m['line']} ({m['reason']})" for m in summary["malformed_lines"][:20]), ""]
    if plot:
        lines += ["![toxicity and similarity](rewrite.png)", ""]
    lines += [f"Per-text provenance: `{os.path.basename(summary['provenance'])}`.", ""]
    write_atomic(os.path.join(work, "report.md"), "\n".join(lines))
