"""How far the HSPD code's default divergence ("wsd": geomloss's Sinkhorn loss, p = 1, blur 0.01,
between the two probability vectors as one-point clouds) sits from the exact L2 distance that
``divergence="l2"`` computes, and what that does to SoCD's k under ``preset="hspd-code"``.

On real next-token distributions: the embedded SmolLM2 and its toxic model at every step of plain
sampling from held-out RTP prompts. Needs geomloss (the authors' pinned 0.2.6, pure Python), e.g.
``pip install --no-deps --target .gl geomloss==0.2.6``; its directory is given by ``--geomloss``.

    python -m bench.socd_sinkhorn_gap --prompts 16 --tokens 20      # JSON to bench/results/, a table
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from bench.common import env_info, save_results

HERE = os.path.dirname(os.path.abspath(__file__))


def k_of(d: torch.Tensor, v: int, k_min: int = 10) -> torch.Tensor:
    """SoCD's k under the hspd-code preset: floor(alpha V) clipped to [k_min, V]."""
    t = torch.log1p(d.clamp_min(0))
    return torch.clamp(torch.floor(t / (1 + t) * v), k_min, v)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--geomloss", default=os.path.join(os.path.dirname(HERE), ".gl"),
                    help="directory holding the geomloss package (default: .gl in the repository)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, args.geomloss)
    import geomloss

    from detox.models import load_causal_lm
    from detox.toxic import embedded_prompts, resolve_toxic_model

    torch.manual_seed(0)
    base, tok = load_causal_lm("smollm2-135m-instruct")
    toxic, _ = load_causal_lm(resolve_toxic_model(None))
    prompts = [p.text for p in embedded_prompts("heldout")[: args.prompts]]
    enc = tok(prompts, return_tensors="pt", padding=True)
    t0 = time.time()
    with torch.inference_mode():
        out = base.generate(**enc, do_sample=True, top_p=0.9, top_k=0, max_new_tokens=args.tokens,
                            min_new_tokens=args.tokens, pad_token_id=tok.pad_token_id)
        mask = torch.cat([enc["attention_mask"], torch.ones(len(prompts), args.tokens, dtype=torch.long)], 1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        lp = enc["input_ids"].shape[1]
        xb = base(input_ids=out, attention_mask=mask, position_ids=pos).logits[:, lp - 1:-1].float()
        xt = toxic(input_ids=out, attention_mask=mask, position_ids=pos).logits[:, lp - 1:-1].float()
    v = len(tok)
    x, y = xb.reshape(-1, xb.shape[-1])[:, :v], xt.reshape(-1, xt.shape[-1])[:, :v]
    p, q = x.softmax(-1), y.softmax(-1)
    exact = (p.double() - q.double()).norm(dim=-1)
    loss = geomloss.SamplesLoss(loss="sinkhorn", p=1, blur=0.01)
    theirs = torch.tensor([float(loss(p[i:i + 1], q[i:i + 1])) for i in range(p.shape[0])], dtype=torch.float64)
    gap = theirs - exact
    dk = k_of(theirs, v) - k_of(exact, v)
    ideal = exact - 1e-4  # the geomloss formula in exact arithmetic: sqrt(max(|p-q|^2, 1e-8)) - 1e-4
    res = {
        "what": "geomloss Sinkhorn (p=1, blur=0.01; the HSPD code's 'wsd') minus exact L2 of softmax(base), "
                "softmax(toxic); k under hspd-code (floor(alpha V), [10, V])",
        "env": env_info("cpu", geomloss=geomloss.__version__, model="smollm2-135m-instruct",
                        toxic="smollm2-135m-instruct-toxic"),
        "rows": int(p.shape[0]), "vocab": v, "seconds": round(time.time() - t0, 1),
        "l2": {"mean": float(exact.mean()), "min": float(exact.min()), "max": float(exact.max())},
        "gap": {"mean": float(gap.mean()), "min": float(gap.min()), "max": float(gap.max()),
                "median": float(gap.median())},
        "gap_minus_ideal": {"max_abs": float((theirs - ideal).abs().max()),
                            "share_within_1e-6": float(((theirs - ideal).abs() < 1e-6).double().mean())},
        "k_diff": {"mean": float(dk.mean()), "min": int(dk.min()), "max": int(dk.max()),
                   "share_rows_changed": float((dk != 0).double().mean())},
    }
    print(f"{res['rows']} rows (V = {v}); exact L2 mean {res['l2']['mean']:.4f} [{res['l2']['min']:.4f}, "
          f"{res['l2']['max']:.4f}]")
    print(f"Sinkhorn - L2: mean {res['gap']['mean']:.3e}, median {res['gap']['median']:.3e}, "
          f"range [{res['gap']['min']:.3e}, {res['gap']['max']:.3e}]")
    print(f"rows within 1e-6 of L2 - 1e-4: {100 * res['gap_minus_ideal']['share_within_1e-6']:.1f} % "
          f"(largest deviation {res['gap_minus_ideal']['max_abs']:.2e})")
    print(f"k (hspd-code) Sinkhorn - L2: mean {res['k_diff']['mean']:.2f}, range [{res['k_diff']['min']}, "
          f"{res['k_diff']['max']}], rows changed {100 * res['k_diff']['share_rows_changed']:.1f} %")
    save_results(res, "socd_sinkhorn_gap", "cpu", args.out)
    return res


if __name__ == "__main__":
    main()
