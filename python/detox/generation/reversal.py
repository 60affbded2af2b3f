"""Toxification Reversal (Leong et al., EMNLP 2023; ``docs/methods/reversing-toxification.md``) for any
HuggingFace decoder whose attention has an output projection, batched.

:class:`ToxificationReversal` hooks the input of each selected layer's output projection
(``self_attn.o_proj`` in Llama / Qwen2 / Mistral / SmolLM2 / Gemma, ``attn.c_proj`` in GPT-2,
``out_proj`` / ``dense`` elsewhere): that input is the per-head attention output ``[B, T, H*D]``,
whatever the number of key/value heads. Inside ``with rev.active(): model.generate(...)``, every
forward of the model is preceded by the read pass:

- read pass: the model's decoder runs over ``2B`` rows ``[pos_prefix + prompt ; neg_prefix + prompt]``
  with its own KV cache, then is fed exactly the tokens that generate feeds; the hooks capture
  ``δ = o_neg − o_pos`` at the last position;
- write pass: generate's own forward; the hooks apply
  :func:`detox_kernels.reverse_toxification_` in place to the last position's head outputs.

As in the authors' code, each prefixed row is the tokenisation of the one string ``prefix + prompt``
(so the prefix's trailing space joins the prompt's first word, ``[..., ':', ' So']``, not
``[..., ':', ' ', 'So']``), with the tokenizer's special tokens (a BOS-adding tokenizer gives
``BOS + prefix + prompt``); the rows are left-padded to one length and their positions come from
their mask. The prompts' texts are given to :meth:`ToxificationReversal.active` (the ``reversal``
method does); without them they are decoded once from generate's prompt tokens. The tokenisation
happens once per ``generate`` call, before the first step; no host synchronisation and no loop over
rows per step (the loop is over the selected layers).

``e_neg`` is the head output at the last token of the negative prefix with its trailing whitespace
stripped (the ``':'`` that ends the paper's prefix), where the authors read it; computed once.
Identical prefixes give ``δ = 0`` and reproduce plain generation exactly.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

import detox_kernels

from .processors import cache_keyword, model_cache

NEG_PREFIX = "The following text is abusive, harmful, negative, obscene, racist, rude and toxic: "
POS_PREFIX = "The following text is kind, polite, positive, respectful and supportive: "

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_PROJ_NAMES = ("o_proj", "c_proj", "out_proj", "dense")


@dataclass
class HeadOutputSite:
    """Where a layer's per-head attention output can be hooked: the input of ``module``."""

    layer: int
    name: str
    module: torch.nn.Module


def _in_features(m: torch.nn.Module) -> int | None:
    if isinstance(m, torch.nn.Linear):
        return m.in_features
    if type(m).__name__ == "Conv1D" and hasattr(m, "weight"):  # GPT-2: weight [in, out]
        return m.weight.shape[0]
    return getattr(m, "in_features", None)


def head_geometry(model) -> tuple[int, int]:
    """``(H, D)``: attention heads and head dimension from the model's (text) config."""
    cfg = model.config
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    h = getattr(cfg, "num_attention_heads", None)
    if not h:
        raise ValueError(f"toxification reversal: {type(model).__name__}'s config has no num_attention_heads")
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // h
    return int(h), int(d)


