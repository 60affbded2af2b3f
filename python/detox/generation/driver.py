"""Batched generation of prompts x N samples with any method (``detox generate`` and the harness).

``Generator`` loads the base model once (and the toxic model where the method needs one),
checks that the vocabularies match, and generates continuations for many prompts at once:
prompts are left-padded into batches, each expanded to N samples with
``num_return_sequences``, and the method's logits processor runs inside ``model.generate``.
Each batch is seeded from (seed, batch index), so a resumed run reproduces the batches it had
not finished.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from transformers import LogitsProcessorList

from .processors import (
    ContrastiveDecodingLogitsProcessor,
    DExpertsLogitsProcessor,
    SoCDLogitsProcessor,
    UniDetoxLogitsProcessor,
)

METHODS = ("none", "socd", "cd", "dexperts", "unidetox", "reversal", "sasa", "cmd")
NEEDS_TOXIC = {"socd", "cd", "dexperts", "unidetox"}


@dataclass
class MethodConfig:
    """Per-method settings (defaults from socd.md)."""

    divergence: str = "l2"
    k_min: int = 10
    k_max: int | None = None
    preset: str | None = None
    cd_form: str = "obrien"
    cd_alpha: float = 0.1
    cd_beta: float = 0.5
    dexperts_alpha: float = 2.0
    dexperts_top_p: float = 0.9
    # toxification reversal (reversal.md); None means the default (all layers, 0.4, 0.6, on, the spec's prefixes)
    reversal_layers: str | None = None
    reversal_norm_exp: float | None = None
    reversal_sim_exp: float | None = None
    reversal_renorm: bool | None = None
    reversal_neg_prefix: str | None = None
    reversal_pos_prefix: str | None = None
    sasa_subspace: str | None = None  # SASA (sasa.md): subspace file (default: see detox.sasa.resolve_subspace)
    sasa_beta: float = 10.0
    sasa_mode: str = "softmax"
    sasa_max_candidates: int = 50
    sasa_outside: str = "keep"
    cmd_chain_tokens: int = 96  # CMD: most tokens of the chain before "# Generation:"
    cmd_guided: bool = True  # CMD: the driver writes the step headers, the model each step (cmd/inference.py)
    extra: dict = field(default_factory=dict)


class Generator:
    def __init__(self, method: str = "none", model="smollm2-135m-instruct", toxic_model=None, expert_model=None,
                 config: MethodConfig | None = None, device: str = "cpu", dtype=torch.float32):
        from ..models import check_same_vocabulary, load_causal_lm

        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.config = config or MethodConfig()
        self.device = device
        self.model, self.tokenizer = (model if isinstance(model, tuple) else load_causal_lm(model, dtype=dtype, device=device))
        self.model_name = model if isinstance(model, str) else getattr(self.model, "name_or_path", "model")
        self.toxic = self.expert = None
        self.vocab_size = None
        if method in NEEDS_TOXIC:
            if toxic_model is None:
                from ..toxic import resolve_toxic_model

                toxic_model = resolve_toxic_model(None)
            self.toxic_name = toxic_model if isinstance(toxic_model, str) else "toxic"
            tm, ttok = toxic_model if isinstance(toxic_model, tuple) else load_causal_lm(toxic_model, dtype=dtype, device=device)
            self.vocab_size = check_same_vocabulary(self.tokenizer, ttok, self.model, tm)
            self.toxic = tm.eval()
            if method == "dexperts" and expert_model is not None:
                em, etok = expert_model if isinstance(expert_model, tuple) else load_causal_lm(expert_model, dtype=dtype, device=device)
                check_same_vocabulary(self.tokenizer, etok, self.model, em)
                self.expert = em.eval()
        self.model.eval()
        self.reversal = self._reversal() if method == "reversal" else None
        self.sasa = None
        if method == "sasa":
            from ..sasa import make_sasa_decoder

            self.sasa = make_sasa_decoder(self.model, self.model_name, self.config)

    def _reversal(self):
        from .reversal import ToxificationReversal

        c = self.config
        kw = {k: v for k, v in dict(layers=c.reversal_layers, norm_exp=c.reversal_norm_exp, sim_exp=c.reversal_sim_exp,
                                    renorm=c.reversal_renorm, neg_prefix=c.reversal_neg_prefix,
                                    pos_prefix=c.reversal_pos_prefix).items() if v is not None}
        return ToxificationReversal(self.model, self.tokenizer, **kw)

    def _processor(self, mask):
        c, pad = self.config, self.tokenizer.pad_token_id
        common = dict(attention_mask=mask, pad_token_id=pad, vocab_size=self.vocab_size)
        if self.method == "socd":
            return SoCDLogitsProcessor(self.toxic, divergence=c.divergence, k_min=c.k_min, k_max=c.k_max,
                                       preset=c.preset, **common)
        if self.method == "cd":
            return ContrastiveDecodingLogitsProcessor(self.toxic, form=c.cd_form, alpha=c.cd_alpha, beta=c.cd_beta, **common)
        if self.method == "dexperts":
            return DExpertsLogitsProcessor(self.expert, self.toxic, alpha=c.dexperts_alpha, top_p=c.dexperts_top_p, **common)
        if self.method == "unidetox":
            return UniDetoxLogitsProcessor(self.toxic, **common)
        return None

    def context_length(self) -> int | None:
        cfg = self.model.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    def validate(self, prompts: list[str], max_new_tokens: int) -> None:
        ctx = self.context_length()
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt {i} is empty: every prompt needs some text to continue")
            if ctx is not None:
                n = len(self.tokenizer(p)["input_ids"])
                if n + max_new_tokens > ctx:
                    raise ValueError(f"prompt {i} has {n} tokens; with {max_new_tokens} new tokens that exceeds the "
                                     f"model's context of {ctx} tokens: shorten it or lower --max-new-tokens")

    @torch.inference_mode()
    def generate_batch(self, prompts: list[str], *, num_samples=1, max_new_tokens=20, top_p=0.9, temperature=1.0,
                       do_sample=True, seed=0) -> list[list[str]]:
        """Continuations for one batch of prompts: ``result[i][j]`` is sample j of prompt i."""
        if self.method == "cmd":  # the model writes its chain; only the generation part comes back
            from ..cmd.inference import generate_chain_batch, generate_guided_chain_batch

            run = generate_guided_chain_batch if self.config.cmd_guided else generate_chain_batch
            return run(self, prompts, num_samples=num_samples, max_new_tokens=max_new_tokens, top_p=top_p,
                       temperature=temperature, do_sample=do_sample, seed=seed,
                       chain_tokens=self.config.cmd_chain_tokens)
        self.validate(prompts, max_new_tokens)
        tok = self.tokenizer
        enc = tok(prompts, return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        proc = self._processor(mask)
        if self.method == "dexperts":
            top_p = 1.0  # DExperts filters the base scores itself; no further truncation
        torch.manual_seed(seed)
        kw = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, num_return_sequences=num_samples,
                  pad_token_id=tok.pad_token_id, logits_processor=LogitsProcessorList([proc]) if proc else None)
        if do_sample:
            kw.update(top_p=top_p, temperature=temperature, top_k=0)
        if self.reversal is not None:
            with self.reversal.active():
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kw)
        elif self.sasa is not None:  # SASA runs its own decoding loop (K-candidate forward per step)
            out = self.sasa.generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=do_sample, top_p=top_p,
                                     temperature=temperature, top_k=0, num_return_sequences=num_samples,
                                     pad_token_id=tok.pad_token_id)
        else:
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kw)
        texts = tok.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]

    def settings(self) -> dict:
        s = {"method": self.method, "model": self.model_name}
        if self.toxic is not None:
            s["toxic_model"] = self.toxic_name
        if self.method != "none":
            # only this method's own fields, so that adding another method's settings keeps the cache keys
            own = {m: f"{m}_" for m in ("reversal", "sasa", "cmd")}
            s["method_config"] = {k: v for k, v in asdict(self.config).items() if v is not None and k != "extra"
                                  and not any(k.startswith(p) for m, p in own.items() if m != self.method)}
        if self.reversal is not None:
            s["reversal"] = self.reversal.settings()
        return s


def batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index * 7919) % (2**31 - 1)
