"""The SASA toxicity subspace (Ko et al., ICLR 2025; ``docs/methods/self-disciplined-sampling.md``): labelled texts, a streaming
closed-form fit, and a small file to save it in.

- Embedding of a text: the LM's last-layer hidden state (``last_hidden_state`` of the decoder,
  i.e. after the final norm, the same tensor the LM head reads) at the last non-pad token.
- Fit: counts, sums and second moments per class accumulated in float64 batch by batch
  (:class:`MomentAccumulator`), then ``mu1`` (non-toxic), ``mu2`` (toxic), the pooled covariance
  ``((n1-1) C1 + (n2-1) C2) / (n1+n2-2)``, its pseudo-inverse from the eigen-decomposition
  (eigenvalues > 1e-6), ``w = pinv (mu1 - mu2) / 2`` normalised to unit length, midpoint
  ``(mu1 + mu2) / 2``. ``margin(h) = w . (h - m)`` is positive on the non-toxic side.
- Data (:func:`read_labelled`): ToxiGen ``hate_*.txt`` (toxic) / ``neutral_*.txt`` (non-toxic)
  files or folders, split into their unique sentences (or whole lines); RTP-style JSONL with a
  score and a threshold; ``{"text", "label"}`` JSONL.
"""

from __future__ import annotations

import glob
import json
import os
import random
import sys
from dataclasses import dataclass, field

import torch

from .errors import MissingFileError

EIG_THRESHOLD = 1e-6
FORMAT_VERSION = 1


# ---------------------------------------------------------------- data


@dataclass
class Labelled:
    texts: list = field(default_factory=list)
    labels: list = field(default_factory=list)  # 1 toxic, 0 non-toxic
    sources: list = field(default_factory=list)  # one summary line per input file

    def counts(self) -> tuple[int, int]:
        n1 = sum(1 for y in self.labels if y == 0)
        return n1, len(self.labels) - n1


from .data import get_field as _get  # noqa: E402


