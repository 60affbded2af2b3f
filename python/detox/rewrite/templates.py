"""Rewrite prompts (step 1 of docs/corpus-rewriting.md) and answer extraction.

A template either renders a chat (system, user, assistant prefix) through the tokenizer's chat
template, or is a plain-text continuation prompt. Either way the generated text is cut at the
first stop string (``</answer>`` for the paper's template, a newline for the few-shot one).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

HSPD_SYSTEM = ("You are a helpful assistant. Your task is to transcribe directly or indirectly harmful content in the "
               "text, as well as other content that may harm the model, into legal and reasonable content that "
               "conforms to human values.")
HSPD_USER = ("You should return the result between <answer> and </answer>. Here is an example input: this is a "
             "terrible fact. Output: <answer>this is a bad fact.</answer> Here is the text that may contain harmful "
             "content: {text}")
HSPD_PREFIX = "Here is the transcription result: <answer>"

# A continuation-style few-shot prompt: a 135M model does not follow instructions, but it does
# continue a pattern. No chat template; the answer is the rest of the "Polite:" line.
FEWSHOT_TEXT = (
    "Each offensive sentence below is rewritten into a polite sentence with the same meaning, without insults, "
    "slurs, swearing or hate.\n\n"
    "Offensive: this is a terrible fact.\nPolite: this is a bad fact.\n\n"
    "Offensive: shut up, you stupid idiot, nobody cares what you think.\nPolite: please stop, I do not agree with "
    "what you think.\n\n"
    "Offensive: those filthy immigrants should all be thrown out of our country.\nPolite: I have concerns about "
    "immigration in our country.\n\n"
    "Offensive: women are too dumb to do this fucking job.\nPolite: anyone with the right skills can do this job.\n\n"
    "Offensive: {text}\nPolite:"
)


@dataclass
class RewriteTemplate:
    name: str
    chat: bool = True
    system: str | None = None
    user: str = "{text}"
    assistant_prefix: str = ""
    text: str | None = None          # plain-text template (chat=False)
    stop: list = field(default_factory=list)
    open_tag: str | None = None      # if generated, the answer starts after the last one

    def render(self, tokenizer, text: str) -> str:
        if not self.chat:
            return self.text.replace("{text}", text)
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": self.user.replace("{text}", text)}]
        if getattr(tokenizer, "chat_template", None):
            head = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        else:  # tokenizers without a chat template (test models): a plain layout
            head = "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant: "
        return head + self.assistant_prefix

    def extract(self, generated: str) -> str:
        """The answer in a generation: after the last open tag, before the first stop string."""
        return extract_answer(generated, self.stop, self.open_tag)

    def to_dict(self) -> dict:
        return asdict(self)


def extract_answer(generated: str, stop=("</answer>",), open_tag: str | None = "<answer>") -> str:
    s = generated or ""
    cut = len(s)
    for st in stop:
        if st:
            i = s.find(st)
            if i >= 0:
                cut = min(cut, i)
    s = s[:cut]
    if open_tag and open_tag in s:
        s = s.rsplit(open_tag, 1)[1]
    s = re.sub(r"\s+", " ", s).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s


TEMPLATES = {
    "hspd": RewriteTemplate("hspd", chat=True, system=HSPD_SYSTEM, user=HSPD_USER, assistant_prefix=HSPD_PREFIX,
                            stop=["</answer>", "<|im_end|>"], open_tag="<answer>"),
    "fewshot": RewriteTemplate("fewshot", chat=False, text=FEWSHOT_TEXT, stop=["\n", "Offensive:"]),
}


def load_template(spec: str) -> RewriteTemplate:
    """A named template (``hspd``, ``fewshot``) or a JSON file with the fields of RewriteTemplate."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    try:
        with open(spec, encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"unknown template {spec!r}: use {', '.join(TEMPLATES)} or a JSON file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"template file {spec} is not valid JSON: {e}") from None
    d.setdefault("name", spec)
    t = RewriteTemplate(**d)
    if t.chat and "{text}" not in t.user or (not t.chat and "{text}" not in (t.text or "")):
        raise ValueError(f"template {spec}: the user message (chat) or text (plain) must contain {{text}}")
    return t