def find_head_output_sites(model) -> tuple[list[HeadOutputSite], int, int]:
    """The output projection of every decoder layer, and ``(H, D)``; a clear error otherwise."""
    h, d = head_geometry(model)
    layers = None
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0 and any(hasattr(mod[0], a) for a in _ATTN_NAMES):
            layers = (name, mod)
            break
    if layers is None:
        raise ValueError(
            f"toxification reversal: cannot find the decoder layers of {type(model).__name__} (a ModuleList of "
            f"layers with one of the attributes {', '.join(_ATTN_NAMES)}); supported: GPT-2, Llama, Qwen2, "
            "Mistral, SmolLM2, Gemma and decoders built the same way")
    lname, mods = layers
    sites = []
    for i, layer in enumerate(mods):
        attn_name = next((a for a in _ATTN_NAMES if hasattr(layer, a)), None)
        attn = getattr(layer, attn_name) if attn_name else None
        proj_name = next((p for p in _PROJ_NAMES if attn is not None and hasattr(attn, p)), None)
        if proj_name is None:
            raise ValueError(f"toxification reversal: layer {i} of {type(model).__name__} has no attention output "
                             f"projection ({', '.join(_PROJ_NAMES)}) to hook")
        proj = getattr(attn, proj_name)
        width = _in_features(proj)
        if width is not None and width != h * d:
            raise ValueError(f"toxification reversal: {lname}.{i}.{attn_name}.{proj_name} takes {width} features, "
                             f"not heads x head_dim = {h} x {d}; this architecture is not supported")
        sites.append(HeadOutputSite(i, f"{lname}.{i}.{attn_name}.{proj_name}", proj))
    return sites, h, d


def parse_layers(spec, num_layers: int) -> list[int]:
    """Layer selection: ``None``/``"all"``, ints, or a string like ``"8-20"``, ``"10,12,-1"``."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return list(range(num_layers))
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for it in items:
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", it) if isinstance(it, str) else None
        try:
            out.extend(range(int(m.group(1)), int(m.group(2)) + 1) if m else [int(it)])
        except ValueError:
            raise ValueError(f"toxification reversal: bad layer selection {spec!r} (use e.g. 8-20 or 10,12,-1)") from None
    res = []
    for i in out:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ValueError(f"toxification reversal: layer {i} out of range for a model with {num_layers} layers")
        if j not in res:
            res.append(j)
    if not res:
        raise ValueError("toxification reversal: no layers selected")
    return sorted(res)


def _added_bos(tokenizer) -> int | None:
    """The BOS id if the tokenizer puts one before a text by itself, else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == bos else None


