"""CMD phase 2: training (docs/methods/context-aware-self-detoxification.md) on the HuggingFace ``Trainer``.

Loss = LM loss on the tokens after ``# Let's detoxify step by step.`` + ``contrastive_weight`` (0.5)
x the toxic contrastive loss (:func:`detox.cmd.loss.contrastive_loss`, InfoNCE, cosine, tau = 1):

- positive ``z+``: the training text's own continuation (the least toxic one), mean-pooled over
  the last hidden states of its tokens, taken from the LM forward (no extra pass);
- anchor ``z``: a continuation the model samples itself (``anchor_tokens`` = 20, top-p 0.9) after
  the same chain prefix (``... # Generation:``), then run forward with gradients and mean-pooled;
- negatives: the toxic continuations (up to 3) after the same prefix, mean-pooled the same way.

Only samples with at least one negative enter the contrastive loss (the loss of a group without
one is exactly 0), so anchors are sampled and negatives run only for them. With
``contrastive_weight = 0`` (the ablation) none of this runs.

Being a ``Trainer`` subclass (``compute_loss``), the same code is meant to run under
``accelerate launch`` / ``torchrun`` on many GPUs (only single-process CPU runs have been tried; the
step makes three forward passes before one backward, which DDP has not been checked with). LoRA through ``peft`` (r 8, alpha 16, dropout
0.05 on the attention projections, chosen from the architecture by :func:`lora_targets`: GPT-2's
``c_attn`` as in the authors' code, ``q_proj k_proj v_proj o_proj`` for the Llama family, peft's
own choice for other architectures; ``lora_target_modules`` overrides) or full fine-tuning; lr 5e-4
cosine, warmup 3 %.

Output directory:
    checkpoints/checkpoint-N/  the Trainer's checkpoints (rerunning the command resumes from the last)
    config.json, model.safetensors, tokenizer files   the final model (LoRA merged)
    cmd_training.json          configuration, data, loss curves (LM and contrastive)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from . import chain as C
from .loss import contrastive_loss, mean_pool


@dataclass
class CMDTrainConfig:
    steps: int = 100
    batch_size: int = 8
    lr: float = 5e-4
    warmup_ratio: float = 0.03
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: tuple | None = None  # None: chosen from the architecture (lora_targets)
    contrastive_weight: float = 0.5
    tau: float = 1.0
    anchor_tokens: int = 20
    anchor_top_p: float = 0.9
    max_negatives: int = 3
    max_length: int = 192
    save_steps: int = 10
    seed: int = 0


def load_cmd_data(path: str) -> list[dict]:
    """The kept samples of a ``cmd-synthesize`` directory (or its ``train.jsonl``)."""
    if os.path.isdir(path):
        path = os.path.join(path, "train.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no CMD data at {path}: run `detox cmd-synthesize --out DIR` first")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {n}: invalid JSON ({exc.msg})") from None
            for k in ("text", "positive"):
                if not isinstance(r.get(k), str) or not r[k].strip():
                    raise ValueError(f"{path}, line {n}: missing {k!r}")
            if C.MARKER not in r["text"] or C.GENERATION not in r["text"]:
                raise ValueError(f"{path}, line {n}: the text is not a CMD chain (no marker / generation step)")
            rows.append(r)
    if not rows:
        raise ValueError(f"{path} holds no training samples (did every prompt get dropped? see records.jsonl)")
    return rows


def split_too_long(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], list[dict]]:
    """(rows that fit, rows whose chain is longer than ``max_length`` tokens). Truncating the latter
    would cut the generation step, so their positive and LM target would be lost: they are skipped."""
    fit, long = [], []
    for r in rows:
        (fit if len(tokenizer(r["text"])["input_ids"]) <= max_length else long).append(r)
    return fit, long


class CMDCollator:
    """Tokenises a batch: the chain (labels after the marker, positive-token mask) and, for the
    samples with negatives, the chain prefix (left-padded, for anchor sampling) and the
    prefix + negative sequences (right-padded, with their pooling masks)."""

    def __init__(self, tokenizer, max_length: int = 192, max_negatives: int = 3, contrastive: bool = True):
        self.tok, self.max_length, self.max_negatives, self.contrastive = tokenizer, max_length, max_negatives, contrastive

    def _spans(self, texts, starts, ends, side):
        enc = self.tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                       return_offsets_mapping=True, padding_side=side)
        off = enc.pop("offset_mapping")
        s = torch.tensor(starts).unsqueeze(1)
        e = torch.tensor(ends).unsqueeze(1)
        inside = (off[..., 0] >= s) & (off[..., 1] <= e) & (off[..., 1] > off[..., 0]) & enc["attention_mask"].bool()
        return enc, off, inside

    def __call__(self, rows: list[dict]) -> dict:
        texts = [r["text"] for r in rows]
        gen_at = [t.index(C.GENERATION) + len(C.GENERATION) for t in texts]
        marker_end = [t.index(C.MARKER) + len(C.MARKER) for t in texts]
        enc, off, pos = self._spans(texts, gen_at, [len(t) - len(C.END) for t in texts], "right")
        labels = enc["input_ids"].clone()
        after = off[..., 0] >= torch.tensor(marker_end).unsqueeze(1)
        labels[~(after & enc["attention_mask"].bool())] = -100
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels,
                 "pos_mask": pos.long()}
        if not self.contrastive:
            return batch
        groups = [i for i, r in enumerate(rows) if r.get("negatives")]
        batch["cl_rows"] = torch.tensor(groups, dtype=torch.long)
        if not groups:
            return batch
        ctx = [texts[i][:gen_at[i]] for i in groups]
        cenc = self.tok(ctx, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
                        padding_side="left")
        batch["ctx_ids"], batch["ctx_mask"] = cenc["input_ids"], cenc["attention_mask"]
        neg_texts, starts, ends, slot = [], [], [], []
        for g, i in enumerate(groups):
            for k, n in enumerate(rows[i]["negatives"][:self.max_negatives]):
                t = f"{ctx[g]} {n.strip()}"
                neg_texts.append(t)
                starts.append(len(ctx[g]))
                ends.append(len(t))
                slot.append(g * self.max_negatives + k)
        nenc, _, nin = self._spans(neg_texts, starts, ends, "right")
        batch.update(neg_ids=nenc["input_ids"], neg_attention=nenc["attention_mask"], neg_pool=nin.long(),
                     neg_slot=torch.tensor(slot, dtype=torch.long))
        return batch


def _forward_pooled(model, ids, attn, pool):
    pos_ids = (attn.cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos_ids, output_hidden_states=True)
    return mean_pool(out.hidden_states[-1], pool)


class CMDTrainer(Trainer):
    """``Trainer`` with the CMD objective (see the module docstring)."""

    def __init__(self, *args, cmd_config: CMDTrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.cmd = cmd_config
        self._parts = {"lm": [], "contrastive": []}

    def _sample_anchor(self, model, ctx_ids, ctx_mask):
        m = self.accelerator.unwrap_model(model)
        was = m.training
        m.eval()
        tok = self.processing_class
        with torch.no_grad():
            out = m.generate(input_ids=ctx_ids, attention_mask=ctx_mask, do_sample=True, top_p=self.cmd.anchor_top_p,
                             top_k=0, max_new_tokens=self.cmd.anchor_tokens, pad_token_id=tok.pad_token_id)
        m.train(was)
        new = out[:, ctx_ids.shape[1]:]
        eos = tok.eos_token_id
        seen_eos = (new == eos).cumsum(1) > 0 if eos is not None else torch.zeros_like(new, dtype=torch.bool)
        new_mask = (~seen_eos).long()
        return torch.cat([ctx_ids, new], 1), torch.cat([ctx_mask, new_mask], 1), torch.cat(
            [torch.zeros_like(ctx_mask), new_mask], 1)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        pos_mask = inputs.pop("pos_mask")
        cl = {k: inputs.pop(k) for k in ("cl_rows", "ctx_ids", "ctx_mask", "neg_ids", "neg_attention", "neg_pool",
                                          "neg_slot") if k in inputs}
        want_cl = self.cmd.contrastive_weight > 0 and "ctx_ids" in cl
        out = model(**inputs, output_hidden_states=want_cl)
        lm = out.loss
        loss = lm
        c_loss = torch.zeros((), device=lm.device)
        if want_cl:
            rows = cl["cl_rows"]
            z_pos = mean_pool(out.hidden_states[-1][rows], pos_mask[rows])
            a_ids, a_attn, a_pool = self._sample_anchor(model, cl["ctx_ids"], cl["ctx_mask"])
            z = _forward_pooled(model, a_ids, a_attn, a_pool)
            z_neg_flat = _forward_pooled(model, cl["neg_ids"], cl["neg_attention"], cl["neg_pool"])
            G, K, H = rows.shape[0], self.cmd.max_negatives, z.shape[-1]
            z_neg = z_neg_flat.new_zeros(G * K, H).index_copy(0, cl["neg_slot"], z_neg_flat).view(G, K, H)
            # a negative truncated to nothing (an over-long chain) pools to a zero vector: not a negative
            has_tokens = cl["neg_pool"].bool().any(1)
            valid = torch.zeros(G * K, dtype=torch.bool, device=z.device).index_copy(0, cl["neg_slot"], has_tokens).view(G, K)
            c_loss = contrastive_loss(z, z_pos, z_neg, valid, tau=self.cmd.tau)
            loss = lm + self.cmd.contrastive_weight * c_loss
        self._parts["lm"].append(lm.detach())
        self._parts["contrastive"].append(c_loss.detach())
        return (loss, out) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        for k, v in self._parts.items():  # the mean of each part since the last log (one sync per log, not per step)
            if v:
                logs[f"{k}_loss"] = round(float(torch.stack(v).mean()), 4)
                v.clear()
        super().log(logs, *args, **kwargs)




_LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_OWN_TARGETS = {"gpt2": ("c_attn",)}  # the authors' CMD code (GPT2-XL): LoRA on c_attn only


def _adaptable_names(model) -> list[str]:
    """The last name part of every module peft can put LoRA on (Linear, GPT-2's Conv1D, ...)."""
    names = []
    for full, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv1d)) or type(mod).__name__ == "Conv1D":
            leaf = full.rsplit(".", 1)[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def lora_targets(model, given=None) -> list[str]:
    """The LoRA target modules for ``model``: ``given`` (names of its modules, checked), else chosen
    from the architecture: GPT-2 ``c_attn`` (the authors'), the Llama family's attention projections
    ``q_proj k_proj v_proj o_proj`` (Llama, SmolLM2, Qwen2, Mistral, Gemma), otherwise peft's default
    for the model type. A clear :class:`~detox.errors.UserError` when none fits."""
    from ..errors import UserError

    names = _adaptable_names(model)
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if given:
        given = [given] if isinstance(given, str) else list(given)
        missing = [t for t in given if t not in names]
        if missing:
            raise UserError(f"--lora-targets {','.join(missing)}: no such module in {type(model).__name__}; its "
                            f"linear modules are {', '.join(names) or 'none'}")
        return given
    if mtype in _OWN_TARGETS:
        return list(_OWN_TARGETS[mtype])
    if all(n in names for n in _LLAMA_ATTENTION):
        return list(_LLAMA_ATTENTION)
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_default
    except ImportError:  # an older or newer peft: only the choices above
        peft_default = {}
    if mtype in peft_default and all(n in names for n in peft_default[mtype]):
        return list(peft_default[mtype])
    raise UserError(f"cannot choose LoRA target modules for {type(model).__name__} (model type {mtype}): give them "
                    f"with --lora-targets, e.g. --lora-targets {','.join(names[:2]) or 'NAME'} (its linear modules: "
                    f"{', '.join(names) or 'none'})")


def _lora(model, cfg: CMDTrainConfig, targets: list[str]):
    from peft import LoraConfig, get_peft_model

    conv1d = any(type(m).__name__ == "Conv1D" and n.rsplit(".", 1)[-1] in targets for n, m in model.named_modules())
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                            target_modules=targets, task_type="CAUSAL_LM",
                                            fan_in_fan_out=conv1d))  # GPT-2's Conv1D stores [in, out]