def _toxigen_items(path: str, unit: str) -> list[str]:
    out, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            raw = line.rstrip("\n")
            if not raw.strip():
                continue
            if unit == "lines":
                out.append(raw.replace("\\n", "\n"))
                continue
            for sent in raw.split("\\n"):
                s = sent.strip()
                s = s[1:].strip() if s.startswith("-") else s
                if s and s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def read_labelled(paths, *, text_field: str | None = None, label_field: str = "label",
                  score_field: str | None = None, threshold: float = 0.5, toxigen_unit: str = "sentences",
                  limit_per_label: int | None = None, seed: int = 0) -> Labelled:
    """Labelled texts from files and folders (see the module docstring).

    JSONL: with ``score_field`` (dotted, e.g. ``prompt.toxicity``) the label is ``score > threshold``;
    otherwise ``label_field`` holds 0/1 (or ``"toxic"``/``"hate"`` vs anything else). The text is
    ``text_field`` (default ``text``, or ``prompt.text`` for RTP objects). Texts are deduplicated
    within each class. ``limit_per_label`` keeps a seeded random subset of each class.
    """
    if isinstance(paths, str):
        paths = [paths]
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "hate_*.txt")) + glob.glob(os.path.join(p, "neutral_*.txt"))
                           + glob.glob(os.path.join(p, "*.jsonl")))
            if not found:
                raise FileNotFoundError(f"{p}: no hate_*.txt / neutral_*.txt / *.jsonl files in this folder")
            files += found
        elif os.path.exists(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"labelled data not found: {p}")
    if toxigen_unit not in ("sentences", "lines"):
        raise ValueError(f"toxigen_unit must be 'sentences' or 'lines', got {toxigen_unit!r}")
    per_label: dict[int, dict[str, None]] = {0: {}, 1: {}}
    sources = []
    for path in files:
        name = os.path.basename(path)
        if name.endswith(".txt") and name.startswith(("hate_", "neutral_")):
            y = 1 if name.startswith("hate_") else 0
            items = _toxigen_items(path, toxigen_unit)
            for t in items:
                per_label[y].setdefault(t, None)
            sources.append(f"{path}: {len(items)} {'toxic' if y else 'non-toxic'} {toxigen_unit}")
            continue
        if not name.endswith((".jsonl", ".json")):
            raise ValueError(f"{path}: unknown labelled format (ToxiGen hate_*/neutral_*.txt, or JSONL)")
        n_ok, bad = 0, []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    bad.append((n, f"invalid JSON: {exc.msg}"))
                    continue
                if not isinstance(obj, dict):
                    bad.append((n, "not a JSON object"))
                    continue
                text = _get(obj, text_field) if text_field else (
                    _get(obj, "prompt.text") if isinstance(obj.get("prompt"), dict) else obj.get("text"))
                if not isinstance(text, str) or not text.strip():
                    bad.append((n, "no text"))
                    continue
                if score_field:
                    s = _get(obj, score_field)
                    if not isinstance(s, (int, float)):
                        bad.append((n, f"no numeric {score_field}"))
                        continue
                    y = 1 if s > threshold else 0
                else:
                    lab = _get(obj, label_field)
                    if isinstance(lab, bool) or isinstance(lab, (int, float)):
                        y = 1 if float(lab) > 0.5 else 0
                    elif isinstance(lab, str):
                        y = 1 if lab.lower() in ("1", "toxic", "hate", "true", "offensive") else 0
                    else:
                        bad.append((n, f"no {label_field}"))
                        continue
                per_label[y].setdefault(text, None)
                n_ok += 1
        if bad:
            shown = ", ".join(f"line {a} ({b})" for a, b in bad[:5])
            print(f"warning: {path}: {len(bad)} lines skipped: {shown}{' ...' if len(bad) > 5 else ''}", file=sys.stderr)
        sources.append(f"{path}: {n_ok} labelled lines")
    out = Labelled(sources=sources)
    rng = random.Random(seed)
    for y in (0, 1):
        texts = list(per_label[y])
        if limit_per_label is not None and len(texts) > limit_per_label:
            keep = sorted(rng.sample(range(len(texts)), limit_per_label))
            texts = [texts[i] for i in keep]
        out.texts += texts
        out.labels += [y] * len(texts)
    n1, n2 = out.counts()
    if n1 < 2 or n2 < 2:
        raise ValueError(f"the fit needs at least 2 non-toxic and 2 toxic texts; got {n1} non-toxic and {n2} toxic "
                         f"from {', '.join(files)}")
    return out


# ---------------------------------------------------------------- embeddings


@torch.inference_mode()
def embed(model, tokenizer, texts: list[str], *, max_length: int = 128) -> torch.Tensor:
    """Last-layer hidden state at the last non-pad token of each text: ``[N, D]`` (model dtype)."""
    if any(not t.strip() for t in texts):
        raise ValueError("cannot embed an empty text")
    dev = next(model.parameters()).device
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    h = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    # the last attended position (works for left and right padding)
    last = (mask * torch.arange(mask.shape[1], device=dev)).argmax(-1)
    return h[torch.arange(h.shape[0], device=dev), last]


# ---------------------------------------------------------------- the fit


