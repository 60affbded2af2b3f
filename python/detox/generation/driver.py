"""Batched generation of prompts x N samples with any method (``detox generate`` and the harness).

``Generator`` loads the base model once (and the toxic model where the method needs one, see
:mod:`detox.methods`), checks that the vocabularies match, and generates continuations for many
prompts at once: prompts are left-padded into batches, each expanded to N samples with
``num_return_sequences``, and the method generates the batch (its logits processor inside
``model.generate``, or its own loop). Each batch is seeded from (seed, batch index), so a resumed
run reproduces the batches it had not finished.
"""

from __future__ import annotations

import torch

from .. import methods as registry
from ..methods import GenerationResult, Models, Sampling


class Generator:
    """Generates batches with one method.

    ``model`` / ``toxic_model`` / ``expert_model``: a name (HF id, local directory or embedded
    name) or a loaded ``(model, tokenizer)`` pair; ``model_name`` / ``toxic_name`` name loaded pairs
    in the settings (default: the model's ``name_or_path``). ``settings``: the method's settings
    (its ``Settings`` dataclass, a dict of its fields, or ``None`` for the defaults).
    """

    def __init__(self, method: str = "none", model="smollm2-135m-instruct", toxic_model=None, expert_model=None,
                 settings=None, device=None, dtype=None, model_name: str | None = None,
                 toxic_name: str | None = None):
        from ..devices import check_same_device, model_device, model_dtype, resolve_device, resolve_dtype
        from ..models import check_same_vocabulary, load_causal_lm

        cls = registry.get(method)
        self.method = method
        self.method_settings = registry.settings_for(method, settings)
        # device: given, else the loaded base model's, else auto; dtype: given, else the loaded model's, else auto
        if device is None and isinstance(model, tuple):
            device = model_device(model[0]) or "auto"
        self.device = resolve_device(device, what="device")
        if dtype is None and isinstance(model, tuple):
            dtype = model_dtype(model[0])
        dtype = resolve_dtype(dtype, self.device, what="dtype")

        def load(spec, role):
            if not isinstance(spec, tuple):
                return load_causal_lm(spec, dtype=dtype, device=self.device)
            have = model_dtype(spec[0])
            if have is not None and have != dtype:
                from ..devices import DeviceError

                raise DeviceError(f"the loaded {role} model is {str(have).removeprefix('torch.')} but dtype "
                                  f"{str(dtype).removeprefix('torch.')} was asked for: convert it (model.to(dtype)) "
                                  "or pass its dtype")
            return spec

        given = model
        model, tokenizer = load(model, "base")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.dtype = model_dtype(self.model) or dtype
        self.model_name = model_name or (given if isinstance(given, str) else getattr(model, "name_or_path", "model"))
        self.toxic_name = None
        toxic, vocab = None, None
        if cls.needs_toxic:
            if toxic_model is None:
                from ..toxic import resolve_toxic_model

                toxic_model = resolve_toxic_model(None)
            self.toxic_name = toxic_name or (toxic_model if isinstance(toxic_model, str) else "toxic")
            tm, ttok = load(toxic_model, "toxic")
            vocab = check_same_vocabulary(self.tokenizer, ttok, self.model, tm)
            toxic = tm.eval()
        extra = {}
        if expert_model is not None:
            extra["expert"] = load(expert_model, "expert")
        check_same_device([("base", self.model), ("toxic", toxic),
                           ("expert", extra["expert"][0] if "expert" in extra else None)], self.device)
        self.models = Models(self.model, self.tokenizer, self.model_name, device=self.device, toxic=toxic,
                             toxic_name=self.toxic_name, vocab_size=vocab)
        self.impl = cls(self.method_settings, self.models, **extra)

    @property
    def toxic(self):
        return self.models.toxic

    def validate(self, prompts: list[str], max_new_tokens: int) -> None:
        self.models.check_prompts(prompts, max_new_tokens)

    @torch.inference_mode()
    def run_batch(self, prompts: list[str], *, num_samples=1, max_new_tokens=20, top_p=0.9, temperature=1.0,
                  do_sample=True, seed=0, top_k=0, min_new_tokens=0) -> GenerationResult:
        """One batch: ``result.texts[i][j]`` is sample j of prompt i; ``result.extras`` holds the
        method's extra outputs (CMD's chains)."""
        s = Sampling(num_samples=num_samples, max_new_tokens=max_new_tokens, top_p=top_p, temperature=temperature,
                     do_sample=do_sample, seed=seed, top_k=top_k, min_new_tokens=min_new_tokens)
        return self.impl.generate(prompts, s)

    def generate_batch(self, prompts: list[str], **kw) -> list[list[str]]:
        """Only the texts of :meth:`run_batch`: ``result[i][j]`` is sample j of prompt i."""
        return self.run_batch(prompts, **kw).texts

    def settings(self) -> dict:
        """What determines this generator's output (the generation-cache key): the method, the
        models and the method's own settings only."""
        s = {"method": self.method, "model": self.model_name}
        if self.toxic_name is not None:
            s["toxic_model"] = self.toxic_name
        own = self.impl.key_settings()
        if own:
            s["method_settings"] = own
        if self.dtype != torch.float32:  # the precision changes the text; float32 keeps the keys of earlier runs
            s["dtype"] = str(self.dtype).removeprefix("torch.")
        return s


def batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index * 7919) % (2**31 - 1)
