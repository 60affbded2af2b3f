"""CMD inference: a CMD-trained model writes its detoxification chain; only the generation part is
the continuation, the whole chain comes back as the extra output ``chains``."""

from __future__ import annotations

from dataclasses import dataclass

from .base import GenerationResult, Method, Sampling, Settings, setting


@dataclass
class CMDSettings(Settings):
    chain_tokens: int = setting(96, "most tokens the model may write for its chain before \"# Generation:\"",
                                min=1)
    guided: bool = setting(True, "the driver writes the chain's step headers and the model each step "
                                 "(--no-cmd-guided: the model writes the whole chain unguided)")


class CMD(Method):
    name = "cmd"
    title = "CMD: a CMD-trained --model writes its self-detoxification chain, then the continuation"
    paper = "Tang et al. (EMNLP 2024)"
    order = 70
    docs = "docs/methods/context-aware-self-detoxification.md"
    Settings = CMDSettings
    extra_outputs = ("chains",)

    def setup(self, **extra_models):
        super().setup(**extra_models)
        self._hash_ids = None

    def hash_token_ids(self) -> list[int]:
        """The vocabulary's tokens that contain "#" (suppressed in the guided generation step)."""
        if self._hash_ids is None:
            tok = self.models.tokenizer
            toks = tok.convert_ids_to_tokens(list(range(len(tok))))
            self._hash_ids = [i for i, t in enumerate(toks) if t and "#" in t]
        return self._hash_ids

    def generate(self, prompts: list[str], s: Sampling) -> GenerationResult:
        from ..cmd.inference import generate_chain_batch, generate_guided_chain_batch

        c = self.settings
        if c.guided:
            return generate_guided_chain_batch(self.models, prompts, s, chain_tokens=c.chain_tokens,
                                               hash_ids=self.hash_token_ids())
        return generate_chain_batch(self.models, prompts, s, chain_tokens=c.chain_tokens)