class MomentAccumulator:
    """Streaming float64 counts, sums and second moments per class (0 non-toxic, 1 toxic)."""

    def __init__(self, dim: int, device="cpu"):
        self.dim = dim
        self.device = torch.device(device)
        self.n = [0, 0]
        self.s = [torch.zeros(dim, dtype=torch.float64, device=self.device) for _ in range(2)]
        self.ss = [torch.zeros(dim, dim, dtype=torch.float64, device=self.device) for _ in range(2)]

    def add(self, h: torch.Tensor, labels) -> None:
        h = h.detach().to(self.device, torch.float64)
        y = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        for c in (0, 1):
            x = h[y == c]
            if x.shape[0]:
                self.n[c] += int(x.shape[0])
                self.s[c] += x.sum(0)
                self.ss[c] += x.T @ x

    def merged(self, other: "MomentAccumulator") -> "MomentAccumulator":
        """The moments of both accumulators' texts together."""
        out = MomentAccumulator(self.dim, device=self.device)
        out.n = [a + b for a, b in zip(self.n, other.n)]
        out.s = [a + b for a, b in zip(self.s, other.s)]
        out.ss = [a + b for a, b in zip(self.ss, other.ss)]
        return out

    def solve(self, eig_threshold: float = EIG_THRESHOLD, shrinkage: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``shrinkage`` = 0 is the spec's fit; ``s > 0`` uses ``Sigma + s * (tr Sigma / D) * I`` (ridge /
        shrinkage LDA), which generalises better when there are few texts per dimension."""
        n1, n2 = self.n
        if n1 < 2 or n2 < 2:
            raise ValueError(f"need at least 2 texts per class, have {n1} non-toxic and {n2} toxic")
        mu1, mu2 = self.s[0] / n1, self.s[1] / n2
        # (n - 1) C = sum x x^T - n mu mu^T
        scatter1 = self.ss[0] - n1 * torch.outer(mu1, mu1)
        scatter2 = self.ss[1] - n2 * torch.outer(mu2, mu2)
        sigma = (scatter1 + scatter2) / (n1 + n2 - 2)
        sigma = (sigma + sigma.T) / 2
        if shrinkage:
            sigma = sigma + float(shrinkage) * torch.trace(sigma) / self.dim * torch.eye(self.dim, dtype=sigma.dtype,
                                                                                         device=sigma.device)
        evals, evecs = torch.linalg.eigh(sigma)
        keep = evals > eig_threshold
        inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
        pinv = (evecs * inv) @ evecs.T
        w = pinv @ (mu1 - mu2) / 2
        norm = torch.linalg.vector_norm(w)
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError("the fitted direction is zero or not finite: the two classes have the same mean")
        w = w / norm
        m = (mu1 + mu2) / 2
        return w.cpu(), m.cpu(), {"n_nontoxic": n1, "n_toxic": n2, "eigenvalues_kept": int(keep.sum()), "dim": self.dim,
                     "shrinkage": float(shrinkage)}


@dataclass
class Subspace:
    direction: torch.Tensor  # [D] float32, unit length
    midpoint: torch.Tensor  # [D] float32
    model: str
    layer: str = "last"  # the decoder's last_hidden_state (after the final norm)
    pooling: str = "last-token"
    info: dict = field(default_factory=dict)

    def margin(self, h: torch.Tensor) -> torch.Tensor:
        return (h.float() - self.midpoint.to(h.device)) @ self.direction.to(h.device)

    def save(self, path: str) -> str:
        from safetensors.torch import save_file

        meta = {"format": "detox-sasa-subspace", "version": str(FORMAT_VERSION), "model": self.model,
                "layer": self.layer, "pooling": self.pooling, "info": json.dumps(self.info)}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        save_file({"direction": self.direction.float().contiguous(), "midpoint": self.midpoint.float().contiguous()},
                  tmp, metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> "Subspace":
        from safetensors import safe_open

        if not os.path.exists(path):
            raise FileNotFoundError(f"subspace file not found: {path} (make one with `detox fit-sasa`)")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "detox-sasa-subspace":
                    raise ValueError(f"{path} is not a SASA subspace file (made by `detox fit-sasa`)")
                d, m = f.get_tensor("direction"), f.get_tensor("midpoint")
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own errors on a bad header)
            raise ValueError(f"{path} is not a readable SASA subspace file ({exc})") from exc
        return cls(d, m, meta.get("model", "?"), meta.get("layer", "last"), meta.get("pooling", "last-token"),
                   json.loads(meta.get("info", "{}")))


# the ridge values `fit-sasa` tries when none is given (0 is the paper's closed-form fit)
SHRINKAGE_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0, 2.0)


def choose_shrinkage(acc: "MomentAccumulator", val_h: torch.Tensor, val_y: list[int],
                     grid=SHRINKAGE_GRID) -> tuple[float, dict]:
    """The shrinkage of ``grid`` whose fit on ``acc`` classifies the validation texts best (ties:
    the smaller shrinkage, i.e. the closer to the paper's fit); also every value's accuracy."""
    if len(val_y) < 2 or len(set(val_y)) < 2:
        raise ValueError("too few texts to choose the shrinkage (need both classes in the validation part of the "
                         "training split): give --shrinkage")
    y = torch.tensor(val_y).bool()
    scores = {}
    for s in grid:
        w, m, _ = acc.solve(shrinkage=s)
        pred_toxic = ((val_h.to(m.device, torch.float64) - m) @ w) < 0
        scores[s] = float((pred_toxic.cpu() == y).float().mean())
    best = max(grid, key=lambda s: (scores[s], -s))
    return float(best), {"validation_n": len(val_y), "accuracy": {str(k): v for k, v in scores.items()}}


def fit_subspace(model, tokenizer, data: Labelled, *, model_name: str = "model", batch_size: int = 32,
                 holdout: float = 0.1, seed: int = 0, max_length: int = 128, progress: bool = True,
                 shrinkage: float | None = None, embeddings_cache: str | None = None,
                 validation: float = 0.2, device=None) -> Subspace:
    """Stream the texts through the model, fit on the training split, report held-out accuracy.

    ``shrinkage``: the ridge of :meth:`MomentAccumulator.solve`; ``None`` chooses it from
    :data:`SHRINKAGE_GRID` by accuracy on a ``validation`` fraction of the *training* split (the
    held-out split is never used to choose), then refits on the whole training split with it.

    Runs where the model is (``device``, when given, must be that device: see :mod:`detox.devices`):
    the embeddings and the float64 moments stay on it; only the fitted direction and midpoint (and
    the ``embeddings_cache``) come back to the host.

    ``embeddings_cache``: a file that keeps the embeddings (``[N, D]`` float32, all in memory) so
    that refitting (another shrinkage, split or seed) does not run the model again; it is keyed by
    the model name and a hash of the texts and ignored when they differ."""
    from tqdm.auto import tqdm

    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if shrinkage is not None and shrinkage < 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    if not 0 < validation < 1:
        raise ValueError(f"validation must be in (0, 1), got {validation}")
    idx = list(range(len(data.texts)))
    rng = random.Random(seed)
    rng.shuffle(idx)
    test, train = [], []
    for c in (0, 1):  # stratified: the same held-out fraction of each class
        cls = [i for i in idx if data.labels[i] == c]
        k = int(round(holdout * len(cls)))
        test += cls[:k]
        train += cls[k:]
    from .devices import check_same_device, dtype_name, model_dtype, resolve_device

    # the texts that choose the shrinkage: a stratified part of the training split
    choose = set()
    if shrinkage is None:
        for c in (0, 1):
            cls = [i for i in train if data.labels[i] == c]
            choose.update(cls[:int(round(validation * len(cls)))])
    dev = check_same_device([("SASA", model)], None if device is None else resolve_device(device, what="device"))
    dev = dev or torch.device("cpu")
    d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    acc = MomentAccumulator(d, device="cpu" if dev.type == "meta" else dev)      # training texts outside `choose`
    acc_val = MomentAccumulator(d, device="cpu" if dev.type == "meta" else dev)  # those in `choose`
    val_h, val_y = [], []
    mdt = model_dtype(model) or torch.float32
    cache_name = model_name if mdt == torch.float32 else f"{model_name}|{dtype_name(mdt)}"  # the precision too
    held_h, held_y = [], []
    cached = _load_embedding_cache(embeddings_cache, data, cache_name) if embeddings_cache else None
    store = [] if (embeddings_cache and cached is None) else None
    order = [(i, True) for i in train] + [(i, False) for i in test]
    bar = tqdm(total=len(order), desc="fit-sasa: embedding", unit="text", disable=not progress or cached is not None)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if cached is not None:
            h = cached[[i for i, _ in chunk]].to(acc.device)
        else:
            h = embed(model, tokenizer, [data.texts[i] for i, _ in chunk], max_length=max_length).float()
            if store is not None:
                store.append((torch.tensor([i for i, _ in chunk]), h.cpu()))
        tr = torch.tensor([t and i not in choose for i, t in chunk])
        va = torch.tensor([i in choose for i, _ in chunk])
        ho = torch.tensor([not t for _, t in chunk])
        ys = [data.labels[i] for i, _ in chunk]
        if tr.any():
            acc.add(h[tr.to(h.device)], [y for y, t in zip(ys, tr.tolist()) if t])
        if va.any():
            acc_val.add(h[va.to(h.device)], [y for y, t in zip(ys, va.tolist()) if t])
            val_h.append(h[va.to(h.device)])
            val_y += [y for y, t in zip(ys, va.tolist()) if t]
        if ho.any():
            held_h.append(h[ho.to(h.device)])
            held_y += [y for y, t in zip(ys, ho.tolist()) if t]
        bar.update(len(chunk))
    bar.close()
    if store:
        _save_embedding_cache(embeddings_cache, data, cache_name, store)
    chosen_by = None
    if shrinkage is None:
        shrinkage, chosen_by = choose_shrinkage(acc, torch.cat(val_h) if val_h else torch.empty(0, d), val_y)
        acc = acc.merged(acc_val)
    w, m, info = acc.solve(shrinkage=shrinkage)
    if chosen_by is not None:
        info["shrinkage_chosen_by"] = chosen_by
    sub = Subspace(w.float(), m.float(), model_name, info=info)
    if held_h:
        hh = torch.cat(held_h)
        pred_toxic = sub.margin(hh) < 0
        yy = torch.tensor(held_y, device=pred_toxic.device).bool()
        info.update(heldout_accuracy=float((pred_toxic == yy).float().mean()), heldout_n=len(held_y),
                    heldout_toxic_recall=float(pred_toxic[yy].float().mean()) if yy.any() else None,
                    heldout_nontoxic_recall=float((~pred_toxic[~yy]).float().mean()) if (~yy).any() else None)
    info.update(holdout=holdout, seed=seed, sources=data.sources, device=str(dev),
                dtype=dtype_name(mdt))
    return sub


def _texts_key(data: Labelled, model_name: str) -> str:
    import hashlib

    h = hashlib.sha256(str(model_name).encode())
    for t, y in zip(data.texts, data.labels):
        h.update(f"{y}\t{t}\n".encode())
    return h.hexdigest()


def _load_embedding_cache(path: str, data: Labelled, model_name: str):
    if not os.path.exists(path):
        return None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if obj.get("key") != _texts_key(data, model_name) or obj["h"].shape[0] != len(data.texts):
        print(f"fit-sasa: {path} holds embeddings of other texts or another model; recomputing", file=sys.stderr)
        return None
    print(f"fit-sasa: using the cached embeddings in {path}", file=sys.stderr)
    return obj["h"]


def _save_embedding_cache(path: str, data: Labelled, model_name: str, store) -> None:
    idx = torch.cat([i for i, _ in store])
    h = torch.cat([x for _, x in store])
    full = torch.empty(len(data.texts), h.shape[1], dtype=torch.float32)
    full[idx] = h
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"key": _texts_key(data, model_name), "h": full}, path + ".tmp")
    os.replace(path + ".tmp", path)


def default_subspace_path(model_name: str) -> str:
    from .assets import detox_home

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(str(model_name).rstrip("/")))
    return str(detox_home() / "sasa" / f"{safe}-toxigen.safetensors")


PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sasa_subspaces")


def resolve_subspace(path: str | None, model_name: str) -> str:
    """The subspace file to use: ``path`` if given; else ``$DETOX_HOME/sasa/<model>-toxigen.safetensors``
    (what ``detox fit-sasa`` writes by default); else the one shipped for the embedded model."""
    if path:
        if not os.path.exists(path):
            raise MissingFileError(f"subspace file not found: {path} (make one with `detox fit-sasa`)")
        return path
    candidates = [default_subspace_path(model_name),
                  os.path.join(PACKAGED, os.path.basename(default_subspace_path(model_name)))]
    for c in candidates:
        if os.path.exists(c):
            return c
    raise MissingFileError(
        f"no SASA subspace for model {model_name!r}: pass --sasa-subspace FILE, or fit one with "
        f"`detox fit-sasa --model {model_name} --data TOXIGEN_DIR` (a folder of ToxiGen hate_*.txt / neutral_*.txt "
        f"files; looked in: {', '.join(candidates)})")
