"""The ``detox rewrite`` and ``detox finetune`` subcommands (added to ``detox.cli``)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..cli_types import nonnegative_int, positive_float, positive_int, probability, unit_interval
from ..errors import OutputLock, UserError, check_input_file, check_output_file


def _floats(s: str) -> list[float]:
    try:
        v = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not v or any(x <= 0 for x in v):
        raise argparse.ArgumentTypeError(f"temperatures must be positive numbers, got {s!r}")
    return v


def cmd_rewrite(args) -> int:
    from .pipeline import RewriteConfig
    from .runner import run_rewrite, work_dir_for

    from ..models import check_model_spec
    from ..scorers import check_scorer_spec

    check_input_file(args.input, "input", text=not args.input.lower().endswith(".parquet") and args.format != "parquet")
    check_output_file(args.out, overwrite=True, inputs=[args.input])
    from .runner import work_dir_for as _work

    if os.path.exists(args.out) and not os.path.isdir(_work(args.out)) and not args.overwrite:
        raise UserError(f"--out {args.out} exists and is not the output of an earlier `detox rewrite` (no "
                        f"{_work(args.out)}): pass --overwrite to replace it, or choose another file")
    check_scorer_spec(args.scorer)
    check_model_spec(args.model)
    check_model_spec(args.toxic_model, "--toxic-model")
    from ..devices import device_dtype_from_args, dtype_name

    device, dtype = device_dtype_from_args(args)
    from .corpus import Malformed, iter_records

    bad = Malformed()
    if next(iter(iter_records(args.input, args.format, args.text_field, bad, args.max_chars)), None) is None:
        raise UserError(f"no texts to rewrite in {args.input} ({len(bad.lines)} malformed lines; the text field is "
                        f"--text-field {args.text_field})")
    from ..methods._cli import method_settings_from_args, options_for_other_methods

    ignored = options_for_other_methods(args, [args.mode])
    if ignored:
        print(f"warning: {', '.join(ignored)} ignored with --mode {args.mode}", file=sys.stderr)
    try:
        settings = {} if args.mode == "prompt" else method_settings_from_args(args, [args.mode])[args.mode].to_dict()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = RewriteConfig(mode=args.mode, model=args.model, toxic_model=args.toxic_model, template=args.template,
                        temperatures=args.temperatures, samples_per_temperature=args.samples_per_temperature,
                        top_p=args.top_p, max_new_tokens=args.max_new_tokens, max_input_tokens=args.max_input_tokens,
                        lam=args.lam, scorer=args.scorer, embedder=args.embedder, method_settings=settings, seed=args.seed,
                        batch_size=args.batch_size, device=str(device), dtype=dtype_name(dtype))
    try:
        cfg.validate()
        from .templates import load_template

        load_template(cfg.template)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with OutputLock(args.out):
        s = run_rewrite(args.input, args.out, cfg, fmt=args.format, text_field=args.text_field, limit=args.limit,
                        engine=args.engine, workers=args.workers, window=args.window, overwrite=args.overwrite,
                        max_chars=args.max_chars, ray_address=args.ray_address)
    work = work_dir_for(args.out)

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    print(f"{s['texts']} texts ({s['counts']}), {s['malformed']} malformed lines skipped; toxicity "
          f"{f(s['mean_toxicity_before'])} -> {f(s['mean_toxicity_after'])}, similarity {f(s['mean_similarity'])}")
    print(f"output: {args.out}; provenance, summary.json and report.md in {work}")
    return 0


def cmd_finetune(args) -> int:
    from ..data import read_prompts
    from ..models import load_causal_lm
    from ..training import TrainConfig, train_causal_lm

    from ..models import check_model_spec

    check_input_file(args.data, "--data", text=not args.data.lower().endswith(".parquet"))
    check_model_spec(args.model)
    from ..devices import device_dtype_from_args

    device, dtype = device_dtype_from_args(args, training=True)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a file: give a directory for the model")
    from .corpus import Malformed, detect_format, iter_records

    if detect_format(args.data) == "parquet" or args.data.lower().endswith(".ndjson"):
        # the formats `detox rewrite` writes beyond JSONL / text: read them as rewrite reads its input
        bad = Malformed()
        texts = [r.text for r in iter_records(args.data, text_field=args.text_field or "text", malformed=bad)]
        if bad.lines:
            print(bad.summary(args.data), file=sys.stderr)
    else:
        texts = [p.text for p in read_prompts(args.data, field=args.text_field)]
    if not texts:
        raise UserError(f"no texts in {args.data}")
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
                      lora=args.lora, lora_r=args.lora_r, lora_alpha=args.lora_alpha, save_every=args.save_every,
                      seed=args.seed)
    model, tok = load_causal_lm(args.model, device=device)  # float32 weights; --dtype is the autocast precision
    print(f"fine-tuning {args.model} on {args.data} ({len(texts)} texts): {cfg.steps} steps, batch {cfg.batch_size}, "
          f"lr {cfg.lr}, {'LoRA' if cfg.lora else 'full'} -> {args.out}")
    train_causal_lm(model, tok, texts, args.out, cfg, data_description=f"{args.data} ({len(texts)} texts)",
                    amp_dtype=dtype)
    print(f"model saved in {args.out}; evaluate it with: detox eval --model {args.out} --methods none ...")
    return 0


def add_commands(sub) -> None:
    from .pipeline import MODES
    from .templates import TEMPLATES

    r = sub.add_parser(
        "rewrite", help="HSPD: rewrite every text of a corpus into a non-toxic one that keeps its meaning",
        description="Rewrite each text of a corpus (JSONL, plain text lines, Parquet) with SoCD decoding: candidates "
                    "at several temperatures, answer extraction, de-duplication, fusion ranking "
                    "lambda*(1-tox) + (1-lambda)*cos. Writes OUTPUT in the input's format and OUTPUT.hspd/ (per-text "
                    "provenance, summary.json, report.md with a plot). Resumable: rerun the same command after an "
                    "interruption (even kill -9); nothing is lost or duplicated.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("input", help="corpus: .jsonl/.json ({\"text\": ...} per line), .parquet, or text (one per line)")
    r.add_argument("--out", required=True, help="output corpus (same format as the input)")
    r.add_argument("--format", default=None, choices=["jsonl", "text", "parquet"], help="input format (default: by extension)")
    r.add_argument("--text-field", default="text", help="JSON field / Parquet column with the text (dotted for nested)")
    r.add_argument("--mode", default="socd", choices=list(MODES),
                   help="decoding: prompt (plain sampling), cd (contrastive decoding), socd")
    r.add_argument("--model", default="smollm2-135m-instruct", help="base model: embedded name, directory or HF id")
    r.add_argument("--toxic-model", default=None, help="toxic model with the base vocabulary (default: the embedded toxic SmolLM2)")
    r.add_argument("--template", default="fewshot",
                   help=f"prompt template: {', '.join(TEMPLATES)} (the paper's chat prompt) or a JSON file")
    r.add_argument("--temperatures", type=_floats, default=[0.6, 0.8, 1.0, 1.2, 1.5], help="sampling temperatures")
    r.add_argument("--samples-per-temperature", type=positive_int, default=2, help="candidates per temperature (>= 1)")
    r.add_argument("--top-p", type=unit_interval, default=1.0, help="nucleus top-p (the official code forces 1.0) (in (0, 1])")
    r.add_argument("--max-new-tokens", type=positive_int, default=48, help="tokens per candidate (>= 1)")
    r.add_argument("--max-input-tokens", type=positive_int, default=512, help="longer prompts are skipped and reported (>= 1)")
    r.add_argument("--max-chars", type=positive_int, default=20000, help="longer texts are reported as malformed and skipped (>= 1)")
    r.add_argument("--lambda", dest="lam", type=probability, default=0.5, help="fusion weight of (1 - toxicity) (in [0, 1])")
    r.add_argument("--scorer", default=None, help="toxicity scorer: jigsaw, profanity, detoxify:CKPT[:CFG], HF dir (default: jigsaw offline)")
    r.add_argument("--embedder", default=None, help="sentence-transformers / HF encoder directory (default: embedded all-MiniLM-L6-v2)")
    r.add_argument("--batch-size", type=positive_int, default=8, help="texts per generate call (each expanded to all candidates) (>= 1)")
    r.add_argument("--limit", type=positive_int, default=None, help="only the first N valid texts (>= 1)")
    r.add_argument("--seed", type=nonnegative_int, default=0, help="seed; each candidate is seeded from (seed, text index, candidate) (>= 0)")
    r.add_argument("--engine", default="local", choices=["local", "ray"], help="one process, or Ray Data actors")
    r.add_argument("--workers", type=positive_int, default=2, help="Ray: actors in the pool (>= 1)")
    r.add_argument("--window", type=positive_int, default=64, help="Ray: shards submitted per Ray Data job (>= 1)")
    r.add_argument("--ray-address", default=None, help="Ray: an existing cluster (default: RAY_ADDRESS, else start a local one)")
    r.add_argument("--overwrite", action="store_true", help="discard a previous run's work directory")
    from ..methods._cli import add_method_options

    from ..devices import add_device_options

    add_device_options(r)
    add_method_options(r, [m for m in MODES if m != "prompt"])  # the --mode method's settings
    r.set_defaults(func=cmd_rewrite)

    f = sub.add_parser("finetune", help="fine-tune a model on a corpus (e.g. the rewritten one), full or LoRA",
                       description="Fine-tune a causal LM on a text corpus (JSONL or text lines), resumable; the "
                                   "result is a model directory for `detox eval --model DIR`.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    f.add_argument("--data", required=True, help="training corpus (JSONL {\"text\"} or text lines)")
    f.add_argument("--text-field", default=None, help="JSON field holding the text")
    f.add_argument("--model", default="smollm2-135m-instruct", help="model to fine-tune")
    f.add_argument("--out", required=True, help="output model directory")
    f.add_argument("--steps", type=positive_int, default=100, help="optimizer steps (>= 1)")
    f.add_argument("--batch-size", type=positive_int, default=8, help="texts per step (>= 1)")
    f.add_argument("--max-length", type=positive_int, default=64, help="tokens per text (>= 1)")
    f.add_argument("--lr", type=positive_float, default=2e-5, help="learning rate (paper: 2e-5) (> 0)")
    f.add_argument("--lora", action="store_true", help="LoRA adapter (merged at the end) instead of all weights")
    f.add_argument("--lora-r", type=positive_int, default=8, help="LoRA rank (>= 1)")
    f.add_argument("--lora-alpha", type=positive_int, default=16, help="LoRA alpha (>= 1)")
    f.add_argument("--save-every", type=positive_int, default=25, help="checkpoint every N steps (>= 1)")
    f.add_argument("--seed", type=nonnegative_int, default=0, help="seed (>= 0)")
    from ..devices import add_device_options

    add_device_options(f, training=True)
    f.set_defaults(func=cmd_finetune)
