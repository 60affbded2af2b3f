"""CMD: Context-aware Model self-Detoxification (Tang et al., EMNLP 2024; docs/methods/context-aware-self-detoxification.md).

- :mod:`detox.cmd.synthesis`: the self-detoxification data set (span detection, masking, mask
  filling, context-following generation, chain-of-thought training text);
- :mod:`detox.cmd.loss`: the toxic contrastive loss (InfoNCE, cosine, tau = 1);
- :mod:`detox.cmd.trainer`: LM loss after the marker + 0.5 x contrastive, on the HF ``Trainer``;
- :mod:`detox.cmd.chain`: the chain format and its parser (inference scores the generation part).
"""

from .chain import parse_chain, training_text
from .loss import contrastive_loss

__all__ = ["contrastive_loss", "parse_chain", "training_text"]
