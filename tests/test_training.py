"""The causal-LM trainer: full and LoRA fine-tuning, interruption and exact resume."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from detox.training import TrainConfig, train_causal_lm

from tiny_models import tiny_llama_dir

TEXTS = ["you are a stupid fool", "the water is hot", "they hate what we do", "shut up you idiot",
         "the day was long and kind", "what a dumb ugly thing", "he said some nice word", "kill the time"]


def _load(path):
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path), tok


@pytest.mark.parametrize("lora", [False, True])
def test_interrupted_training_resumes_to_the_same_weights(tmp_path, lora):
    base = tiny_llama_dir(str(tmp_path / "base"), seed=0)
    cfg = TrainConfig(steps=6, batch_size=3, max_length=8, lr=5e-3, save_every=4, lora=lora,
                      lora_target_modules=["q_proj", "v_proj"])
    m, t = _load(base)
    train_causal_lm(m, t, TEXTS, str(tmp_path / "full"), cfg, progress=False)

    m, t = _load(base)
    assert train_causal_lm(m, t, TEXTS, str(tmp_path / "split"), cfg, progress=False, stop_after=3) is None
    assert open(tmp_path / "split" / "checkpoints" / "LATEST").read() == "step-3"
    m, t = _load(base)  # a fresh process would start from the base weights again
    train_causal_lm(m, t, TEXTS, str(tmp_path / "split"), cfg, progress=False)

    a, _ = _load(str(tmp_path / "full"))
    b, _ = _load(str(tmp_path / "split"))
    orig, _ = _load(base)
    for (n, pa), (_, pb), (_, po) in zip(a.state_dict().items(), b.state_dict().items(), orig.state_dict().items()):
        torch.testing.assert_close(pa, pb, msg=n)
    changed = any(not torch.equal(pa, po) for pa, po in zip(a.state_dict().values(), orig.state_dict().values()))
    assert changed, "training changed nothing"
    assert os.path.exists(tmp_path / "full" / "training.json")
    # the saved model is a plain model (LoRA merged) that loads without peft
    assert not any("lora" in k for k in a.state_dict())


def test_training_lowers_the_loss(tmp_path):
    base = tiny_llama_dir(str(tmp_path / "base"), seed=0)
    m, t = _load(base)
    cfg = TrainConfig(steps=30, batch_size=4, max_length=8, lr=1e-2, save_every=100, warmup_steps=2)
    train_causal_lm(m, t, TEXTS, str(tmp_path / "out"), cfg, progress=False)
    import json

    losses = json.load(open(tmp_path / "out" / "training.json"))["losses"]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_empty_corpus_is_an_error(tmp_path):
    base = tiny_llama_dir(str(tmp_path / "base"), seed=0)
    m, t = _load(base)
    with pytest.raises(ValueError, match="no training texts"):
        train_causal_lm(m, t, ["", "  "], str(tmp_path / "o"), TrainConfig(steps=1), progress=False)
