"""The CMD chain-of-thought text (phase 1 step 4 of CMD, docs/methods/context-aware-self-detoxification.md) and its parser.

Training text for a toxic prompt::

    # Text: {prompt} # Let's detoxify step by step. # The context is toxic. # Detect the toxic segment
    within the context: {masked prompt} # Detoxify the toxic segments: {filled prompt} # Generation:
    {continuation} #

For a non-toxic prompt the detect / detoxify steps are skipped (``# The context is not toxic.``).
The LM loss covers the tokens after :data:`MARKER`; at inference the model is given
:func:`inference_prefix` and writes the rest of the chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = "# Let's detoxify step by step."
TOXIC = "# The context is toxic."
NON_TOXIC = "# The context is not toxic."
DETECT = "# Detect the toxic segment within the context:"
DETOXIFY = "# Detoxify the toxic segments:"
GENERATION = "# Generation:"
END = " #"
MASK = "[MASK]"


def inference_prefix(prompt: str) -> str:
    """What the model is given at inference; it continues with the chain."""
    return f"# Text: {prompt} {MARKER}"


def chain_before_generation(prompt: str, masked: str | None = None, filled: str | None = None) -> str:
    """The chain up to and including ``# Generation:`` (the context of the continuation)."""
    if masked is None:
        return f"{inference_prefix(prompt)} {NON_TOXIC} {GENERATION}"
    return f"{inference_prefix(prompt)} {TOXIC} {DETECT} {masked} {DETOXIFY} {filled} {GENERATION}"


def training_text(prompt: str, continuation: str, masked: str | None = None, filled: str | None = None) -> str:
    return f"{chain_before_generation(prompt, masked, filled)} {continuation.strip()}{END}"


@dataclass
class ParsedChain:
    toxic: bool | None        # None: the model did not say
    masked: str | None
    filled: str | None
    generation: str | None    # None: no "# Generation:" step in the chain
    complete: bool            # the generation step was closed with " #"


_STEP = re.compile(r"#\s")


def parse_chain(text: str) -> ParsedChain:
    """Parse what the model wrote after :func:`inference_prefix` (or a whole training text)."""
    if MARKER in text:
        text = text.split(MARKER, 1)[1]
    toxic = True if TOXIC in text else (False if NON_TOXIC in text else None)
    masked = filled = generation = None
    complete = False
    if DETECT in text:
        masked = text.split(DETECT, 1)[1].split(DETOXIFY, 1)[0].split(GENERATION, 1)[0].strip()
    if DETOXIFY in text:
        filled = text.split(DETOXIFY, 1)[1].split(GENERATION, 1)[0].strip()
    if GENERATION in text:
        rest = text.split(GENERATION, 1)[1]
        cut = rest.find(" #")
        if cut >= 0:
            rest, complete = rest[:cut], True
        elif rest.rstrip().endswith("#"):
            rest, complete = rest.rstrip()[:-1], True
        generation = rest.strip()
    return ParsedChain(toxic, masked, filled, generation, complete)
