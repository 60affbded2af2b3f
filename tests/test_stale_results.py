"""Never report stale results, never destroy a user's file, never mix two runs."""

from __future__ import annotations

import json
import os

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from detox.cli import main
from detox.errors import UserError
from detox.resumable import SettingsMismatch

from tiny_models import tiny_llama_dir


class LengthScorer:
    name = "length"

    def score(self, texts):
        return [min(1.0, len(t) / 40) for t in texts]


def _gen_files(out):
    d = out / "generations"
    return sorted(os.listdir(d)) if d.exists() else []


def test_eval_notices_weights_changed_in_place(tmp_path):
    from detox.harness import EvalConfig, run_eval

    model = tiny_llama_dir(str(tmp_path / "model"), seed=0)
    prompts = tmp_path / "p.txt"
    prompts.write_text("the water is\nyou are a\nthey said that\n")
    cfg = EvalConfig(methods=["none"], model=model, prompts=str(prompts), num_samples=3, max_new_tokens=6)
    out = tmp_path / "eval"
    r1 = run_eval(cfg, str(out), progress=False, scorer=LengthScorer())
    first = _gen_files(out)
    r_same = run_eval(cfg, str(out), progress=False, scorer=LengthScorer())
    assert _gen_files(out) == first  # same weights: the cached generations are reused
    assert r_same["methods"]["none"]["summary"] == r1["methods"]["none"]["summary"]
    tiny_llama_dir(str(tmp_path / "model"), seed=5)  # "fine-tune more into the same folder"
    r2 = run_eval(cfg, str(out), progress=False, scorer=LengthScorer())
    assert len(_gen_files(out)) == 2  # new weights: generated anew, not the old texts
    g1, g2 = (json.loads((out / r["methods"]["none"]["runs"][0]["generations"]).read_text().splitlines()[0])
              for r in (r1, r2))
    assert g1["continuations"] != g2["continuations"]


def test_model_fingerprint_follows_the_content():
    from detox.models import model_fingerprint

    assert model_fingerprint(("model", "tok")) is None and model_fingerprint("org/some-hub-id") is None
    assert model_fingerprint("smollm2-135m-instruct") == "embedded:smollm2-135m-instruct"


def test_rewrite_never_writes_over_its_input(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "you are an idiot"}\n{"text": "shut up"}\n')
    before = corpus.read_bytes()
    assert main(["rewrite", str(corpus), "--out", str(corpus)]) == 2
    assert "is the input file" in capsys.readouterr().err and corpus.read_bytes() == before


def test_rewrite_never_replaces_an_unrelated_file(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "you are an idiot"}\n')
    other = tmp_path / "notes.jsonl"
    other.write_text("my notes\n")
    assert main(["rewrite", str(corpus), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not the output of an earlier `detox rewrite`" in err and other.read_text() == "my notes\n"


def test_rewrite_refuses_a_smaller_limit_than_a_finished_run(tmp_path):
    from detox.rewrite.runner import _check_meta

    work = str(tmp_path / "out.jsonl.hspd")
    meta = {"key": "k", "input": "in", "input_bytes": 10, "input_sha": "s", "text_field": "text", "format": "jsonl",
            "max_chars": 100, "limit": None, "config": {}}
    _check_meta(work, meta, overwrite=False)  # a full run
    with pytest.raises(UserError, match="--limit 2 would shrink its output to 2"):
        _check_meta(work, dict(meta, limit=2), overwrite=False)
    _check_meta(work, dict(meta, limit=2), overwrite=True)  # asked for: start over
    _check_meta(work, dict(meta, limit=5), overwrite=False)  # a larger limit extends the run
    with pytest.raises(UserError, match="over 5 texts"):
        _check_meta(work, dict(meta, limit=3), overwrite=False)
    _check_meta(work, dict(meta, limit=None), overwrite=False)  # all texts: extends too


TEXTS = ["you are a stupid fool", "the water is hot", "they hate what we do", "shut up you idiot",
         "the day was long and kind", "what a dumb ugly thing"]


def test_finetune_refuses_to_resume_with_other_data_or_settings(tmp_path):
    from detox.training import TrainConfig, train_causal_lm

    base = tiny_llama_dir(str(tmp_path / "base"), seed=0)

    def load():
        return AutoModelForCausalLM.from_pretrained(base), AutoTokenizer.from_pretrained(base)

    cfg = TrainConfig(steps=4, batch_size=2, max_length=8, lr=5e-3, save_every=2)
    out = str(tmp_path / "ft")
    m, t = load()
    assert train_causal_lm(m, t, TEXTS, out, cfg, progress=False, stop_after=2, data_description="a.jsonl") is None
    for texts, c in ((TEXTS[::-1], cfg), (TEXTS, TrainConfig(**{**cfg.__dict__, "lr": 1e-3})),
                     (TEXTS, TrainConfig(**{**cfg.__dict__, "steps": 6}))):
        m, t = load()
        with pytest.raises(SettingsMismatch, match="a training run with other data or settings"):
            train_causal_lm(m, t, texts, out, c, progress=False, data_description="b.jsonl")
    m, t = load()  # the same data and settings resume
    assert train_causal_lm(m, t, TEXTS, out, cfg, progress=False, data_description="a.jsonl") == out
    info = json.load(open(os.path.join(out, "training.json")))
    assert info["data"] == "a.jsonl" and len(info["texts_sha256"]) == 64 and info["n_texts"] == len(TEXTS)


def test_cli_finetune_resume_with_other_data_is_one_line_exit_2(tmp_path, capsys):
    base = tiny_llama_dir(str(tmp_path / "base"), seed=0)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(TEXTS) + "\n")
    b.write_text("\n".join(TEXTS[:3]) + "\n")
    out = tmp_path / "ft"
    argv = ["finetune", "--model", base, "--steps", "2", "--batch-size", "2", "--max-length", "8", "--save-every",
            "1", "--out", str(out)]
    assert main(argv + ["--data", str(a)]) == 0
    os.remove(out / "model.safetensors")  # as if killed after the checkpoints, before the final save
    capsys.readouterr()
    assert main(argv + ["--data", str(b)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "other data or settings" in err[0] and "texts_sha256" in err[0]


def test_a_second_generate_on_the_same_out_is_refused(tmp_path, capsys):
    model = tiny_llama_dir(str(tmp_path / "m"), seed=0)
    out = tmp_path / "g.jsonl"
    (tmp_path / "g.jsonl.lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename,
                                                       "since": "now", "command": "detox generate"}))
    rc = main(["generate", "--method", "none", "--model", model, "--prompt", "the water", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"being written by process {os.getppid()}" in err and not out.exists()


def test_a_second_rewrite_on_the_same_out_is_refused(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "you are an idiot"}\n')
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename,
                                                         "since": "now", "command": "detox rewrite"}))
    assert main(["rewrite", str(corpus), "--out", str(out), "--scorer", "profanity"]) == 2
    assert f"being written by process {os.getppid()}" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.jsonl.hspd").exists()
