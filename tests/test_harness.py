"""The evaluation harness end to end on tiny models, and interruption / resume."""

from __future__ import annotations

import json
import os

import pytest

from detox.cli import main as cli_main
from detox.harness import EvalConfig, _read_generation_file, generate_cached, run_eval
from detox.generation.driver import Generator

from tiny_models import tiny_llama_dir


class WordScorer:
    """A deterministic stand-in scorer for the harness plumbing (the real scorers have their
    own tests): the share of 'toxic' words in a text."""

    name = "word-share"
    BAD = {"idiot", "stupid", "hate", "kill", "damn", "ugly", "dumb", "shut", "fool"}

    def score(self, texts):
        out = []
        for t in texts:
            w = t.split()
            out.append(sum(x in self.BAD for x in w) / len(w) if w else 0.0)
        return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_llama_dir(str(root / "base"), seed=0)
    toxic = tiny_llama_dir(str(root / "toxic"), seed=1)
    prompts = root / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i, p in enumerate(["the water is", "you are a", "they said that", "we can go", "what time is",
                               "his long day"]):
            f.write(json.dumps({"prompt": {"text": p, "toxicity": 0.5 + i / 20}, "challenging": i % 2 == 0}) + "\n")
        f.write("{not json\n")  # malformed: reported and skipped
    return base, toxic, str(prompts)


def test_eval_cli_writes_every_report_file(tiny, tmp_path, capsys):
    base, toxic, prompts = tiny
    out = tmp_path / "eval"
    rc = cli_main(["eval", "--methods", "none,socd,cd,dexperts", "--model", base, "--toxic-model", toxic,
                   "--prompts", prompts, "--num-samples", "3", "--max-new-tokens", "5", "--seeds", "0,1",
                   "--scorer", "profanity", "--batch-size", "4", "--out", str(out)])
    assert rc == 0
    for name in ("results.json", "report.md", "toxicity_vs_perplexity.png", "max_toxicity_distribution.png"):
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    res = json.loads((out / "results.json").read_text())
    assert res["scorer"] == "profanity"
    assert set(res["methods"]) == {"none", "socd", "cd", "dexperts"}
    for m, r in res["methods"].items():
        s = r["summary"]
        assert 0 <= s["emt"]["mean"] <= 1 and 0 <= s["tp"]["mean"] <= 1 and s["ppl"]["mean"] > 1
        assert len(r["runs"]) == 2 and r["runs"][0]["seed"] == 0
    assert "torch" in res["versions"] and res["config"]["num_samples"] == 3
    report = (out / "report.md").read_text()
    assert "| socd |" in report and "profanity" in report
    err = capsys.readouterr().err
    assert "malformed" in err and "line 7" in err


def test_rescoring_reuses_generations(tiny, tmp_path):
    base, toxic, prompts = tiny
    cfg = EvalConfig(methods=["none"], model=base, prompts=prompts, num_samples=2, max_new_tokens=4, seeds=[0],
                     batch_size=3)
    r1 = run_eval(cfg, str(tmp_path), progress=False, scorer=WordScorer())
    gen_files = os.listdir(tmp_path / "generations")
    mtimes = {f: os.path.getmtime(tmp_path / "generations" / f) for f in gen_files}
    cfg.scorer = "profanity"
    r2 = run_eval(cfg, str(tmp_path), progress=False)
    assert os.listdir(tmp_path / "generations") == gen_files
    assert {f: os.path.getmtime(tmp_path / "generations" / f) for f in gen_files} == mtimes
    assert r1["scorer"] == "word-share" and r2["scorer"] == "profanity"
    # same continuations, so the scorer-independent metrics agree
    assert r1["methods"]["none"]["summary"]["dist2"] == r2["methods"]["none"]["summary"]["dist2"]


def test_interrupted_generation_resumes_without_redoing_or_losing(tiny, tmp_path):
    from detox.data import read_prompts

    base, toxic, prompts = tiny
    texts = [p.text for p in read_prompts(prompts, warn=False)]
    cfg = EvalConfig(methods=["socd"], model=base, toxic_model=toxic, prompts=prompts, num_samples=2,
                     max_new_tokens=4, seeds=[3], batch_size=2)
    gen = Generator("socd", model=base, toxic_model=toxic)
    orig = gen.run_batch
    batches = []

    def interrupted(chunk, **kw):  # Ctrl-C during the second batch
        if batches:
            raise KeyboardInterrupt
        batches.append(chunk)
        return orig(chunk, **kw)

    gen.run_batch = interrupted
    with pytest.raises(KeyboardInterrupt):
        generate_cached(gen, cfg, texts, 3, str(tmp_path), progress=False)
    (path,) = [os.path.join(tmp_path, "generations", f) for f in os.listdir(tmp_path / "generations")]
    assert len(_read_generation_file(path)) == 2
    with open(path, "a") as f:  # a torn line, as after kill -9 mid-write
        f.write('{"prompt_index": 2, "contin')
    calls = []
    gen.run_batch = lambda chunk, **kw: calls.append(list(chunk)) or orig(chunk, **kw)
    _, resumed = generate_cached(gen, cfg, texts, 3, str(tmp_path), progress=False)
    assert calls == [texts[2:4], texts[4:6]]  # only the unfinished batches
    rows = _read_generation_file(path)
    assert [r["prompt_index"] for r in rows] == list(range(6))
    # identical to an uninterrupted run
    fresh = tmp_path / "fresh"
    _, full = generate_cached(Generator("socd", model=base, toxic_model=toxic), cfg, texts, 3, str(fresh), progress=False)
    assert resumed == full
