"""Causal-LM fine-tuning (full or LoRA through ``peft``), resumable, with a progress bar.

Used to make the small toxic model for SoCD / CD / DExperts (``detox train-toxic``) and to
fine-tune a model on a corpus (``detox finetune``). A plain PyTorch loop: the batch at step
``s`` is a function of the seed and ``s`` alone, so a run stopped at any point and restarted
from its last checkpoint continues exactly where it was.

Layout of ``out_dir``:
    checkpoints/step-N/   trainable weights, optimizer, scheduler, RNG state (only the latest kept)
    checkpoints/LATEST    the name of the newest complete checkpoint (written last, atomically)
    config.json, model.safetensors, tokenizer files   the final model (LoRA merged), loadable by
                                                      ``detox.models.load_causal_lm(out_dir)``
    training.json         the configuration, data description and the loss curve
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from .resumable import check_settings, write_settings


@dataclass
class TrainConfig:
    steps: int = 50
    batch_size: int = 8
    max_length: int = 40
    lr: float = 1e-4
    warmup_steps: int = 5
    schedule: str = "cosine"        # after the warm-up: "cosine" decay to 0, or "linear" (HF Trainer's default)
    weight_decay: float = 0.0
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list | str = "all-linear"
    save_every: int = 25
    seed: int = 0
    log_every: int = 1
    extra: dict = field(default_factory=dict)


def _batch_indices(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the batch at ``step``: epochs are seeded permutations of the data."""
    per_epoch = max(1, n // batch_size) if n >= batch_size else 1
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if n < batch_size:
        return [perm[i % n] for i in range(batch_size)]
    return perm[pos * batch_size:(pos + 1) * batch_size]


def _trainable_state(model) -> dict:
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}


def _latest_checkpoint(out_dir: str) -> str | None:
    ptr = os.path.join(out_dir, "checkpoints", "LATEST")
    if not os.path.exists(ptr):
        return None
    name = open(ptr).read().strip()
    path = os.path.join(out_dir, "checkpoints", name)
    return path if os.path.exists(os.path.join(path, "state.pt")) else None


def _save_checkpoint(out_dir, step, model, optimizer, scheduler, losses):
    ck_root = os.path.join(out_dir, "checkpoints")
    os.makedirs(ck_root, exist_ok=True)
    name = f"step-{step}"
    tmp = os.path.join(ck_root, f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.save({"step": step, "weights": _trainable_state(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "losses": losses, "rng": torch.get_rng_state()},
               os.path.join(tmp, "state.pt"))
    final = os.path.join(ck_root, name)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    with open(os.path.join(ck_root, "LATEST.tmp"), "w") as f:
        f.write(name)
    os.replace(os.path.join(ck_root, "LATEST.tmp"), os.path.join(ck_root, "LATEST"))
    # keep the newest only (LATEST points at it; it was complete before LATEST moved)
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(ck_root) if d.startswith("step-"))
    for s in steps[:-1]:
        shutil.rmtree(os.path.join(ck_root, f"step-{s}"), ignore_errors=True)


def _wrap_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def train_causal_lm(model, tokenizer, texts: list[str], out_dir: str, cfg: TrainConfig, *,
                    data_description: str = "", progress: bool = True, stop_after: int | None = None,
                    amp_dtype: torch.dtype | None = None):
    """Fine-tune ``model`` on ``texts``; resumes from ``out_dir`` if a checkpoint is there.

    Trains where ``model`` is. ``amp_dtype``: ``torch.bfloat16`` runs the forward and backward under
    autocast in bfloat16 (mixed precision: the weights and the optimizer stay in the model's dtype);
    ``None`` or ``torch.float32``: no autocast. A run is resumed only with the same ``amp_dtype``.

    ``stop_after`` stops (after checkpointing) once that many steps have run in this call,
    to test interruption. Returns the path of the saved model (``out_dir``).
    """
    if cfg.schedule not in ("cosine", "linear"):
        raise ValueError(f"schedule must be 'cosine' or 'linear', got {cfg.schedule!r}")
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("no training texts (all empty)")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.train()
    if cfg.lora:
        model = _wrap_lora(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_lambda(step):
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        rest = max(1, cfg.steps - cfg.warmup_steps)
        frac = min(1.0, (step - cfg.warmup_steps) / rest)
        return 1.0 - frac if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    start, losses = 0, []
    ck = _latest_checkpoint(out_dir)
    # what the run is: resuming it with other data or settings would mix two trainings in one model
    # (the default schedule is left out, so runs checkpointed before the option existed still resume)
    identity = {"config": {k: v for k, v in asdict(cfg).items()
                           if k != "save_every" and not (k == "schedule" and v == "cosine")},
                "texts_sha256": hashlib.sha256("\0".join(texts).encode()).hexdigest(), "n_texts": len(texts),
                "data": data_description,
                "amp_dtype": None if amp_dtype in (None, torch.float32) else str(amp_dtype).removeprefix("torch.")}
    ident_path = os.path.join(out_dir, "checkpoints", "run.json")
    if ck is not None:
        check_settings(ident_path, identity, keys=["config", "texts_sha256", "n_texts", "amp_dtype"],
                       what="a training run with other data or settings",
                       hint="rerun with the same data and options to resume, or use another --out")
    else:
        os.makedirs(os.path.dirname(ident_path), exist_ok=True)
        write_settings(ident_path, identity)
    if ck is not None:
        state = torch.load(os.path.join(ck, "state.pt"), map_location="cpu", weights_only=False)
        named = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in state["weights"].items():
                named[k].copy_(v)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start, losses = state["step"], state["losses"]
        print(f"resuming from {ck} (step {start} of {cfg.steps})")

    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", disable=not progress)
    ran = 0
    t0 = time.time()
    try:
        for step in range(start, cfg.steps):
            idx = _batch_indices(len(texts), step, cfg.batch_size, cfg.seed)
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                            max_length=cfg.max_length)
            labels = enc["input_ids"].clone()
            labels[enc["attention_mask"] == 0] = -100
            dev = next(model.parameters()).device
            amp = amp_dtype not in (None, torch.float32)
            with torch.autocast(dev.type, dtype=amp_dtype if amp else torch.float32, enabled=amp):
                out = model(input_ids=enc["input_ids"].to(dev), attention_mask=enc["attention_mask"].to(dev),
                            labels=labels.to(dev))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = float(out.loss.detach())
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            ran += 1
            done = step + 1
            if done % cfg.save_every == 0 or done == cfg.steps:
                _save_checkpoint(out_dir, done, model, optimizer, scheduler, losses)
            if stop_after is not None and ran >= stop_after:
                if done % cfg.save_every != 0:
                    _save_checkpoint(out_dir, done, model, optimizer, scheduler, losses)
                return None
    finally:
        bar.close()
        tokenizer.padding_side = side

    model.eval()
    final = model.merge_and_unload() if cfg.lora else model
    final.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump({"config": asdict(cfg), "data": data_description,
                   "texts_sha256": identity["texts_sha256"], "n_texts": len(texts), "losses": losses,
                   "device": str(next(model.parameters()).device), "amp_dtype": identity["amp_dtype"],
                   "seconds_this_run": time.time() - t0}, f, indent=1)
    return out_dir
