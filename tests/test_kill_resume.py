"""``kill -9`` in the middle of a long job, then the same command again: nothing lost, nothing
duplicated, the same output as an uninterrupted run; a kill while the final report is written
leaves no torn file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from detox.cli import main

from tiny_models import WORDS, tiny_llama_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    base = tiny_llama_dir(str(root / "base"), seed=0)
    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"{WORDS[i % 90]} {WORDS[(7 * i) % 90]} {WORDS[(3 * i + 1) % 90]}\n"
                               for i in range(300)))
    return base, str(prompts)


def _kill_when(cmd, ready, timeout=120):
    """Run ``cmd`` and kill -9 it as soon as ``ready()`` is true; returns whether it was still running."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python")]))
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < timeout:
        if p.poll() is not None:
            return False
        if ready():
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            return True
        time.sleep(0.02)
    p.kill()
    raise AssertionError("the job never reached the point to kill it at")


def _lines(path):
    return open(path, "rb").read().count(b"\n") if os.path.exists(path) else 0


def _eval_argv(base, prompts, out):
    return ["eval", "--methods", "none", "--model", base, "--prompts", prompts, "--num-samples", "2",
            "--max-new-tokens", "6", "--batch-size", "1", "--scorer", "profanity", "--out", str(out)]


def test_eval_killed_mid_generation_resumes_exactly(tiny, tmp_path):
    base, prompts = tiny
    out = tmp_path / "killed"
    gen_dir = out / "generations"

    def some_written():
        files = os.listdir(gen_dir) if gen_dir.exists() else []
        return bool(files) and _lines(gen_dir / files[0]) >= 5

    killed = _kill_when([sys.executable, "-m", "detox.cli"] + _eval_argv(base, prompts, out), some_written)
    assert killed, "the run finished before it could be killed"
    (name,) = os.listdir(gen_dir)
    assert 5 <= _lines(gen_dir / name) < 300 and not (out / "results.json").exists()
    # the killed run's lock names a process that is gone: the rerun takes it over and resumes
    assert main(_eval_argv(base, prompts, out)) == 0
    fresh = tmp_path / "fresh"
    assert main(_eval_argv(base, prompts, fresh)) == 0
    assert (gen_dir / name).read_bytes() == (fresh / "generations" / name).read_bytes()
    rows = [json.loads(l)["prompt_index"] for l in open(gen_dir / name)]
    assert sorted(rows) == list(range(300)) and len(rows) == 300  # nothing lost, nothing twice
    a, b = (json.loads((d / "results.json").read_text()) for d in (out, fresh))
    assert a["methods"]["none"]["summary"] == b["methods"]["none"]["summary"]


def test_a_kill_while_the_report_is_written_leaves_no_torn_file(tiny, tmp_path, monkeypatch):
    import detox.resumable as R

    base, prompts = tiny
    small = tmp_path / "p.txt"
    small.write_text("the water is\nyou are a\n")
    out = tmp_path / "eval"
    argv = _eval_argv(base, str(small), out)
    real = R.os.replace

    def killed_at_rename(src, dst):
        if str(dst).endswith("report.md"):
            raise KeyboardInterrupt  # the process dies between writing the new report and renaming it
        return real(src, dst)

    monkeypatch.setattr(R.os, "replace", killed_at_rename)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert json.loads((out / "results.json").read_text())["methods"]  # complete
    assert not (out / "report.md").exists()  # the old report (none) stays; no torn file
    monkeypatch.setattr(R.os, "replace", real)
    assert main(argv) == 0 and (out / "report.md").read_text().startswith("# Toxicity evaluation")


def test_cmd_synthesize_killed_mid_run_resumes_exactly(tiny, tmp_path):
    base, prompts = tiny
    short = tmp_path / "p.txt"
    short.write_text("".join(open(prompts).readlines()[:40]))

    def argv(out):
        return ["cmd-synthesize", "--prompts", str(short), "--model", base, "--scorer", "profanity",
                "--num-continuations", "2", "--max-new-tokens", "4", "--fill-candidates", "2", "--batch-size", "2",
                "--chunk-size", "2", "--out", str(out)]

    out = tmp_path / "killed"
    killed = _kill_when([sys.executable, "-m", "detox.cli"] + argv(out), lambda: _lines(out / "records.jsonl") >= 4)
    assert killed, "the run finished before it could be killed"
    assert 4 <= _lines(out / "records.jsonl") < 40
    assert main(argv(out)) == 0
    fresh = tmp_path / "fresh"
    assert main(argv(fresh)) == 0
    assert (out / "records.jsonl").read_bytes() == (fresh / "records.jsonl").read_bytes()
    assert (out / "train.jsonl").read_bytes() == (fresh / "train.jsonl").read_bytes()
    idx = [json.loads(l)["index"] for l in open(out / "records.jsonl")]
    assert sorted(idx) == list(range(40)) and len(idx) == 40
