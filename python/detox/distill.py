"""UniDetox distillation (``detox unidetox``): detoxifying text distilled from a base/toxic pair,
then a target model fine-tuned on it.

UniDetox (Lu et al., ICLR 2025) detoxifies a model by fine-tuning, not by decoding:

1. **Distil.** Sample texts unconditionally, from the start-of-document token alone, with the rule
   ``s = x - y`` on the plausible set ``{x >= max x + log alpha}`` (``-inf`` elsewhere), where
   ``x`` / ``y`` are the base and the toxic model's logits (the ``unidetox`` method of
   :mod:`detox.methods`). The authors sample 5 x 128 = 640 texts of at most 256 tokens (start
   token included) with HuggingFace's default sampling (``top_k = 50``, ``top_p = 1``), alpha 0.1.
2. **Fine-tune** the target model (any model; the text is plain text) on those texts: all weights,
   learning rate 5e-5, batch 8, 3,000 steps, sequences of 256 tokens, in the authors' runs.

The result is an ordinary model directory: evaluate it with ``detox eval --model DIR/model
--methods none``.

Both stages are resumable. Distilled texts are appended to ``distilled.jsonl`` a batch at a time;
batch ``b`` is sampled with the seed ``batch_seed(seed, b)``, so a run killed at any point and
restarted produces the same file as one that never stopped. Fine-tuning resumes from its last
checkpoint (:func:`detox.training.train_causal_lm`).

Layout of ``out``::

    settings.json     what the run is (models, distillation and training settings)
    distilled.jsonl   {"index": i, "text": ...} per distilled text, in index order
    model/            the fine-tuned model (and its checkpoints/ while training)
    unidetox.json     summary: counts, lengths, the distilled texts' toxicity, where the model is
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import asdict, dataclass

import torch

from .errors import UserError
from .resumable import JsonlAppender, check_settings, read_records, write_json_atomic, write_settings


@dataclass
class DistillConfig:
    """The distillation stage (defaults: the authors')."""

    texts: int = 640            # how many texts to distil
    max_length: int = 256       # tokens per text, the start token included (HF ``max_length``)
    batch_size: int = 128       # texts sampled together (all from the same start token)
    alpha: float = 0.1          # plausibility threshold of the rule
    top_k: int = 50             # HuggingFace's default, which the authors' ``generate`` call keeps
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 1234            # the authors' distillation seed
    start_token: str | None = None   # default: <|endoftext|> if in the vocabulary, else BOS, else EOS

    def check(self) -> None:
        if self.texts < 1 or self.batch_size < 1:
            raise UserError("--texts and --distill-batch-size must be >= 1")
        if self.max_length < 2:
            raise UserError(f"--max-length must be >= 2 (the start token and one more); got {self.max_length}")
        if not 0.0 < self.alpha < 1.0:
            raise UserError(f"--alpha must be in (0, 1); got {self.alpha}")


def start_token_id(tokenizer, start_token: str | None) -> int:
    """The id distillation starts from: ``start_token`` if given (a token of the vocabulary), else
    the start of a document as the model saw it in pre-training: ``<|endoftext|>`` where the
    vocabulary has it (GPT-2 — the authors' model, whose BOS it is —, SmolLM2, Qwen; an instruct
    model's BOS is often a chat-turn marker instead), else the BOS, else the EOS token."""
    vocab = tokenizer.get_vocab()
    if start_token is not None:
        if start_token not in vocab:
            raise UserError(f"--start-token {start_token!r} is not a token of the model's vocabulary")
        return int(vocab[start_token])
    if "<|endoftext|>" in vocab:
        return int(vocab["<|endoftext|>"])
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise UserError("the tokenizer has neither a BOS nor an EOS token: give --start-token")


def distil(generator, cfg: DistillConfig, path: str, *, progress: bool = True) -> list[str]:
    """Distil ``cfg.texts`` texts with the ``unidetox`` rule of ``generator`` (a
    :class:`detox.generation.driver.Generator` for method ``unidetox``) into the JSONL file
    ``path``, resuming what is there; returns the texts in index order."""
    from tqdm.auto import tqdm

    from .generation.driver import batch_seed
    from .methods import Sampling

    cfg.check()
    tok = generator.tokenizer
    start = start_token_id(tok, cfg.start_token)
    done = read_records(path, keep=lambda r: (int(r["index"]), str(r["text"])), note=True)
    # whole batches only (a batch is appended in one write); a partial tail cannot exist
    have = len(done)
    if any(i != j for j, (i, _) in enumerate(done)):
        raise UserError(f"{path} is not a distillation file of this run (indices out of order): use another --out")
    n_batches = -(-cfg.texts // cfg.batch_size)
    bar = tqdm(total=cfg.texts, initial=min(have, cfg.texts), desc="distil", unit="text", disable=not progress)
    dev = generator.models.device
    with JsonlAppender(path) as out, torch.inference_mode():
        for b in range(have // cfg.batch_size, n_batches):
            n = min(cfg.batch_size, cfg.texts - b * cfg.batch_size)
            ids = torch.full((1, 1), start, dtype=torch.long, device=dev)
            mask = torch.ones_like(ids)
            seed = batch_seed(cfg.seed, b)
            s = Sampling(num_samples=n, max_new_tokens=cfg.max_length - 1, top_p=cfg.top_p,
                         temperature=cfg.temperature, do_sample=True, seed=seed, top_k=cfg.top_k)
            torch.manual_seed(seed)
            seqs = generator.impl.decode(ids, mask, s)
            texts = tok.batch_decode(seqs[:, 1:], skip_special_tokens=True)
            out.append({"index": b * cfg.batch_size + j, "text": t} for j, t in enumerate(texts))
            bar.update(n)
    bar.close()
    return [r["text"] for r in read_records(path)][:cfg.texts]


def run(out: str, *, model: str = "smollm2-135m-instruct", toxic_model: str | None = None,
        target_model: str | None = None, distill_cfg: DistillConfig | None = None, train_cfg=None,
        scorer: str | None = None, device="auto", dtype="auto", amp_dtype=None, progress: bool = True) -> dict:
    """The whole UniDetox run into ``out`` (see the module docstring); returns the summary.

    ``device`` / ``dtype``: where and in which precision the texts are distilled (see
    :mod:`detox.devices`); the target is fine-tuned on ``device`` in float32 weights, under autocast
    to ``amp_dtype`` when given (bfloat16 mixed precision)."""
    from .devices import dtype_name, resolve_device, resolve_dtype

    device = resolve_device(device, what="device")
    dtype = resolve_dtype(dtype, device)
    from .generation.driver import Generator
    from .models import load_causal_lm, model_fingerprint
    from .toxic import resolve_toxic_model
    from .training import TrainConfig, train_causal_lm

    dcfg = distill_cfg or DistillConfig()
    tcfg = train_cfg or TrainConfig(steps=3000, batch_size=8, max_length=256, lr=5e-5, warmup_steps=0,
                                    schedule="linear", save_every=250, seed=42)
    dcfg.check()
    target = target_model or model
    os.makedirs(out, exist_ok=True)
    toxic_model = resolve_toxic_model(toxic_model)
    gen = Generator("unidetox", model=model, toxic_model=toxic_model, settings={"alpha": dcfg.alpha},
                    device=device, dtype=dtype)
    identity = {"model": gen.model_name, "toxic_model": gen.toxic_name,
                "model_content": model_fingerprint(model), "toxic_content": model_fingerprint(toxic_model),
                "distill": asdict(dcfg)}
    if dtype != torch.float32:  # the precision changes the texts (float32 keeps the key of earlier runs)
        identity["dtype"] = dtype_name(dtype)
    sp = os.path.join(out, "settings.json")
    if not check_settings(sp, identity, what="a UniDetox run with other models or distillation settings",
                          hint="rerun with the same options to resume, or use another --out (or --overwrite)"):
        write_settings(sp, identity)
    texts = distil(gen, dcfg, os.path.join(out, "distilled.jsonl"), progress=progress)
    del gen
    kept = [t for t in texts if t.strip()]
    if not kept:
        raise UserError("every distilled text is empty (the rule ended each at once): check the models")
    tox = None
    if scorer is not False:
        from .scorers import load_scorer

        sc = load_scorer(scorer, device=device)
        vals = [float(v) for v in sc.score(kept)]
        tox = {"scorer": sc.info()["scorer"], "mean": statistics.fmean(vals),
               "above_0.5": sum(v > 0.5 for v in vals) / len(vals)}
    tm, ttok = load_causal_lm(target, dtype=torch.float32, device=device)
    model_dir = os.path.join(out, "model")
    print(f"unidetox: fine-tuning {target} on {len(kept)} distilled texts: {tcfg.steps} steps, batch "
          f"{tcfg.batch_size}, lr {tcfg.lr}, {'LoRA' if tcfg.lora else 'all weights'} -> {model_dir}", file=sys.stderr)
    train_causal_lm(tm, ttok, kept, model_dir, tcfg, data_description=f"UniDetox distillation {out}",
                    progress=progress, amp_dtype=amp_dtype)
    lens = [len(ttok(t)["input_ids"]) for t in kept]
    summary = {"out": out, "model": model_dir, "target_model": target, "distilled_texts": len(texts),
               "non_empty_texts": len(kept), "mean_tokens": statistics.fmean(lens),
               "distilled_toxicity": tox, "distill": asdict(dcfg), "train": asdict(tcfg),
               "evaluate": f"detox eval --model {model_dir} --methods none"}
    write_json_atomic(os.path.join(out, "unidetox.json"), summary)
    return summary


# --------------------------------------------------------------------------------------------------
# the command


def cmd_unidetox(args) -> int:
    import shutil

    from .errors import OutputLock, check_output_dir
    from .models import check_model_spec
    from .training import TrainConfig

    from .devices import device_dtype_from_args, resolve_training_dtype

    device, dtype = device_dtype_from_args(args)
    amp = resolve_training_dtype(args.dtype, device)
    check_output_dir(args.out)
    for opt in ("model", "toxic_model", "target_model"):
        check_model_spec(getattr(args, opt), "--" + opt.replace("_", "-"))
    if args.scorer is not None:
        from .scorers import check_scorer_spec

        check_scorer_spec(args.scorer)
    dcfg = DistillConfig(texts=args.texts, max_length=args.max_length, batch_size=args.distill_batch_size,
                         alpha=args.alpha, top_k=args.top_k, top_p=args.top_p, seed=args.distill_seed,
                         start_token=args.start_token)
    dcfg.check()
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, max_length=args.train_max_length, lr=args.lr,
                       warmup_steps=args.warmup_steps, schedule=args.schedule, lora=args.lora, lora_r=args.lora_r,
                       lora_alpha=args.lora_alpha, save_every=args.save_every, seed=args.seed)
    if args.warmup_steps >= args.steps:
        raise UserError(f"--warmup-steps must be < --steps ({args.steps}); got {args.warmup_steps}")
    with OutputLock(args.out, directory=True):
        if os.path.isdir(args.out) and set(os.listdir(args.out)) - {".lock"}:
            if not os.path.exists(os.path.join(args.out, "settings.json")):
                raise UserError(f"--out {args.out} holds files no UniDetox run made: give an empty or new directory")
            if args.overwrite:
                for name in os.listdir(args.out):
                    p = os.path.join(args.out, name)
                    if name != ".lock":
                        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        summary = run(args.out, model=args.model, toxic_model=args.toxic_model, target_model=args.target_model,
                      distill_cfg=dcfg, train_cfg=tcfg, scorer=False if args.no_score else args.scorer,
                      device=device, dtype=dtype, amp_dtype=amp)
    tox = summary["distilled_toxicity"]
    print(f"distilled {summary['distilled_texts']} texts ({summary['non_empty_texts']} non-empty, "
          f"{summary['mean_tokens']:.0f} tokens on average)"
          + (f"; their toxicity ({tox['scorer']}): mean {tox['mean']:.3f}, {tox['above_0.5']:.1%} above 0.5"
             if tox else ""))
    print(f"fine-tuned model: {summary['model']}")
    print(f"evaluate it: {summary['evaluate']}")
    return 0


def add_command(sub) -> None:
    import argparse

    from .cli_types import nonnegative_int, open_fraction, positive_float, positive_int, unit_interval

    u = sub.add_parser(
        "unidetox", help="UniDetox: distil detoxifying text from the base/toxic pair, fine-tune a model on it",
        description="UniDetox (Lu et al., ICLR 2025). 1) Distil texts from the start token alone with the rule "
                    "s = base - toxic logits on {p >= alpha * max p} (the unidetox method); 2) fine-tune the target "
                    "model on them. Defaults are the authors' (640 texts x 256 tokens; lr 5e-5, batch 8, 3000 steps, "
                    "all weights), hours on a CPU: use e.g. --texts 64 --max-length 64 --steps 100 for a small run. "
                    "Resumable: rerun the same command after an interruption. Writes OUT/distilled.jsonl, "
                    "OUT/model/ (evaluate with `detox eval --model OUT/model --methods none`) and OUT/unidetox.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    u.add_argument("--out", required=True, help="output directory")
    u.add_argument("--model", default="smollm2-135m-instruct", help="base model the texts are distilled from")
    u.add_argument("--toxic-model", default=None, help="toxic model with the base vocabulary (default: the embedded one)")
    u.add_argument("--target-model", default=None, help="model to fine-tune (default: --model)")
    d = u.add_argument_group("distillation")
    d.add_argument("--texts", type=positive_int, default=640, help="texts to distil (>= 1)")
    d.add_argument("--max-length", type=positive_int, default=256, help="tokens per text, start token included (>= 2)")
    d.add_argument("--distill-batch-size", type=positive_int, default=128, help="texts sampled together (>= 1)")
    d.add_argument("--alpha", type=open_fraction, default=0.1, help="plausibility threshold (in (0, 1))")
    d.add_argument("--top-k", type=nonnegative_int, default=50, help="top-k of the sampling (0 = off; HF's default 50)")
    d.add_argument("--top-p", type=unit_interval, default=1.0, help="top-p of the sampling (in (0, 1])")
    d.add_argument("--start-token", default=None, help="token the texts start from (default: <|endoftext|> if the vocabulary has it, else BOS, else EOS)")
    d.add_argument("--distill-seed", type=nonnegative_int, default=1234, help="distillation seed (>= 0)")
    d.add_argument("--scorer", default=None, help="scorer for the distilled texts' toxicity (default: the offline one)")
    d.add_argument("--no-score", action="store_true", help="do not score the distilled texts")
    t = u.add_argument_group("fine-tuning")
    t.add_argument("--steps", type=positive_int, default=3000, help="optimizer steps (>= 1)")
    t.add_argument("--batch-size", type=positive_int, default=8, help="texts per step (>= 1)")
    t.add_argument("--train-max-length", type=positive_int, default=256, help="tokens per training text (>= 1)")
    t.add_argument("--lr", type=positive_float, default=5e-5, help="learning rate (> 0)")
    t.add_argument("--warmup-steps", type=nonnegative_int, default=0, help="linear warm-up steps (>= 0)")
    t.add_argument("--schedule", default="linear", choices=["linear", "cosine"], help="decay after the warm-up")
    t.add_argument("--lora", action="store_true", help="LoRA adapter (merged at the end) instead of all weights")
    t.add_argument("--lora-r", type=positive_int, default=8, help="LoRA rank (>= 1)")
    t.add_argument("--lora-alpha", type=positive_int, default=16, help="LoRA alpha (>= 1)")
    t.add_argument("--save-every", type=positive_int, default=250, help="checkpoint every N steps (>= 1)")
    t.add_argument("--seed", type=nonnegative_int, default=42, help="fine-tuning seed (>= 0)")
    u.add_argument("--overwrite", action="store_true", help="discard an earlier UniDetox run in --out")
    from .devices import add_device_options

    add_device_options(u)
    u.set_defaults(func=cmd_unidetox)
