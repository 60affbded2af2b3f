"""A user's mistake gets one line ``error: ...`` naming the offending value, exit code 2, no traceback,
and it is caught before any model is loaded; outputs are not overwritten or written twice at once."""

from __future__ import annotations

import json
import os

import pytest

import detox.models
from detox.cli import main
from detox.errors import OutputLock, UserError

from tiny_models import tiny_llama_dir


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "prompts.txt").write_text("the water is\nyou are a\n")
    (d / "binary.jsonl").write_bytes(b"\x00\x01\x02 not text \x00")
    (d / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve\n".encode("latin-1") * 4)
    (d / "empty.jsonl").write_text("\n\n")
    (d / "existing.jsonl").write_text('{"keep": "me"}\n')
    (d / "notamodel").mkdir()
    (d / "notamodel" / "readme.txt").write_text("hello")
    (d / "dir").mkdir()
    return d


@pytest.fixture
def no_model_loads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(detox.models, "load_causal_lm", refuse)


def _run(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err
    return rc, err


def _assert_one_line_error(rc, err, fragment):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert rc == 2, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    assert fragment in errors[0], (fragment, errors[0])


def _cases(d):
    p, m = d / "prompts.txt", d / "notamodel"
    return [
        # generate
        (["generate", "--prompts", d / "missing.jsonl"], "prompt file not found"),
        (["generate", "--prompts", d / "dir"], "is a directory"),
        (["generate", "--prompts", d / "binary.jsonl"], "binary"),
        (["generate", "--prompts", d / "latin1.txt"], "not UTF-8"),
        (["generate", "--prompt", "x", "--temperature", "0"], "'0'"),
        (["generate", "--prompt", "x", "--temperature", "-1"], "'-1'"),
        (["generate", "--prompt", "x", "--max-new-tokens", "0"], "'0'"),
        (["generate", "--prompt", "x", "--batch-size", "0"], "--batch-size"),
        (["generate", "--prompt", "x", "--batch-size", "-1"], "'-1'"),
        (["generate", "--prompt", "x", "--num-samples", "0"], "--num-samples"),
        (["generate", "--prompt", "x", "--top-p", "0"], "--top-p"),
        (["generate", "--prompt", "x", "--top-p", "2"], "'2'"),
        (["generate", "--prompt", "x", "--limit", "0"], "--limit"),
        (["generate", "--prompt", "x", "--seed", "abc"], "'abc'"),
        (["generate", "--prompt", "x", "--socd-k-min", "10", "--socd-k-max", "5"], "--socd-k-max (5)"),
        (["generate", "--prompt", "x", "--socd-divergence", "kl"], "'kl'"),
        (["generate", "--prompt", "x", "--method", "nosuch"], "'nosuch'"),
        (["generate", "--prompt", "x", "--model", m], "notamodel"),
        (["generate", "--prompt", "x", "--model", d / "missing-model"], "missing-model"),
        (["generate", "--prompt", "x", "--out", d / "nofolder" / "out.jsonl"], "does not exist"),
        (["generate", "--prompt", "x", "--out", "/proc/detox-out.jsonl"], "/proc/detox-out.jsonl"),
        (["generate", "--prompt", "x", "--out", d / "existing.jsonl"], "--overwrite"),
        (["generate", "--prompt", "x", "--out", d / "dir"], "is a directory"),
        (["generate", "--prompt", "   "], "--prompt is empty"),
        (["generate", "--prompts", p, "--prompt", "x"], "exactly one of"),
        # eval / demo
        (["eval", "--seeds", "0,abc"], "'abc'"),
        (["eval", "--seeds", "0,,1"], "seeds"),
        (["eval", "--scorer", "nosuch"], "'nosuch'"),
        (["eval", "--methods", "none,foo"], "'foo'"),
        (["eval", "--methods", "none,none"], "twice"),
        (["eval", "--prompts", d / "missing.jsonl"], "missing.jsonl"),
        (["eval", "--out", d / "existing.jsonl"], "is a file"),
        (["eval", "--num-samples", "0"], "--num-samples"),
        (["eval", "--top-p", "2"], "'2'"),
        (["eval", "--threshold", "1.5"], "'1.5'"),
        (["eval", "--model", m], "notamodel"),
        (["eval", "--ppl-model", m], "--ppl-model"),
        (["eval", "--sasa-max-candidates", "0", "--methods", "sasa"], "--sasa-max-candidates"),
        (["demo", "--limit", "0"], "--limit"),
        (["demo", "--methods", "bogus"], "'bogus'"),
        # rewrite / finetune
        ([ "rewrite", d / "missing.jsonl", "--out", d / "o.jsonl"], "missing.jsonl"),
        (["rewrite", d / "empty.jsonl", "--out", d / "o.jsonl"], "no texts to rewrite"),
        (["rewrite", p, "--out", p], "is the input file"),
        (["rewrite", p, "--out", d / "o.jsonl", "--lambda", "2"], "'2'"),
        (["rewrite", p, "--out", d / "o.jsonl", "--batch-size", "0"], "--batch-size"),
        (["rewrite", p, "--out", d / "o.jsonl", "--scorer", "nosuch"], "'nosuch'"),
        (["rewrite", p, "--out", d / "o.jsonl", "--socd-k-min", "0"], "--socd-k-min"),
        (["finetune", "--data", d / "missing.jsonl", "--out", d / "ft"], "missing.jsonl"),
        (["finetune", "--data", d / "empty.jsonl", "--out", d / "ft"], "no texts"),
        (["finetune", "--data", p, "--out", d / "ft", "--steps", "0"], "--steps"),
        (["finetune", "--data", p, "--out", d / "ft", "--lr", "0"], "--lr"),
        (["finetune", "--data", p, "--out", d / "existing.jsonl"], "is a file"),
        # train-toxic, fit-sasa, cmd
        (["train-toxic", "--data", d / "missing.jsonl"], "missing.jsonl"),
        (["train-toxic", "--steps", "0"], "--steps"),
        (["fit-sasa", "--data", d / "missing"], "missing"),
        (["fit-sasa", "--data", p, "--holdout", "1"], "'1'"),
        (["fit-sasa", "--data", p, "--batch-size", "0"], "--batch-size"),
        (["fit-sasa", "--data", p, "--model", m], "notamodel"),
        (["cmd-synthesize", "--prompts", d / "missing.jsonl", "--out", d / "c"], "missing.jsonl"),
        (["cmd-synthesize", "--prompts", p, "--out", d / "c", "--num-continuations", "0"], "--num-continuations"),
        (["cmd-synthesize", "--prompts", p, "--out", d / "c", "--scorer", "nosuch"], "'nosuch'"),
        (["cmd-train", "--data", d / "missing", "--out", d / "ct"], "missing"),
        (["cmd-train", "--data", d / "missing", "--out", d / "ct", "--tau", "0"], "--tau"),
    ]


@pytest.mark.parametrize("i", range(63))
def test_bad_input_is_one_line_and_exit_2_before_any_model_loads(files, i, capsys, no_model_loads):
    cases = _cases(files)
    assert len(cases) == 63
    argv, fragment = cases[i]
    rc, err = _run(argv, capsys)
    _assert_one_line_error(rc, err, fragment)
    assert (files / "existing.jsonl").read_text() == '{"keep": "me"}\n'  # never touched


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tinycli")
    base = tiny_llama_dir(str(root / "base"), seed=0)
    other = tiny_llama_dir(str(root / "other"), seed=3)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["zzz-extra-token"])  # one more token: another vocabulary
    tok.save_pretrained(other)
    return base, other


def test_errors_that_need_the_models_are_one_line_too(tiny, tmp_path, capsys):
    base, other = tiny
    rc, err = _run(["generate", "--prompt", "the water is", "--model", base, "--toxic-model", other], capsys)
    _assert_one_line_error(rc, err, "vocabular")
    rc, err = _run(["generate", "--prompt", "the water is", "--model", base, "--toxic-model", base,
                    "--socd-k-min", "100000"], capsys)
    _assert_one_line_error(rc, err, "--socd-k-min must be <= the vocabulary size")
    rc, err = _run(["generate", "--prompt", "the " * 200, "--model", base, "--method", "none"], capsys)
    _assert_one_line_error(rc, err, "exceeds the model's context")


def test_debug_shows_the_traceback(files, capsys):
    with pytest.raises(UserError, match="prompt file not found"):
        main(["generate", "--prompts", str(files / "missing.jsonl"), "--debug"])


def test_generate_writes_atomically_and_refuses_to_overwrite(tiny, tmp_path, capsys):
    base, _ = tiny
    out = tmp_path / "g.jsonl"
    argv = ["generate", "--method", "none", "--model", base, "--prompt", "the water is", "--num-samples", "2",
            "--max-new-tokens", "3", "--out", str(out)]
    assert main(argv) == 0
    first = out.read_text()
    assert len(first.splitlines()) == 2 and "wrote 2 continuations" in capsys.readouterr().err
    rc, err = _run(argv, capsys)
    _assert_one_line_error(rc, err, "--overwrite")
    assert out.read_text() == first
    rc, err = _run(argv + ["--overwrite", "--batch-size", "0"], capsys)  # a bad value never empties the file
    assert rc == 2 and out.read_text() == first
    assert main(argv + ["--overwrite", "--seed", "1"]) == 0
    assert len(out.read_text().splitlines()) == 2 and not os.path.exists(f"{out}.part")


def test_generate_interrupted_leaves_no_partial_file_and_says_nothing_written(tiny, tmp_path, capsys, monkeypatch):
    from detox.generation.driver import Generator

    base, _ = tiny
    out = tmp_path / "g.jsonl"

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Generator, "run_batch", boom)
    with pytest.raises(KeyboardInterrupt):
        main(["generate", "--method", "none", "--model", base, "--prompt", "x y", "--out", str(out)])
    assert not out.exists() and not os.path.exists(f"{out}.part")
    assert "wrote" not in capsys.readouterr().err