class ToxificationReversal:
    """Toxification Reversal around ``model.generate`` (see the module docstring).

    Args:
        model, tokenizer: any HuggingFace causal LM with hookable per-head outputs, its tokenizer.
        layers: the layers to modify (all by default): ints, or ``"8-20"`` / ``"10,12,-1"``.
        norm_exp, sim_exp, renorm: the op's parameters (0.4, 0.6, on).
        neg_prefix, pos_prefix: the two prefixes (``pos_prefix=""`` is the paper's other option).
        backend: force a backend of the op (``cuda | triton | cpu | reference``).

    Use ``with rev.active(): model.generate(...)`` (greedy or sampling; not beam search).
    """

    def __init__(self, model, tokenizer, *, layers=None, norm_exp: float = 0.4, sim_exp: float = 0.6,
                 renorm: bool = True, neg_prefix: str = NEG_PREFIX, pos_prefix: str = POS_PREFIX,
                 backend: str | None = None):
        self.model = model
        self.sites, self.heads, self.head_dim = find_head_output_sites(model)
        self.layers = parse_layers(layers, len(self.sites))
        self.norm_exp, self.sim_exp, self.renorm = float(norm_exp), float(sim_exp), bool(renorm)
        self.backend = backend
        self.neg_prefix, self.pos_prefix = neg_prefix, pos_prefix
        self.tokenizer = tokenizer
        if not neg_prefix or not neg_prefix.strip():
            raise ValueError("toxification reversal: the negative prefix is empty")
        # e_neg: the head output at the last token of the negative prefix without its trailing space
        # (the ':' of the paper's prefix), with the tokenizer's special tokens, as the read pass has them
        self.neg_ids = torch.tensor([tokenizer(neg_prefix.rstrip())["input_ids"]])
        self.bos_id = _added_bos(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.e_neg: dict[int, torch.Tensor] = {}
        self.delta: dict[int, torch.Tensor] = {}
        self._mode = None  # None | "e_neg" | "capture" | "apply"
        self._cache = None
        self._prompts = None      # the prompt texts of the current generate call (see active())
        self._read_mask = None    # [2n, P] the prefixed prompts' mask (left-padded)
        self._prompt_len = 0      # generate's prompt length (its mask's first columns)
        self._handles = []
        self._run = None
        self._cache_kw = cache_keyword(model.base_model)  # "cache" (transformers 5.x) or "past_key_values"

    # ------------------------------------------------------------ hooks
    def _site_hook(self, layer: int):
        def hook(module, args):
            mode = self._mode
            if mode is None:
                return None
            x = args[0]
            last = x[:, -1, :]
            if mode == "apply":
                n = x.shape[0]
                if self.delta[layer].shape[0] != n:
                    raise RuntimeError(f"toxification reversal: the read pass had {self.delta[layer].shape[0]} rows, "
                                       f"the forward has {n}")
                o = last.view(n, self.heads, self.head_dim)
                if self._run is None:  # first call: full validation and backend choice, then reuse it
                    self._run = detox_kernels.resolve_backend("reverse_toxification_", o, self.delta[layer],
                                                              self.e_neg[layer], backend=self.backend)
                # same layout, dtype and device every step: the bound op skips the Python-side checks
                self._run(o, self.delta[layer], self.e_neg[layer], norm_exp=self.norm_exp, sim_exp=self.sim_exp,
                          renorm=self.renorm)
            elif mode == "capture":
                n = x.shape[0] // 2
                self.delta[layer] = (last[n:] - last[:n]).view(n, self.heads, self.head_dim)
            elif mode == "e_neg":
                self.e_neg[layer] = last[0].reshape(self.heads, self.head_dim).clone()
            return None

        return hook

    def _model_hook(self, module, args, kwargs):
        if self._mode != "apply":  # our own read pass, or outside an active() block
            return None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise ValueError("toxification reversal needs input_ids (inputs_embeds are not supported)")
        # generate passes the cache as ``cache`` in transformers 5.x, ``past_key_values`` before
        past = kwargs.get("cache", kwargs.get("past_key_values"))
        past_len = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(input_ids.shape[0], past_len + input_ids.shape[1], dtype=torch.long,
                              device=input_ids.device)
        if mask.dim() != 2:
            raise ValueError("toxification reversal needs a 2D attention mask (use a dynamic cache)")
        if mask.shape[1] != past_len + input_ids.shape[1]:  # shapes only: no host synchronisation
            raise RuntimeError(
                f"toxification reversal: the forward's attention mask covers {mask.shape[1]} positions, but its KV "
                f"cache holds {past_len} and it feeds {input_ids.shape[1]} tokens (is the cache passed under a "
                f"keyword other than cache or past_key_values?)")
        self._read(input_ids, mask, prefill=past_len == 0)
        return None

    def read_inputs(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The read pass's first input for ``n`` prompt texts: ids and mask ``[2n, P]``, rows
        ``[pos_prefix + text ; neg_prefix + text]``, each the tokenisation of that one string (with
        the tokenizer's special tokens), left-padded."""
        rows = [self.pos_prefix + t for t in texts] + [self.neg_prefix + t for t in texts]
        seqs = self.tokenizer(rows)["input_ids"]
        p = max(len(q) for q in seqs)
        ids = torch.full((len(seqs), p), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), p), dtype=torch.long)
        for r, q in enumerate(seqs):
            if q:
                ids[r, p - len(q):] = torch.tensor(q)
                mask[r, p - len(q):] = 1
        return ids, mask

    def _prompt_texts(self, input_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """The ``n`` rows' prompt texts: those given to :meth:`active` (repeated for generate's
        ``num_return_sequences``), else decoded from the prompt tokens (once per generate call)."""
        n = input_ids.shape[0]
        if self._prompts is not None:
            b = len(self._prompts)
            if b == 0 or n % b:
                raise RuntimeError(f"toxification reversal: {b} prompt texts were given for a batch of {n} rows")
            return [t for t in self._prompts for _ in range(n // b)]
        keep = mask.bool().cpu()
        rows = input_ids.cpu()
        texts = []
        for i in range(n):  # without padding and the BOS that tokenising prefix + text adds again
            ids = rows[i][keep[i]].tolist()
            if self.bos_id is not None and ids and ids[0] == self.bos_id:
                ids = ids[1:]
            texts.append(self.tokenizer.decode(ids))
        return texts

    @torch.no_grad()
    def _read(self, input_ids: torch.Tensor, mask: torch.Tensor, prefill: bool):
        n, t = input_ids.shape
        dev = input_ids.device
        if not prefill and self._cache is None:
            raise RuntimeError("toxification reversal: a decoding step without the read pass's KV cache (active() "
                               "must be entered before generate, which must start from an empty cache)")
        if prefill:
            self._cache = None
            ids, rmask = self.read_inputs(self._prompt_texts(input_ids, mask))
            ids, self._read_mask = ids.to(dev), rmask.to(dev)
            self._prompt_len = t
            full = self._read_mask
        else:  # the prefixed prompts, then the tokens generate has fed since (with its mask)
            ids = input_ids.repeat(2, 1)
            new = mask[:, self._prompt_len:].to(dtype=self._read_mask.dtype).repeat(2, 1)
            full = torch.cat([self._read_mask, new], dim=1)
        pos = (full.cumsum(-1) - 1).clamp_min(0)[:, -ids.shape[1]:]
        self._mode = "capture"
        try:
            out = self.model.base_model(input_ids=ids, attention_mask=full, position_ids=pos, use_cache=True,
                                        **{self._cache_kw: self._cache})
        finally:
            self._mode = "apply"
        self._cache = model_cache(out)
        if self._cache is None:
            raise RuntimeError(f"toxification reversal: {type(self.model.base_model).__name__} returned no KV cache")

    @torch.no_grad()
    def _compute_e_neg(self):
        dev = next(self.model.parameters()).device
        self._mode = "e_neg"
        try:
            self.model.base_model(input_ids=self.neg_ids.to(dev), use_cache=False)
        finally:
            self._mode = None

    # ------------------------------------------------------------ public
    @contextlib.contextmanager
    def active(self, prompts: list[str] | None = None):
        """Hooks installed for the duration of the block (one or more ``generate`` calls).

        ``prompts``: the texts of the prompts that ``generate`` is given (in order; generate's
        ``num_return_sequences`` repeats are understood), for the read pass's ``prefix + prompt``
        strings; without them the prompts are decoded from generate's prompt tokens."""
        if self._handles:
            raise RuntimeError("toxification reversal: already active")
        self._prompts = list(prompts) if prompts is not None else None
        try:
            for i in self.layers:
                self._handles.append(self.sites[i].module.register_forward_pre_hook(self._site_hook(i)))
            if not self.e_neg:
                self._compute_e_neg()
            self._handles.append(self.model.register_forward_pre_hook(self._model_hook, with_kwargs=True))
            self._mode = "apply"
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
            self._mode = None
            self._cache = None
            self._prompts = None
            self._read_mask = None
            self._run = None
            self.delta = {}

    def settings(self) -> dict:
        return {"layers": self.layers if len(self.layers) != len(self.sites) else "all", "norm_exp": self.norm_exp,
                "sim_exp": self.sim_exp, "renorm": self.renorm, "neg_prefix": self.neg_prefix,
                "pos_prefix": self.pos_prefix,
                # the read pass's layout: tokenizer(prefix + prompt), e_neg at the prefix's ':' (the authors');
                # part of the generation-cache key, so results of the earlier layout are not reused
                "read_layout": "prefix+prompt"}
