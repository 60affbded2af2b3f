"""Decoding loops side by side: the fast loop, HuggingFace generate, the forwards alone, and an
authors'-style SoCD loop, for plain, SoCD, CD, DExperts, SASA and reversal.

    python -m bench.bench_decode                  # B = 1, 8, 64 (64 = 16 RTP prompts x 4 samples), 32 tokens
    python -m bench.bench_decode --quick          # B = 1, 8; 8 tokens; one repeat
    python -m bench.bench_decode --device cuda --dtype bfloat16 --out bench/results/decode-cuda.json

Per method and batch size B (= prompts x samples), the time of one batch of ``--tokens`` new tokens
(the prompt's forward included), as tokens/s and per-step milliseconds (wall), for

- ``fast``: ``Method.decode`` with the default fast loop (static caches, the method's rule in one
  call, sampling on device; CUDA graphs on a GPU). SASA and reversal run their own loops here;
- ``hf``: ``Method.decode`` with ``decode_mode="hf"``: HuggingFace eager ``generate`` with our
  processors (for SASA, its own loop again: it never uses generate);
- ``forwards``: the lower bound: the base model and every auxiliary model (toxic; expert) fed one
  token per step with the same static caches, no rule, no sampling;
- ``authors`` (SoCD only): the straightforward form of the authors' code, written from its
  description: a Python loop over rows with one host synchronisation per row per step (its k),
  the toxic model run without an attention mask, HF-style top-p on the result.

Every batch samples with top_p 0.9 and ``min_new_tokens = tokens`` (no early stop, so every
variant does the same work). Besides, ``components`` times the per-step pieces on real logits of
the largest batch: the SoCD op, HF's top-p warper (a full sort of B x V) and the fused sampling
op where ``detox_kernels`` has it. Raw numbers: ``bench/results/decode-<device>.json`` (machine,
versions, commit); a table with the ratios to ``forwards`` is printed: on a CPU, ratios of the
process's CPU time (run with ``OMP_NUM_THREADS=1``: the work done, which other jobs on a shared
machine barely change), on a GPU of wall time. Absolute numbers only from an idle machine or a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch

from bench.common import HERE, env_info

METHODS = ("none", "socd", "cd", "dexperts", "sasa", "reversal")
AUX = {"none": 0, "socd": 1, "cd": 1, "dexperts": 1, "unidetox": 1, "sasa": 0, "reversal": 0}


def rtp_prompts(n):
    from detox.data import read_prompts

    root = os.environ.get("DETOX_DEV_DATA")
    path = os.path.join(root, "rtp", "rtp-toxic-dev.jsonl") if root else None
    if path and os.path.exists(path):
        return [p.text for p in read_prompts(path, limit=n, seed=0)]
    pool = ["The city council met on Tuesday to discuss", "You are such a", "My favourite recipe uses",
            "When the game ended, the fans", "I can't believe that people still", "The report says that",
            "She looked at him and said", "Nobody in this town will ever"]
    return [pool[i % len(pool)] for i in range(n)]


def shapes(quick):
    # (prompts, samples): B = prompts * samples
    return [(1, 1), (2, 4)] if quick else [(1, 1), (2, 4), (16, 4)]


@torch.inference_mode()
def forwards_only(models, ids, mask, tokens):
    """Every model fed the prompt, then one token per step, into static caches (the fast loop's
    forwards exactly, without the rule and the sampling)."""
    from transformers import StaticCache

    from detox.generation.processors import cache_keyword

    b, length = ids.shape
    total = length + tokens
    full = torch.zeros(b, total, dtype=torch.long, device=ids.device)
    full[:, :length] = mask
    pos0 = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    pos = pos0[:, -1:].clone()
    caches = [StaticCache(config=m.config, max_cache_len=total) for m in models]
    kws = [cache_keyword(m) for m in models]
    for m, c, kw in zip(models, caches, kws):
        m(input_ids=ids, attention_mask=full, position_ids=pos0, use_cache=True, logits_to_keep=1, **{kw: c})
    tok = ids[:, -1:].clone()
    for t in range(1, tokens):
        full[:, length + t - 1] = 1
        pos.add_(1)
        for m, c, kw in zip(models, caches, kws):
            m(input_ids=tok, attention_mask=full, position_ids=pos, use_cache=True, logits_to_keep=1, **{kw: c})


@torch.inference_mode()
def authors_socd(base, toxic, ids, mask, tokens, top_p, seed):
    """SoCD as the authors' code runs it (from its description): per step, both models on the
    batch (the toxic model without an attention mask), then a Python loop over rows: the row's
    divergence, its k read back to the host, its top-k of log q - log p, the update; then
    HF's top-p warper and a multinomial draw."""
    from transformers import DynamicCache, TopPLogitsWarper

    torch.manual_seed(seed)
    warp = TopPLogitsWarper(top_p)
    b, length = ids.shape
    v = base.config.vocab_size
    cb, ct = DynamicCache(config=base.config), DynamicCache(config=toxic.config)
    m = mask.clone()
    pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 0)
    x = base(input_ids=ids, attention_mask=m, position_ids=pos, cache=cb, use_cache=True).logits[:, -1].float()
    y = toxic(input_ids=ids, cache=ct, use_cache=True).logits[:, -1].float()
    out = [ids]
    for t in range(tokens):
        rows = []
        for i in range(b):
            p, q = x[i].softmax(-1), y[i].softmax(-1)
            d = torch.linalg.vector_norm(p - q)
            alpha = math.log1p(d.item()) / (1 + math.log1p(d.item()))   # the host sync of the row
            k = min(max(math.ceil(alpha * v), 10), v // 2)
            delta = q.log() - p.log()
            top = torch.topk(delta, k)
            sel = top.indices[top.values > 0]
            row = x[i].clone()
            row[sel] -= alpha * y[i, sel].abs()
            rows.append(row)
        s = warp(None, torch.stack(rows))
        tok = torch.multinomial(s.softmax(-1), 1)
        out.append(tok)
        if t == tokens - 1:
            break
        m = torch.cat([m, torch.ones_like(tok)], dim=1)
        pos = pos[:, -1:] + 1
        x = base(input_ids=tok, attention_mask=m, position_ids=pos, cache=cb, use_cache=True).logits[:, -1].float()
        y = toxic(input_ids=tok, cache=ct, use_cache=True).logits[:, -1].float()
    return torch.cat(out, dim=1)


def random_smollm2(seed, dev, dtype):
    """SmolLM2-135M's architecture with random weights and the benchmarks' word tokenizer (where
    the embedded weights cannot be brought, e.g. a GPU machine without them): the timing of a
    step does not depend on the weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.common import word_tokenizer

    tok = word_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    m = LlamaForCausalLM(cfg).to(device=dev, dtype=dtype).eval()
    m.generation_config.pad_token_id = tok.pad_token_id
    return m, tok


def make_generator(method, base, toxic, dev, model_name):
    from detox.generation.driver import Generator

    return Generator(method, model=base, toxic_model=toxic if AUX.get(method) else None, device=dev,
                     model_name=model_name, toxic_name="embedded-toxic")


def interleaved(fns: dict, sync, repeats):
    """Seconds per call of each of ``fns``, timed in turns (one call of each per round) so that
    the load of a shared machine falls on all of them alike; one warm-up call each first."""
    for fn in fns.values():
        fn()
    walls = {k: [] for k in fns}
    cpus = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync()
            walls[k].append(time.perf_counter() - t0)
            cpus[k].append(time.process_time() - c0)
    return walls, cpus


def components(base, toxic, tok, prompts, dev, top_p, repeats):
    """Per-step pieces on real logits [B, V] of the largest batch."""
    import detox_kernels
    from transformers import TopPLogitsWarper

    enc = tok(prompts, return_tensors="pt", padding=True).to(dev)
    with torch.inference_mode():
        x = base(**enc, logits_to_keep=1).logits[:, -1].float()
        y = toxic(**enc, logits_to_keep=1).logits[:, -1].float()
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    warp = TopPLogitsWarper(top_p)
    res = {"rows": x.shape[0], "vocab": x.shape[1]}

    def med(fn):
        return statistics.median(interleaved({"x": fn}, sync, max(3, repeats))[1 if not dev.startswith("cuda") else 0]["x"]) * 1e3

    res["socd_op_ms"] = med(lambda: detox_kernels.socd(x, y))
    res["hf_top_p_warper_ms"] = med(lambda: warp(None, x))
    res["hf_top_p_and_multinomial_ms"] = med(lambda: torch.multinomial(warp(None, x).softmax(-1), 1))
    if hasattr(detox_kernels, "sample_top_k_top_p"):
        u = torch.rand(x.shape[0], device=x.device)
        res["fused_sample_top_k_top_p_ms"] = med(lambda: detox_kernels.sample_top_k_top_p(x, u, top_k=0, top_p=top_p,
                                                                                          temperature=1.0))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--toxic-model", default=None, help="default: the embedded toxic SmolLM2 (made if missing)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--shapes", default=None, help="prompts x samples list, e.g. 1x1,2x4,16x4 (the default)")
    ap.add_argument("--tokens", type=int, default=None, help="new tokens per row (default 32; --quick 8)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per variant (median; default 2, --quick 1)")
    ap.add_argument("--variants", default="fast,hf,forwards,authors")
    ap.add_argument("--quick", action="store_true", help="B = 1, 8; 8 tokens; one repeat")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--random-weights", action="store_true",
                    help="SmolLM2-135M's architecture with random weights (where the embedded models are absent)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from detox.methods import Sampling
    from detox.models import load_causal_lm
    from detox.toxic import resolve_toxic_model

    dev = args.device
    dtype = getattr(torch, args.dtype or ("bfloat16" if dev.startswith("cuda") else "float32"))
    tokens = args.tokens or (8 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 2)
    shp = ([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes
           else shapes(args.quick))
    variants = args.variants.split(",")
    if args.random_weights:
        base, toxic = random_smollm2(0, dev, dtype), random_smollm2(1, dev, dtype)
    else:
        base = load_causal_lm(args.model, device=dev, dtype=dtype)
        toxic = load_causal_lm(args.toxic_model or resolve_toxic_model(None), device=dev, dtype=dtype)
    tok = base[1]
    sync = torch.cuda.synchronize if dev.startswith("cuda") else (lambda: None)
    pool = rtp_prompts(max(p for p, _ in shp))
    rows = []
    gens = {}
    for n_prompts, n_samples in shp:
        b = n_prompts * n_samples
        prompts = pool[:n_prompts]
        enc = tok(prompts, return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        rep_ids, rep_mask = ids.repeat_interleave(n_samples, 0), mask.repeat_interleave(n_samples, 0)
        s = Sampling(num_samples=n_samples, max_new_tokens=tokens, top_p=args.top_p, seed=0, min_new_tokens=tokens)
        for method in args.methods.split(","):
            if method not in gens:
                gens[method] = make_generator(method, base, toxic, dev, args.model)
            impl = gens[method].impl
            models = [base[0]] + ([toxic[0]] * AUX.get(method, 0))
            if method == "dexperts" and getattr(impl, "expert", None) is not None:
                models.append(impl.expert)
            res = {"method": method, "batch": b, "prompts": n_prompts, "samples": n_samples, "new_tokens": tokens}

            def decode(mode, impl=impl):
                impl.decode_mode = mode
                torch.manual_seed(0)
                with torch.inference_mode():
                    return impl.decode(ids, mask, s)

            todo = {"fast": lambda: decode("fast"), "hf": lambda: decode("hf"),
                    "forwards": lambda: forwards_only(models, rep_ids, rep_mask, tokens)}
            if method == "socd":
                todo["authors"] = lambda: authors_socd(base[0], toxic[0], rep_ids, rep_mask, tokens, args.top_p, 0)
            if method == "sasa":
                todo.pop("hf")   # SASA never uses generate: fast and hf are the same loop
            todo = {k: f for k, f in todo.items() if k in variants}
            all_walls, all_cpus = interleaved(todo, sync, repeats)
            for name, walls in all_walls.items():
                wall = statistics.median(walls)
                res[name] = {"wall_s": wall, "step_ms": 1e3 * wall / tokens, "tokens_per_s": b * tokens / wall,
                             "best_wall_s": min(walls), "samples_wall_s": walls,
                             "cpu_s": statistics.median(all_cpus[name]), "samples_cpu_s": all_cpus[name]}
            rows.append(res)
            # on a CPU the ratios use the process's CPU time (with one thread, the work done; a shared
            # machine's other jobs barely change it), on a GPU the wall time
            key = "wall_s" if dev.startswith("cuda") else "cpu_s"
            fw = res.get("forwards", {}).get(key)
            line = f"B={b:<3} {method:<9}"
            for name in ("fast", "hf", "forwards", "authors"):
                if name in res:
                    r = res[name]
                    ratio = f" ({r[key] / fw:4.2f}x fwd)" if fw and name != "forwards" else ""
                    line += f"  {name} {r['step_ms']:8.1f} ms/step {r['tokens_per_s']:8.1f} tok/s{ratio}"
            print(line, flush=True)
    comp = None
    if "socd" in args.methods.split(","):
        comp = components(base[0], toxic[0], tok, [pool[i % len(pool)] for i in range(max(p * n for p, n in shp))],
                          dev, args.top_p, repeats)
        print("per-step pieces at B={rows}, V={vocab}: ".format(**comp)
              + ", ".join(f"{k[:-3]} {v:.2f} ms" for k, v in comp.items() if k.endswith("_ms")))
    import transformers

    info = env_info(dev, transformers=transformers.__version__, dtype=str(dtype).replace("torch.", ""),
                    model=args.model, toxic_model=args.toxic_model or "embedded",
                    random_weights=args.random_weights, machine=platform.node(),
                    cpu_count=os.cpu_count(), top_p=args.top_p, quick=args.quick,
                    cuda_graphs=dev.startswith("cuda") and os.environ.get("DETOX_CUDA_GRAPHS", "1") != "0")
    import detox_kernels

    info["fused_sampler"] = hasattr(detox_kernels, "sample_top_k_top_p")
    info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None   # a shared machine's noise
    path = args.out or os.path.join(HERE, "results", f"decode-{dev.split(':')[0]}{'-quick' if args.quick else ''}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"info": info, "rows": rows, "components": comp}, f, indent=1)
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