def _last_complete_checkpoint(ck_dir: str) -> str | None:
    """The newest ``checkpoint-N`` whose save finished. The Trainer writes a checkpoint folder in
    place and ``trainer_state.json`` last, so a run killed while saving leaves a folder without a
    readable state: it is skipped (and reported) instead of crashing the resume."""
    if not os.path.isdir(ck_dir):
        return None
    found = []
    for name in os.listdir(ck_dir):
        if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            found.append((int(name[len("checkpoint-"):]), os.path.join(ck_dir, name)))
    for _, path in sorted(found, reverse=True):
        try:
            with open(os.path.join(path, "trainer_state.json")) as f:
                json.load(f)
            return path
        except (OSError, ValueError):
            print(f"skipping the incomplete checkpoint {path} (its save was interrupted)")
    return None


def train_cmd(data, model, out_dir: str, cfg: CMDTrainConfig | None = None, *, progress: bool = True,
              stop_after: int | None = None, device="auto", dtype=None) -> str | None:
    """Train ``model`` (a name / path, or a ``(model, tokenizer)`` pair) on CMD data; resumes from the
    last checkpoint in ``out_dir``. ``stop_after`` ends the run after that global step (to test
    resuming) and returns None. Returns ``out_dir`` with the final (merged) model.

    ``device``: ``"auto"`` (default: CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
    ``dtype``: the Trainer's mixed precision (``torch.bfloat16``: ``bf16=True``; ``None`` or float32:
    none; the weights stay float32).
    Under ``torchrun``/``accelerate`` the launcher places the processes."""
    from ..devices import resolve_device, resolve_training_dtype
    from ..models import load_causal_lm

    dev = resolve_device(device, what="device")
    amp = resolve_training_dtype(dtype if dtype is not None else torch.float32, dev)
    if dev.type == "cuda" and dev.index is not None and "LOCAL_RANK" not in os.environ:
        torch.cuda.set_device(dev)

    cfg = cfg or CMDTrainConfig()
    rows = data if isinstance(data, list) else load_cmd_data(data)
    m, tok = model if isinstance(model, tuple) else load_causal_lm(model)
    from transformers import set_seed

    rows, too_long = split_too_long(rows, tok, cfg.max_length)
    if too_long:
        print(f"note: skipping {len(too_long)} of {len(rows) + len(too_long)} samples longer than --max-length "
              f"{cfg.max_length} tokens (truncation would cut their generation step and positive), e.g. index "
              f"{too_long[0].get('index', '?')}")
    if not rows:
        raise ValueError(f"every training text is longer than max_length = {cfg.max_length} tokens: raise it")
    set_seed(cfg.seed)  # the LoRA initialisation too: a resumed or repeated run starts from the same weights
    if cfg.lora:
        from dataclasses import replace

        targets = lora_targets(m, cfg.lora_target_modules)
        cfg = replace(cfg, lora_target_modules=tuple(targets))  # recorded as resolved in cmd_training.json
        m = _lora(m, cfg, targets)
    os.makedirs(out_dir, exist_ok=True)
    ck_dir = os.path.join(out_dir, "checkpoints")
    args = TrainingArguments(
        output_dir=ck_dir, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
        lr_scheduler_type="cosine", warmup_steps=max(1, round(cfg.warmup_ratio * cfg.steps)), weight_decay=0.0,
        max_grad_norm=1.0, logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=2,
        seed=cfg.seed, data_seed=cfg.seed, report_to="none", remove_unused_columns=False, disable_tqdm=not progress,
        dataloader_num_workers=0, dataloader_pin_memory=dev.type == "cuda", use_cpu=dev.type == "cpu",
        bf16=amp is torch.bfloat16)
    callbacks = []
    if stop_after is not None:
        class _Stop(TrainerCallback):
            def on_step_end(self, a, state, control, **kw):
                if state.global_step >= stop_after:
                    control.should_save = True
                    control.should_training_stop = True
        callbacks.append(_Stop())
    trainer = CMDTrainer(model=m, args=args, train_dataset=rows, processing_class=tok,
                         data_collator=CMDCollator(tok, cfg.max_length, cfg.max_negatives, cfg.contrastive_weight > 0),
                         cmd_config=cfg, callbacks=callbacks)
    last = _last_complete_checkpoint(ck_dir)
    if last:
        print(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    if stop_after is not None and trainer.state.global_step < cfg.steps:
        return None
    final = trainer.model
    final = final.merge_and_unload() if cfg.lora else final
    final.eval()
    if trainer.is_world_process_zero():
        final.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        hist = trainer.state.log_history
        with open(os.path.join(out_dir, "cmd_training.json"), "w") as f:
            json.dump({"config": asdict(cfg), "data": data if isinstance(data, str) else f"{len(rows)} samples",
                       "samples": len(rows), "with_negatives": sum(1 for r in rows if r.get("negatives")),
                       "skipped_too_long": [r.get("index") for r in too_long],
                       "log_history": hist}, f, indent=1)
    return out_dir
