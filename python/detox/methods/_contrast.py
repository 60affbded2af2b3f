"""What the methods that contrast with a toxic model share: the toxic model's vocabulary check."""

from __future__ import annotations

from .base import Method, SettingsError


class ContrastMethod(Method):
    """A method whose processor runs a toxic (anti-expert / amateur) model beside ``generate``."""

    needs_toxic = True

    def setup(self, **extra_models):
        if self.models.toxic is None:
            raise ValueError(f"method {self.name} needs a toxic model with the base model's vocabulary")
        super().setup(**extra_models)

    def common(self, attention_mask) -> dict:
        m = self.models
        return dict(attention_mask=attention_mask, pad_token_id=m.tokenizer.pad_token_id, vocab_size=m.vocab_size)

    def vocabulary(self) -> int:
        m = self.models
        return m.vocab_size or m.model.get_output_embeddings().weight.shape[0]

    def check_k(self, value, option: str) -> None:
        v = self.vocabulary()
        if value is not None and value > v:
            raise SettingsError(f"{option} must be <= the vocabulary size {v}; got {value}")
