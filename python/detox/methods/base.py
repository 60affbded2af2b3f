"""What a method is: its settings, the models it needs, and how it generates one batch.

A method is a subclass of :class:`Method` in a module of :mod:`detox.methods`; the registry finds it
by its ``name``. It declares

- ``Settings``: a dataclass of :class:`Settings` whose fields are made with :func:`setting` (default,
  help text, allowed values or range). The CLI options ``--<method>-<field>`` are generated from it,
  its validation runs before any model is loaded, and the generation-cache key of ``detox eval``
  holds exactly these fields (plus what :meth:`Method.key_settings` adds);
- ``needs_toxic``: whether the method contrasts with a toxic model of the base vocabulary (the
  harness and ``detox generate`` load or make one only then);
- how it generates one batch: either a HuggingFace ``LogitsProcessor`` run inside
  ``model.generate`` (override :meth:`Method.processor`), its own decoding loop over the tokenized
  batch (override :meth:`Method.decode`), or a whole different pipeline from the prompt texts
  (override :meth:`Method.generate`);
- ``extra_outputs``: the names of the per-sample outputs it returns beside the texts in
  :attr:`GenerationResult.extras` (CMD: ``"chains"``).

``docs/adding-a-method.md`` walks through a complete example.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import UserError


class SettingsError(UserError, ValueError):
    """A user error in a method's (or generation's) settings; the message is one line for the user."""


class PromptError(UserError, ValueError):
    """A prompt that cannot be continued (empty, or too long for the model's context)."""


def setting(default, help: str, *, choices=None, min=None, max=None, min_exclusive: bool = False,
            max_exclusive: bool = False, metavar: str | None = None, default_text: str | None = None):
    """A settings field: ``default``, its ``help`` text, and optionally the allowed ``choices`` or a
    numeric range (``min``/``max``, inclusive unless ``*_exclusive``). ``None`` is always allowed
    for a field whose default is ``None`` (it means "the method's automatic value", which
    ``default_text`` describes in ``--help``)."""
    meta = dict(help=help, choices=tuple(choices) if choices is not None else None, min=min, max=max,
                min_exclusive=min_exclusive, max_exclusive=max_exclusive, metavar=metavar,
                default_text=default_text)
    return field(default=default, metadata=meta)


def _base_type(tp):
    """``int`` for ``int | None`` / ``Optional[int]``; the type itself otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


@dataclass
class Settings:
    """Base of every method's settings dataclass (see :func:`setting`)."""

    method: ClassVar[str] = ""

    @classmethod
    def fields_info(cls) -> list[tuple[dataclasses.Field, type]]:
        hints = typing.get_type_hints(cls)
        return [(f, _base_type(hints[f.name])) for f in dataclasses.fields(cls)]

    @classmethod
    def option(cls, name: str) -> str:
        """The command-line option of field ``name``: ``--<method>-<field with dashes>``."""
        return f"--{cls.method}-{name.replace('_', '-')}"

    def _where(self, name: str) -> str:
        return f"{self.method} setting {name} ({self.option(name)})"

    def validate(self) -> "Settings":
        """Check every field's type, choices and range, then :meth:`check`; raises
        :class:`SettingsError` naming the setting, its option and the offending value."""
        for f, tp in self.fields_info():
            v = getattr(self, f.name)
            m = f.metadata
            if v is None:
                if f.default is None:
                    continue
                raise SettingsError(f"{self._where(f.name)} needs a value")
            if tp is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
                setattr(self, f.name, v)
            if tp in (int, float, bool, str) and (not isinstance(v, tp) or (tp is int and isinstance(v, bool))):
                raise SettingsError(f"{self._where(f.name)} must be {tp.__name__}, got {v!r}")
            if tp is float and not math.isfinite(v):
                raise SettingsError(f"{self._where(f.name)} must be a finite number, got {v!r}")
            if m.get("choices") and v not in m["choices"]:
                raise SettingsError(f"{self._where(f.name)} must be one of {', '.join(map(str, m['choices']))}; "
                                    f"got {v!r}")
            lo, hi = m.get("min"), m.get("max")
            if lo is not None and (v <= lo if m.get("min_exclusive") else v < lo):
                raise SettingsError(f"{self._where(f.name)} must be {'>' if m.get('min_exclusive') else '>='} {lo}; "
                                    f"got {v!r}")
            if hi is not None and (v >= hi if m.get("max_exclusive") else v > hi):
                raise SettingsError(f"{self._where(f.name)} must be {'<' if m.get('max_exclusive') else '<='} {hi}; "
                                    f"got {v!r}")
        self.check()
        return self

    def check(self) -> None:
        """Cross-field checks of a subclass (raise :class:`SettingsError`)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SettingsError(f"unknown {cls.method} setting(s) {', '.join(unknown)}; "
                                f"known: {', '.join(sorted(known)) or 'none'}")
        return cls(**d).validate()


@dataclass
class NoSettings(Settings):
    """A method without settings."""


@dataclass
class Sampling:
    """How one batch is sampled (the same for every method)."""

    num_samples: int = 1
    max_new_tokens: int = 20
    top_p: float = 0.9
    temperature: float = 1.0
    do_sample: bool = True
    seed: int = 0
    top_k: int = 0              # 0 = no top-k filter (HuggingFace's own default is 50)
    min_new_tokens: int = 0     # EOS is suppressed until this many new tokens

    def generate_kwargs(self) -> dict:
        """The sampling part of ``model.generate``'s keyword arguments."""
        kw = dict(do_sample=self.do_sample, max_new_tokens=self.max_new_tokens,
                  num_return_sequences=self.num_samples)
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        if self.do_sample:
            kw.update(top_p=self.top_p, temperature=self.temperature, top_k=self.top_k)
        return kw


@dataclass
class GenerationResult:
    """One batch's output: ``texts[i][j]`` is sample ``j`` of prompt ``i``; ``extras[name][i][j]``
    the method's extra output ``name`` for it (see :attr:`Method.extra_outputs`); ``stats`` counts
    of this batch (e.g. CMD's chains that reached the generation step)."""

    texts: list[list[str]]
    extras: dict[str, list[list[Any]]] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class Models:
    """The loaded models a method works with (made by :class:`detox.generation.driver.Generator`)."""

    model: Any
    tokenizer: Any
    model_name: str
    device: Any = "cpu"
    toxic: Any = None
    toxic_name: str | None = None
    vocab_size: int | None = None   # the shared vocabulary of base and toxic model, where there is one

    def check_prompts(self, prompts: list[str], new_tokens: int) -> None:
        """Every prompt has text and fits the model's context with ``new_tokens`` more tokens."""
        cfg = self.model.config
        ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise PromptError(f"prompt {i} is empty: every prompt needs some text to continue")
            if ctx is not None:
                n = len(self.tokenizer(p)["input_ids"])
                if n + new_tokens > ctx:
                    raise PromptError(f"prompt {i} has {n} tokens; with {new_tokens} new tokens that exceeds the "
                                     f"model's context of {ctx} tokens: shorten it or lower --max-new-tokens")


class Method:
    """A detoxification method (subclass it in a module of :mod:`detox.methods`).

    An instance is made once per set of loaded models and generates any number of batches.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""           # one line: what it is (the --help group title)
    paper: ClassVar[str] = ""           # the paper it implements
    order: ClassVar[int] = 100          # position in listings
    docs: ClassVar[str] = ""            # its page in the repository, e.g. docs/methods/<name>.md
    Settings: ClassVar[type[Settings]] = NoSettings
    needs_toxic: ClassVar[bool] = False
    extra_outputs: ClassVar[tuple[str, ...]] = ()
    # the default decode may use the fast loop (detox.generation.fast) where it is exact; a method
    # whose generate call depends on more than its processor (hooks inside the forward) sets False
    fast_decoding: ClassVar[bool] = True
    decode_mode: str = "fast"           # "fast" or "hf" (Generator(decode=...), detox generate --decode)

    def __init__(self, settings: Settings, models: Models, **extra_models):
        self.settings = settings
        self.models = models
        self.setup(**extra_models)

    def setup(self, **extra_models) -> None:
        """Build what the method needs once (decoders, hooks, extra models); check the settings
        against the loaded models (e.g. against the vocabulary)."""
        if extra_models:
            raise TypeError(f"method {self.name} takes no extra models, got {', '.join(extra_models)}")

    # -- how one batch is generated ------------------------------------------------------------
    def processor(self, attention_mask: torch.Tensor):
        """A ``LogitsProcessor`` run inside ``model.generate`` for one batch, or ``None``."""
        return None

    def generate_kwargs(self, s: Sampling) -> dict:
        """Keyword arguments of ``model.generate`` for the sampling settings ``s``."""
        return dict(s.generate_kwargs(), pad_token_id=self.models.tokenizer.pad_token_id)

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, s: Sampling) -> torch.Tensor:
        """Token ids ``[B * num_samples, L + new]`` for the tokenized batch (default: HF
        ``generate`` with :meth:`processor`, run by the fast loop of :mod:`detox.generation.fast`
        where that gives the same tokens: unless ``decode_mode`` is ``"hf"``)."""
        from transformers import LogitsProcessorList

        proc = self.processor(attention_mask)
        if self.decode_mode == "fast" and self.fast_decoding:
            from ..generation.fast import fast_decode

            out = fast_decode(self.models.model, proc, input_ids, attention_mask, self.generate_kwargs(s),
                              seed=s.seed)
            if out is not None:
                return out
        return self.models.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                          logits_processor=LogitsProcessorList([proc]) if proc is not None else None,
                                          **self.generate_kwargs(s))

    def generate(self, prompts: list[str], s: Sampling) -> GenerationResult:
        """One batch: tokenize (left-padded), seed, :meth:`decode`, cut off the prompts, decode the text."""
        m = self.models
        m.check_prompts(prompts, s.max_new_tokens)
        enc = m.tokenizer(prompts, return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"].to(m.device), enc["attention_mask"].to(m.device)
        torch.manual_seed(s.seed)
        out = self.decode(ids, mask, s)
        texts = m.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        n = s.num_samples
        return GenerationResult([texts[i * n:(i + 1) * n] for i in range(len(prompts))])

    # -- what identifies its output ------------------------------------------------------------
    def key_settings(self) -> dict:
        """Everything of this method that changes its output (the generation-cache key): its
        settings, with automatic values resolved where the method knows them."""
        return self.settings.to_dict()
