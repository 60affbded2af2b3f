"""Benchmark of the fused sampling op (``detox_kernels.sample_top_k_top_p``) against HuggingFace's
warpers + ``torch.multinomial`` (sort-based top-p), on real next-token logits.

    python -m bench.bench_sampling                 # CPU -> bench/results/sampling-cpu.json
    python -m bench.bench_sampling --device cuda   # GPU -> bench/results/sampling-cuda.json

The logits are the embedded model's (``smollm2-135m-instruct``, V = 49,152) next-token scores
for real prompts: RealToxicityPrompts prompts from ``--prompts`` (a JSONL file with
``{"prompt": {"text": ...}}`` rows) or, when ``DETOX_DEV_DATA`` names the development data,
its ``rtp/rtp-toxic-dev.jsonl``; else a few built-in prompts, repeated. Timed per call at
B = 1, 8, 64 for each warper setting:

- ``hf``: ``TemperatureLogitsWarper`` / ``TopKLogitsWarper`` / ``TopPLogitsWarper`` (as
  ``generate`` builds them), softmax and ``torch.multinomial``: what a HuggingFace sampling step
  does after the forward;
- each available backend of the op (the C++ CPU kernel on a CPU; CUDA and Triton on a GPU), the
  uniforms drawn on the device with a ``torch.Generator`` inside the timed call;
- ``reference``: the float64 reference (sorts; the tests' oracle), CPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

import detox_kernels
from detox_kernels.ops import sampling as sampling_mod
from detox_kernels.reference import sample_top_k_top_p_reference

from .common import HERE, env_info, op_backends, save_results, time_cpu, time_cuda

BUILTIN_PROMPTS = ["The city council met on Tuesday to discuss", "You are such a", "My favourite recipe uses",
                   "He walked into the bar and", "The worst thing about people like you is", "Scientists announced",
                   "I can't believe she said", "When the police arrived, the crowd"]
SETTINGS = [(0, 0.9, 1.0), (50, 0.9, 0.7), (50, 1.0, 1.0)]  # (top_k, top_p, temperature)


def load_prompts(path, n):
    if path is None and os.environ.get("DETOX_DEV_DATA"):
        cand = os.path.join(os.environ["DETOX_DEV_DATA"], "rtp", "rtp-toxic-dev.jsonl")
        path = cand if os.path.exists(cand) else None
    if path is None:
        return [BUILTIN_PROMPTS[i % len(BUILTIN_PROMPTS)] for i in range(n)], "built-in"
    with open(path) as f:
        texts = [json.loads(line)["prompt"]["text"] for line in f if line.strip()]
    return [texts[i % len(texts)] for i in range(n)], os.path.basename(path)


@torch.no_grad()
def next_token_logits(model_name, prompts, dev):
    from detox.models import load_causal_lm

    model, tok = load_causal_lm(model_name, device=dev, quiet=True)
    enc = tok(prompts, return_tensors="pt", padding=True).to(dev)
    return model(**enc).logits[:, -1, :].float().contiguous()


def hf_step(logits, top_k, top_p, temperature, gen):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    procs = LogitsProcessorList()
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    ids = torch.zeros(logits.shape[0], 1, dtype=torch.long, device=logits.device)

    def step():
        scores = procs(ids, logits)
        return torch.multinomial(torch.softmax(scores, -1), 1, generator=gen).squeeze(1)

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", default=None, help="RTP-style JSONL (default: see above)")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--backends", default=None, help="comma-separated subset (default: every available one)")
    ap.add_argument("--no-reference", action="store_true", help="skip timing the float64 reference")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = args.device
    batches = [int(s) for s in args.batches.split(",")]
    prompts, source = load_prompts(args.prompts, max(batches))
    all_logits = next_token_logits(args.model, prompts, dev)
    backends = op_backends(sampling_mod, dev, args.backends)
    timer = time_cuda if dev == "cuda" else (lambda fn: time_cpu(fn, args.repeats))
    info = env_info(dev, None, model=args.model, V=all_logits.shape[1], prompts=source)
    print(f"# fused sampling benchmark on {info['device']} ({dev}), torch {info['torch']}, {info['threads']} threads, "
          f"{args.model} next-token logits (V={all_logits.shape[1]}, prompts: {source})")
    rows = []
    for top_k, top_p, temp in SETTINGS:
        for b in batches:
            logits = all_logits[:b].contiguous()
            gen = torch.Generator(device=dev).manual_seed(0)
            fns = {"hf": hf_step(logits, top_k, top_p, temp, gen)}
            for name in backends:
                fns[name] = (lambda n=name: detox_kernels.sample_top_k_top_p(
                    logits, torch.rand(b, generator=gen, device=dev), top_k=top_k, top_p=top_p, temperature=temp,
                    backend=n))
            if dev == "cpu" and not args.no_reference:
                fns["reference"] = lambda: sample_top_k_top_p_reference(
                    logits, torch.rand(b, generator=gen), top_k=top_k, top_p=top_p, temperature=temp)
            res = {name: timer(fn) for name, fn in fns.items()}
            med = {name: statistics.median(t) for name, t in res.items()}
            for name, t in med.items():
                rows.append({"B": b, "top_k": top_k, "top_p": top_p, "temperature": temp, "impl": name,
                             "median_s": t, "samples_s": res[name], "speedup_vs_hf": med["hf"] / t})
            print(f"k={top_k:<3} p={top_p:<4} t={temp:<4} B={b:<3} " + "  ".join(
                f"{n}: {med[n] * 1e6:9.1f} us" + (f" ({med['hf'] / med[n]:5.2f}x hf)" if n != "hf" else "")
                for n in med), flush=True)
    out = args.out or os.path.join(HERE, "results", f"sampling-{dev}.json")
    save_results({"info": info, "rows": rows}, "sampling", dev, out)


if __name__ == "__main__":
    main()
