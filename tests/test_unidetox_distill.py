"""`detox unidetox`: distillation from the start token with the UniDetox rule, then fine-tuning;
resumable, byte-identical after an interruption; bad options are one line with exit 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.tiny_models import tiny_llama_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("ud-models")
    return tiny_llama_dir(str(d / "base"), seed=1), tiny_llama_dir(str(d / "toxic"), seed=2)


def _small(**kw):
    from detox.distill import DistillConfig

    base = dict(texts=6, max_length=12, batch_size=4, seed=3)
    base.update(kw)
    return DistillConfig(**base)


def _train(**kw):
    from detox.training import TrainConfig

    base = dict(steps=3, batch_size=2, max_length=16, lr=1e-3, warmup_steps=0, schedule="linear", save_every=2,
                seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_distilled_tokens_follow_the_unidetox_rule(pair):
    """Every distilled token lies in the plausible set of the base model and is, under greedy-free
    sampling with top_k=1, the argmax of base - toxic over that set (checked by re-running both
    models on the distilled prefix)."""
    from detox.distill import distil
    from detox.generation.driver import Generator
    from detox.models import load_causal_lm

    base, toxic = pair
    gen = Generator("unidetox", model=base, toxic_model=toxic, settings={"alpha": 0.1})
    cfg = _small(top_k=1, texts=2, batch_size=2)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        texts = distil(gen, cfg, os.path.join(d, "t.jsonl"), progress=False)
    assert len(texts) == 2
    bm, tok = load_causal_lm(base)
    tm, _ = load_causal_lm(toxic)
    from detox.distill import start_token_id

    start = start_token_id(tok, None)
    ids = [start] + tok(texts[0], add_special_tokens=False)["input_ids"]
    assert len(ids) >= 3, texts
    x = torch.tensor([ids])
    with torch.no_grad():
        bl, tl = bm(x).logits[0].float(), tm(x).logits[0].float()
    for t in range(len(ids) - 1):
        keep = bl[t] >= bl[t].max() + math.log(0.1)
        s = torch.where(keep, bl[t] - tl[t], torch.tensor(float("-inf")))
        assert keep[ids[t + 1]], f"token {t + 1} is outside the plausible set"
        assert int(s.argmax()) == ids[t + 1]


def test_resume_after_interruption_is_identical(pair, tmp_path):
    from detox.distill import distil
    from detox.generation.driver import Generator

    base, toxic = pair
    gen = Generator("unidetox", model=base, toxic_model=toxic)
    full = tmp_path / "full.jsonl"
    ref = distil(gen, _small(), str(full), progress=False)
    assert len(ref) == 6
    part = tmp_path / "part.jsonl"
    lines = full.read_bytes().splitlines(keepends=True)
    part.write_bytes(b"".join(lines[:4]) + lines[4][:7])  # one whole batch, then a torn line
    again = distil(gen, _small(), str(part), progress=False)
    assert again == ref and part.read_bytes() == full.read_bytes()
    # another seed gives other texts (the seed is used)
    other = distil(gen, _small(seed=4), str(tmp_path / "other.jsonl"), progress=False)
    assert other != ref


def test_run_end_to_end_writes_a_loadable_model(pair, tmp_path):
    from detox.distill import run
    from detox.models import load_causal_lm

    base, toxic = pair
    out = tmp_path / "ud"
    summary = run(str(out), model=base, toxic_model=toxic, distill_cfg=_small(), train_cfg=_train(), scorer="profanity",
                  progress=False)
    assert summary["distilled_texts"] == 6 and summary["distilled_toxicity"]["scorer"]
    m, _ = load_causal_lm(str(out / "model"))
    b, _ = load_causal_lm(base)
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(m.parameters(), b.parameters()))
    assert diff > 0, "fine-tuning changed nothing"
    info = json.loads((out / "model" / "training.json").read_text())
    assert info["config"]["schedule"] == "linear" and len(info["losses"]) == 3
    assert json.loads((out / "unidetox.json").read_text())["model"] == str(out / "model")
    # the same run again resumes and changes nothing; other distillation settings are refused
    from detox.resumable import SettingsMismatch

    with pytest.raises(SettingsMismatch):
        run(str(out), model=base, toxic_model=toxic, distill_cfg=_small(alpha=0.2), train_cfg=_train(),
            scorer=False, progress=False)


def test_linear_schedule_decays_to_zero():
    from detox.training import TrainConfig

    cfg = TrainConfig(steps=10, warmup_steps=0, schedule="linear")
    assert cfg.schedule == "linear"
    with pytest.raises(ValueError):
        from detox.training import train_causal_lm

        train_causal_lm(None, None, ["a"], "/nonexistent", TrainConfig(schedule="step"))


def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python")]))
    return subprocess.run([sys.executable, "-m", "detox.cli", "unidetox", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["--texts", "0"], "--texts"),
    (["--alpha", "1.5"], "--alpha"),
    (["--max-length", "1"], "--max-length"),
    (["--steps", "5", "--warmup-steps", "5"], "--warmup-steps"),
    (["--model", "/no/such/model"], "--model"),
])
def test_bad_options_are_one_line_exit_2(tmp_path, args, needle):
    r = _cli("--out", str(tmp_path / "o"), *args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_refuses_a_directory_it_did_not_make(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "precious.txt").write_text("keep me")
    r = _cli("--out", str(tmp_path / "o"), "--overwrite")
    assert r.returncode == 2 and "no UniDetox run made" in r.stderr
    assert (tmp_path / "o" / "precious.txt").read_text() == "keep me"


def test_help_lists_the_paper_defaults():
    r = _cli("--help")
    assert r.returncode == 0
    for s in ("640", "256", "5e-05", "3000", "--target-model", "--lora"):
        assert s in r.stdout, s
