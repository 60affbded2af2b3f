"""Reading prompt sets and text corpora.

Formats (detected per file):
- RealToxicityPrompts JSONL: ``{"prompt": {"text": ..., "toxicity": ...}, "challenging": ...}``;
- ``{"text": ...}`` JSONL (any field with ``field=``);
- ToxiGen prompt files (``hate_*.txt`` / ``neutral_*.txt``): one prompt a line, with literal
  ``\\n`` escapes that are turned into real newlines;
- plain text: one item a line.
Malformed JSONL lines are reported (with their line numbers) and skipped, never silently dropped.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field

from .errors import check_input_file


@dataclass
class Prompt:
    text: str
    meta: dict = field(default_factory=dict)


@dataclass
class ReadReport:
    path: str
    read: int = 0
    kept: int = 0
    malformed: list = field(default_factory=list)  # (line number, reason)
    filtered: int = 0

    def summary(self) -> str:
        s = f"{self.path}: {self.kept} kept of {self.read} lines"
        if self.filtered:
            s += f", {self.filtered} filtered out"
        if self.malformed:
            shown = ", ".join(f"line {n} ({why})" for n, why in self.malformed[:5])
            s += f", {len(self.malformed)} malformed and skipped: {shown}{' ...' if len(self.malformed) > 5 else ''}"
        return s


def get_field(obj, dotted):
    """``obj["a"]["b"]`` for ``dotted = "a.b"``; None where a level is missing or not a dict."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


_get = get_field


def detect_format(path: str) -> str:
    name = os.path.basename(path)
    if path.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.startswith(("hate_", "neutral_")) and name.endswith(".txt"):
        return "toxigen"
    return "text"


def read_prompts(
    path: str,
    *,
    field: str | None = None,
    min_toxicity: float | None = None,
    max_toxicity: float | None = None,
    challenging: bool | None = None,
    limit: int | None = None,
    seed: int = 0,
    report: ReadReport | None = None,
    warn: bool = True,
) -> list[Prompt]:
    """Read prompts (or texts) from ``path``; filters apply to RTP files that carry the fields.

    ``limit`` takes a seeded random subset (kept in file order), so that ``--limit 50`` with
    the same seed is the same 50 prompts on every run.
    """
    check_input_file(path, "prompt file")
    fmt = detect_format(path)
    rep = report or ReadReport(path)
    out: list[Prompt] = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            raw = line.rstrip("\n")
            if not raw.strip():
                continue
            rep.read += 1
            if fmt == "jsonl":
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    rep.malformed.append((n, f"invalid JSON: {exc.msg}"))
                    continue
                if not isinstance(obj, dict):
                    rep.malformed.append((n, "not a JSON object"))
                    continue
                text = _get(obj, field) if field else (_get(obj, "prompt.text") if isinstance(obj.get("prompt"), dict) else obj.get("text"))
                if text is None and not field and isinstance(obj.get("prompt"), str):
                    text = obj["prompt"]
                if not isinstance(text, str):
                    rep.malformed.append((n, f"no text field ({field or 'prompt.text or text'})"))
                    continue
                meta = {"line": n}
                tox = _get(obj, "prompt.toxicity")
                if tox is None:
                    tox = obj.get("toxicity")
                if tox is not None:
                    meta["toxicity"] = tox
                if "challenging" in obj:
                    meta["challenging"] = obj["challenging"]
                if min_toxicity is not None and (tox is None or tox < min_toxicity):
                    rep.filtered += 1
                    continue
                if max_toxicity is not None and (tox is None or tox > max_toxicity):
                    rep.filtered += 1
                    continue
                if challenging is not None and obj.get("challenging") is not None and bool(obj["challenging"]) != challenging:
                    rep.filtered += 1
                    continue
            elif fmt == "toxigen":
                text = raw.replace("\\n", "\n")
                meta = {"line": n, "label": 1 if os.path.basename(path).startswith("hate_") else 0}
            else:
                text, meta = raw, {"line": n}
            if not text.strip():
                rep.malformed.append((n, "empty text"))
                continue
            out.append(Prompt(text, meta))
    if limit is not None and limit < len(out):
        rng = random.Random(seed)
        keep = sorted(rng.sample(range(len(out)), limit))
        out = [out[i] for i in keep]
    rep.kept = len(out)
    if warn and rep.malformed:
        print(f"warning: {rep.summary()}", file=sys.stderr)
    return out


def split_items(items: list, *, holdout: float, seed: int = 0) -> tuple[list, list]:
    """Deterministic split into (train, held-out) by a seeded shuffle of indices."""
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    cut = int(round(len(items) * (1 - holdout)))
    train = sorted(idx[:cut])
    held = sorted(idx[cut:])
    return [items[i] for i in train], [items[i] for i in held]
