"""``--engine ray`` of ``detox eval`` and ``detox cmd-synthesize`` on a local 2-worker CPU cluster:
the same bytes as ``--engine local`` (generation files, PPL caches, results.json; records.jsonl and
train.jsonl), also after the driver is killed with SIGKILL mid-run and the run is resumed. Tiny
random-weight models (tests/tiny_models.py) and the real offline Jigsaw scorer."""

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
N_PROMPTS = 21


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("evalray")
    base = tiny_llama_dir(str(root / "base"), seed=0)
    toxic = tiny_llama_dir(str(root / "toxic"), seed=1)
    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"{WORDS[i % 90]} {WORDS[(7 * i) % 90]} {WORDS[(3 * i + 1) % 90]}\n"
                               for i in range(N_PROMPTS)))
    return base, toxic, str(prompts), root


@pytest.fixture(scope="module")
def cluster(tiny):
    """One local 2-worker Ray instance for the runs in this process (a run joins it and leaves it up)."""
    from detox.ray_engine import ray_session

    with ray_session(2) as ray:
        yield ray


@pytest.fixture(autouse=True)
def one_thread():
    """The actors run torch on OMP_NUM_THREADS (default 1) threads: the local runs use as many."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _eval_argv(tiny, out, *extra):
    base, toxic, prompts, _ = tiny
    # 21 prompts in shards of 4 (the last one short), two methods (one with the toxic model), two seeds
    return ["eval", "--methods", "none,cd", "--model", base, "--toxic-model", toxic, "--prompts", prompts,
            "--num-samples", "3", "--max-new-tokens", "5", "--batch-size", "4", "--seeds", "0,1",
            "--scorer", "jigsaw", "--out", str(out), *extra]


def _files(d):
    """Every file an evaluation writes that must not depend on the engine: name -> bytes."""
    out = {"results.json": (d / "results.json").read_bytes()}
    for sub in ("generations", "ppl"):
        for name in sorted(os.listdir(d / sub)):
            out[f"{sub}/{name}"] = (d / sub / name).read_bytes()
    return out


@pytest.fixture(scope="module")
def local_run(tiny):
    import torch

    torch.set_num_threads(1)
    out = tiny[3] / "local"
    assert main(_eval_argv(tiny, out)) == 0
    return _files(out)


def test_eval_ray_gives_the_same_bytes_as_local(tiny, local_run, cluster, tmp_path):
    out = tmp_path / "ray"
    assert main(_eval_argv(tiny, out, "--engine", "ray", "--ray-workers", "2")) == 0
    got = _files(out)
    assert sorted(got) == sorted(local_run)
    assert len([k for k in got if k.startswith("generations/")]) == 4  # 2 methods x 2 seeds
    for name in local_run:
        assert got[name] == local_run[name], name
    res = json.loads(got["results.json"])
    assert set(res["methods"]) == {"none", "cd"} and [r["seed"] for r in res["methods"]["cd"]["runs"]] == [0, 1]
    run = json.loads((out / "run.json").read_text())
    assert run["engine"] == "ray" and run["workers"] == 2 and run["shards_generated"] == 4 * 6
    # the seeds change the text: the runs are not copies of each other
    g = [json.loads(l)["continuations"] for l in got[sorted(k for k in got if "none-seed0" in k)[0]].splitlines()]
    h = [json.loads(l)["continuations"] for l in got[sorted(k for k in got if "none-seed1" in k)[0]].splitlines()]
    assert len(g) == len(h) == N_PROMPTS and g != h


def _lines(path):
    return open(path, "rb").read().count(b"\n") if os.path.exists(path) else 0


def _kill_when(cmd, ready, timeout=240, **env_vars):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python")]),
               **env_vars)
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if p.poll() is not None:
                return False
            if ready():
                os.kill(p.pid, signal.SIGKILL)  # the driver only: its Ray processes go with it
                p.wait()
                return True
            time.sleep(0.05)
        raise AssertionError("the job never reached the point to kill it at")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_eval_ray_killed_mid_run_resumes_to_the_same_bytes(tiny, local_run, cluster, tmp_path):
    out = tmp_path / "killed"
    gen_dir = out / "generations"

    def some_written():
        files = os.listdir(gen_dir) if gen_dir.exists() else []
        return sum(_lines(gen_dir / f) for f in files) >= 8

    argv = _eval_argv(tiny, out, "--engine", "ray", "--ray-workers", "2")
    # the killed driver joins the running cluster through RAY_ADDRESS (as on a real cluster); its actors
    # die with it, the cluster stays up for the resumed run
    address = cluster.get_runtime_context().gcs_address
    assert _kill_when([sys.executable, "-m", "detox.cli"] + argv, some_written, RAY_ADDRESS=address), \
        "finished before the kill"
    written = sum(_lines(gen_dir / f) for f in os.listdir(gen_dir))
    assert 8 <= written < 4 * N_PROMPTS and not (out / "results.json").exists()
    assert main(argv) == 0  # resumes: only the shards not written are generated
    run = json.loads((out / "run.json").read_text())
    assert 0 < run["shards_generated"] < 4 * 6
    got = _files(out)
    for name in local_run:
        assert got[name] == local_run[name], name
    for name in os.listdir(gen_dir):
        idx = [json.loads(l)["prompt_index"] for l in open(gen_dir / name)]
        assert idx == list(range(N_PROMPTS))  # nothing lost, nothing twice, in order


def _synth_argv(tiny, out, *extra):
    base, _, prompts, _ = tiny
    return ["cmd-synthesize", "--prompts", prompts, "--model", base, "--scorer", "jigsaw",
            "--num-continuations", "2", "--max-new-tokens", "4", "--fill-candidates", "2", "--batch-size", "2",
            "--chunk-size", "3", "--out", str(out), *extra]


def test_cmd_synthesize_ray_gives_the_same_records_as_local(tiny, cluster, tmp_path):
    assert main(_synth_argv(tiny, tmp_path / "local")) == 0
    assert main(_synth_argv(tiny, tmp_path / "ray", "--engine", "ray", "--ray-workers", "2")) == 0
    for name in ("records.jsonl", "train.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    idx = [json.loads(l)["index"] for l in open(tmp_path / "ray" / "records.jsonl")]
    assert idx == list(range(N_PROMPTS))
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("local", "ray"))
    assert b["engine"] == "ray" and {k: v for k, v in a.items() if k not in ("seconds_this_run", "engine")} == \
        {k: v for k, v in b.items() if k not in ("seconds_this_run", "engine")}
    # a rerun of the finished synthesis has nothing to send to Ray and reports the same
    assert main(_synth_argv(tiny, tmp_path / "ray", "--engine", "ray", "--ray-workers", "2")) == 0
    c = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert {k: v for k, v in c.items() if k != "seconds_this_run"} == {k: v for k, v in b.items()
                                                                       if k != "seconds_this_run"}


def test_ray_workers_without_engine_ray_is_one_line(tiny, tmp_path, capsys):
    assert main(_eval_argv(tiny, tmp_path / "x", "--ray-workers", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --ray-workers needs --engine ray"]


def test_engine_ray_without_ray_installed_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    p = tmp_path / "p.txt"
    p.write_text("the water is\n")
    for argv in (["eval", "--prompts", str(p), "--engine", "ray", "--out", str(tmp_path / "e")],
                 ["cmd-synthesize", "--prompts", str(p), "--engine", "ray", "--out", str(tmp_path / "c")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["error: --engine ray needs Ray Data: pip install 'detox-kernels[ray]' (or use --engine local)"]


def test_eval_ray_bfloat16_gives_the_same_bytes_and_keys_as_local(tiny, local_run, cluster, tmp_path):
    """--dtype goes to the actors, which load the models in it; the dtype is in the generation and
    PPL cache keys as in a local run, and results.json records the actors' device and dtype."""
    argv = ["--dtype", "bfloat16", "--device", "cpu"]
    assert main(_eval_argv(tiny, tmp_path / "local16", *argv)) == 0
    assert main(_eval_argv(tiny, tmp_path / "ray16", *argv, "--engine", "ray", "--ray-workers", "2")) == 0
    a, b = _files(tmp_path / "local16"), _files(tmp_path / "ray16")
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], name
    # other cache entries than float32's: the dtype is in both keys
    assert not set(a) & set(local_run) - {"results.json"}
    res = json.loads(b["results.json"])
    assert res["device"] == "cpu" and res["dtype"] == "bfloat16" and res["config"]["dtype"] == "bfloat16"
    assert all(r["settings"]["dtype"] == "bfloat16" for r in res["methods"].values())
    res32 = json.loads(local_run["results.json"])
    assert res32["dtype"] == res32["config"]["dtype"] == "float32" and res32["config"]["device"] == "cpu"


def test_eval_ray_device_cuda_on_a_cluster_without_gpus_is_one_line(tiny, cluster, tmp_path, capsys):
    assert main(_eval_argv(tiny, tmp_path / "cuda", "--device", "cuda", "--engine", "ray")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device cuda: the Ray cluster has no GPUs (use --device cpu or auto)"]
    assert not (tmp_path / "cuda" / "generations").exists()