def test_a_second_writer_of_the_same_output_is_refused(tmp_path):
    out = str(tmp_path / "eval")
    with OutputLock(out, directory=True):
        # another process holds it: the lock file names a live process (our parent)
        lock = os.path.join(out, ".lock")
        info = json.load(open(lock))
        info["pid"] = os.getppid()
        json.dump(info, open(lock, "w"))
        with pytest.raises(UserError, match=rf"{out} is being written by process {os.getppid()} on "):
            with OutputLock(out, directory=True):
                pass
    # a lock left by a process that is gone is taken over
    os.makedirs(out, exist_ok=True)
    json.dump({"pid": 2 ** 22 + 12345, "host": os.uname().nodename, "since": "x", "command": "detox eval"},
              open(os.path.join(out, ".lock"), "w"))
    with OutputLock(out, directory=True) as lk:
        assert json.load(open(lk.path))["pid"] == os.getpid()
    assert not os.path.exists(os.path.join(out, ".lock"))


def test_cli_eval_refuses_an_output_another_process_is_writing(files, tmp_path, capsys, no_model_loads):
    out = tmp_path / "eval"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename,
                                           "since": "2026-12-03 10:00:00", "command": "detox eval --methods none"}))
    rc, err = _run(["eval", "--methods", "none", "--prompts", files / "prompts.txt", "--scorer", "profanity",
                    "--out", out], capsys)
    _assert_one_line_error(rc, err, f"being written by process {os.getppid()}")


def test_help_states_the_ranges(capsys):
    for command, needles in {"generate": ["in (0, 1]", "> 0", ">= 1"], "eval": ["in (0, 1]", "integer seeds"],
                             "rewrite": ["in [0, 1]", ">= 1"], "fit-sasa": ["in [0, 1)"],
                             "cmd-train": ["> 0"]}.items():
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        for n in needles:
            assert n in text, (command, n)
        if command == "generate":
            assert "a negative beta steers toward toxicity" in text
