"""--device / --dtype: resolution, one-line errors, every command's options, bfloat16 end to end on the
CPU, and loaded models on different devices."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from detox import devices
from detox.cli import build_parser, main
from detox.devices import DeviceError, check_same_device, resolve_device, resolve_dtype

from tiny_models import tiny_llama_dir, tiny_tokenizer

HAS_CUDA = torch.cuda.is_available()


def _run(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_error_line(rc, err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def _subcommands():
    sub = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)][0]
    return sub.choices


# -- resolution ---------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_CUDA, reason="the CPU-only resolution")
def test_auto_is_cpu_and_float32_without_cuda():
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert resolve_dtype("auto", "cpu") is torch.float32 and resolve_dtype(None, "auto") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16 and resolve_dtype("fp16", "cpu") is torch.float16
    assert resolve_dtype(torch.float32, "cpu") is torch.float32
    assert devices.resolve_training_dtype("auto", torch.device("cpu")) is torch.float32


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_auto_is_cuda_and_bfloat16_with_cuda():
    assert resolve_device("auto").type == "cuda"
    assert resolve_dtype("auto", "cuda") in (torch.bfloat16, torch.float16)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_cuda_device_is_a_device_error(spec):
    with pytest.raises(DeviceError) as e:
        resolve_device(spec)
    want = f"--device {spec}: no CUDA device is available (torch {torch.__version__} built without CUDA)"
    assert str(e.value) == want or "no CUDA device is visible" in str(e.value)


def test_cuda_index_out_of_range(monkeypatch):
    # the range check itself (the CUDA runtime is stood in for: this machine may have no GPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"--device cuda:2: there are 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "gpu0"])
def test_unknown_devices_and_dtypes(bad):
    with pytest.raises(DeviceError):
        resolve_device(bad)
    with pytest.raises(DeviceError, match="unsupported dtype"):
        resolve_dtype("float64", "cpu")
    with pytest.raises(DeviceError, match="unsupported dtype"):
        resolve_dtype("int8", "cpu")
    with pytest.raises(DeviceError, match="float16"):
        devices.resolve_training_dtype("float16", torch.device("cpu"))


# -- every command ------------------------------------------------------------------------------------
def test_every_command_is_covered():
    assert set(_subcommands()) >= {"generate", "eval", "demo", "fit-sasa", "train-toxic", "cmd-synthesize",
                                   "cmd-train", "rewrite", "finetune"}


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_lists_device_and_dtype(command):
    sp = _subcommands()[command]
    opts = {s: a for a in sp._actions for s in a.option_strings}
    assert "--device" in opts and "--dtype" in opts, command
    assert opts["--device"].default == "auto" and opts["--dtype"].default == "auto"
    h = sp.format_help()
    assert "--device" in h and "--dtype" in h and "bfloat16" in h and "cuda:N" in h


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "texts.jsonl").write_text('{"text": "you are a fool"}\n{"text": "the water is hot"}\n')
    (d / "labelled.jsonl").write_text('{"text": "you are a fool", "label": 1}\n{"text": "a nice day", "label": 0}\n')
    (d / "cmd-data").mkdir()
    return d


def _argv(command, d, out):
    return {
        "generate": ["generate", "--prompt", "the water is"],
        "eval": ["eval", "--out", out],
        "demo": ["demo", "--out", out],
        "fit-sasa": ["fit-sasa", "--data", d / "labelled.jsonl", "--out", out + ".safetensors"],
        "train-toxic": ["train-toxic", "--out", out],
        "cmd-synthesize": ["cmd-synthesize", "--prompts", "embedded", "--out", out],
        "cmd-train": ["cmd-train", "--data", d / "cmd-data", "--out", out],
        "rewrite": ["rewrite", d / "texts.jsonl", "--out", out + ".jsonl"],
        "finetune": ["finetune", "--data", d / "texts.jsonl", "--out", out],
        "unidetox": ["unidetox", "--out", out],
    }[command]


@pytest.fixture
def no_model_loads(monkeypatch):
    import detox.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before --device was checked")

    monkeypatch.setattr(detox.models, "load_causal_lm", refuse)


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_device_cuda_without_cuda_is_one_line_exit_2(command, inputs, tmp_path, capsys, no_model_loads):
    rc, _, err = _run(_argv(command, inputs, str(tmp_path / "out")) + ["--device", "cuda"], capsys)
    line = _one_error_line(rc, err)
    assert line.startswith("error: --device cuda: no CUDA device is available (torch "), line
    assert "built without CUDA" in line or "no CUDA device is visible" in line


@pytest.mark.parametrize("argv, fragment", [
    (["--device", "tpu"], "argument --device: expected one of auto, cpu, cuda, cuda:N, got 'tpu'"),
    (["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
])
def test_bad_device_or_dtype_values(argv, fragment, inputs, tmp_path, capsys):
    rc, _, err = _run(["generate", "--prompt", "x"] + argv, capsys)
    assert fragment in _one_error_line(rc, err)


@pytest.mark.parametrize("command", ["train-toxic", "finetune", "cmd-train", "unidetox"])
def test_training_refuses_float16(command, inputs, tmp_path, capsys, no_model_loads):
    rc, _, err = _run(_argv(command, inputs, str(tmp_path / "out")) + ["--device", "cpu", "--dtype", "float16"], capsys)
    assert "training in float16 needs loss scaling" in _one_error_line(rc, err)


# -- loaded models on different devices ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_llama_dir(str(root / "base"), seed=0)
    toxic = tiny_llama_dir(str(root / "toxic"), seed=1)
    prompts = root / "prompts.txt"
    prompts.write_text("the water is\nyou are a\nthey said that\nwe can go\nwhat time is\n")
    return base, toxic, str(prompts)


def test_loaded_models_on_different_devices_are_refused(tiny):
    from detox.generation.driver import Generator
    from detox.metrics import sample_nll
    from detox.sasa import Labelled, fit_subspace

    base_dir, toxic_dir, _ = tiny
    tok = tiny_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    toxic_meta = AutoModelForCausalLM.from_pretrained(toxic_dir).to("meta")
    with pytest.raises(DeviceError, match=r"device cpu was asked for, but the toxic model is on meta"):
        Generator("socd", model=(base, tok), toxic_model=(toxic_meta, tok))
    with pytest.raises(DeviceError, match=r"the base model is on cpu"):
        Generator("none", model=(base, tok), device="meta")
    with pytest.raises(DeviceError, match=r"toxic on meta"):
        check_same_device([("base", base), ("toxic", toxic_meta)])
    with pytest.raises(DeviceError, match="is float32 but dtype bfloat16 was asked for"):
        Generator("none", model=(base, tok), dtype="bfloat16")
    with pytest.raises(DeviceError, match="the perplexity model is on cpu"):
        sample_nll(base, tok, ["the water"], ["is hot"], device="meta")
    with pytest.raises(DeviceError, match="the SASA model is on cpu"):
        fit_subspace(base, tok, Labelled(texts=["a b", "c d"], labels=[0, 1]), device="meta", progress=False)
    # a loaded pair without device / dtype is used where it is, as it is
    g = Generator("socd", model=(base, tok), toxic_model=(AutoModelForCausalLM.from_pretrained(toxic_dir), tok))
    assert g.device == torch.device("cpu") and g.dtype is torch.float32 and "dtype" not in g.settings()


# -- bfloat16 end to end on the CPU -------------------------------------------------------------------
def test_eval_in_bfloat16_on_tiny_models(tiny, tmp_path, capsys):
    base, toxic, prompts = tiny
    out = tmp_path / "eval"
    common = ["eval", "--methods", "none,socd,cd,dexperts,unidetox,reversal", "--model", base, "--toxic-model", toxic,
              "--prompts", prompts, "--num-samples", "2", "--max-new-tokens", "4", "--scorer", "jigsaw",
              "--batch-size", "3", "--out", out]
    rc, _, err = _run(common + ["--dtype", "bfloat16"], capsys)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["device"] == "cpu" and res["dtype"] == "bfloat16" and res["config"]["dtype"] == "bfloat16"
    assert "models in bfloat16" in (out / "report.md").read_text()
    for m, r in res["methods"].items():
        assert r["settings"]["dtype"] == "bfloat16", m
        s = r["summary"]
        assert 0 <= s["emt"]["mean"] <= 1 and 1 < s["ppl"]["mean"] < float("inf"), m
    bf16_files = set(os.listdir(out / "generations"))
    # float32 (auto on the CPU) is another cache entry, keyed as before (no dtype in its settings)
    rc, _, err = _run(common, capsys)
    assert rc == 0, err
    res32 = json.loads((out / "results.json").read_text())
    assert res32["dtype"] == "float32" and all("dtype" not in r["settings"] for r in res32["methods"].values())
    files = set(os.listdir(out / "generations"))
    assert len(files) == 2 * len(bf16_files) and bf16_files < files
    assert len(os.listdir(out / "ppl")) == 2 * len(bf16_files)
    # the bfloat16 perplexities are the float32 ones up to bfloat16 rounding
    for m in res["methods"]:
        a, b = res["methods"][m]["summary"]["ppl"]["mean"], res32["methods"][m]["summary"]["ppl"]["mean"]
        if m == "none":
            assert abs(a - b) / b < 0.2, (m, a, b)


def test_sample_nll_in_bfloat16_is_float32_up_to_rounding(tiny):
    from detox.metrics import sample_nll

    tok = tiny_tokenizer()
    m32 = AutoModelForCausalLM.from_pretrained(tiny[0]).eval()
    m16 = AutoModelForCausalLM.from_pretrained(tiny[0], dtype=torch.bfloat16).eval()
    ps, cs = ["the water is", "you are a", "they"], ["hot and long", "fool", ""]
    a, b = sample_nll(m32, tok, ps, cs, batch_size=2), sample_nll(m16, tok, ps, cs, batch_size=2, device="cpu")
    assert [n for _, n in a] == [n for _, n in b] == [3, 1, 0]
    for (x, _), (y, _) in zip(a, b):
        assert abs(x - y) <= 0.02 * max(1.0, abs(x)), (x, y)
    assert a != b  # it did run in bfloat16


def test_fit_sasa_in_bfloat16_records_it(tiny, tmp_path, capsys):
    data = tmp_path / "labelled.jsonl"
    rows = [("you stupid idiot", 1), ("i hate you", 1), ("shut up fool", 1), ("kill the dumb", 1),
            ("the water is nice", 0), ("a good day", 0), ("he was kind", 0), ("she is happy", 0)]
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    subs = {}
    for dt in ("float32", "bfloat16"):
        out, rep = tmp_path / f"{dt}.safetensors", tmp_path / f"{dt}.json"
        rc, _, err = _run(["fit-sasa", "--model", tiny[0], "--data", data, "--out", out, "--report", rep,
                           "--holdout", "0", "--shrinkage", "0.5", "--device", "cpu", "--dtype", dt], capsys)
        assert rc == 0, err
        r = json.loads(rep.read_text())
        assert r["device"] == "cpu" and r["dtype"] == dt
        from detox.sasa import Subspace

        subs[dt] = Subspace.load(str(out))
    cos = float(subs["float32"].direction @ subs["bfloat16"].direction)
    assert cos > 0.9, cos


def test_training_under_bfloat16_autocast_and_resume_check(tiny, tmp_path):
    from detox.resumable import SettingsMismatch
    from detox.training import TrainConfig, train_causal_lm

    texts = ["you are a stupid fool", "the water is hot", "they hate what we do", "shut up you idiot"]
    cfg = TrainConfig(steps=3, batch_size=2, max_length=8, lr=5e-3, save_every=1)
    m, tok = AutoModelForCausalLM.from_pretrained(tiny[0]), tiny_tokenizer()
    assert train_causal_lm(m, tok, texts, str(tmp_path / "m"), cfg, progress=False, stop_after=1,
                           amp_dtype=torch.bfloat16) is None
    assert next(m.parameters()).dtype is torch.float32  # mixed precision: the weights stay float32
    run = json.loads((tmp_path / "m" / "checkpoints" / "run.json").read_text())
    assert run["amp_dtype"] == "bfloat16"
    m, tok = AutoModelForCausalLM.from_pretrained(tiny[0]), tiny_tokenizer()
    with pytest.raises(SettingsMismatch, match="amp_dtype"):
        train_causal_lm(m, tok, texts, str(tmp_path / "m"), cfg, progress=False)
    train_causal_lm(m, tok, texts, str(tmp_path / "m"), cfg, progress=False, amp_dtype=torch.bfloat16)
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    assert info["amp_dtype"] == "bfloat16" and len(info["losses"]) == 3
    assert all(0 < x < float("inf") for x in info["losses"])


def test_generate_with_the_embedded_model_in_bfloat16(tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    rc, _, err = _run(["generate", "--method", "none", "--prompt", "The weather today is", "--max-new-tokens", "6",
                       "--greedy", "--num-samples", "1", "--dtype", "bfloat16", "--device", "cpu", "--out", out],
                      capsys)
    assert rc == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["settings"]["dtype"] == "bfloat16"
    assert rows[0]["continuation"].strip()


# -- on a GPU (skipped without one) --------------------------------------------------------------------
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_eval_on_cuda_matches_the_cpu_up_to_rounding(tiny, tmp_path, capsys):
    from detox.metrics import sample_nll
    from detox.scorers import JigsawScorer

    base, toxic, prompts = tiny
    res = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / dev
        rc, _, err = _run(["eval", "--methods", "none,socd", "--model", base, "--toxic-model", toxic, "--prompts",
                           prompts, "--num-samples", "2", "--max-new-tokens", "4", "--scorer", "jigsaw",
                           "--device", dev, "--dtype", "float32", "--out", out], capsys)
        assert rc == 0, err
        res[dev] = json.loads((out / "results.json").read_text())
    assert res["cuda"]["device"].startswith("cuda") and res["cuda"]["dtype"] == "float32"
    assert res["cuda"]["device_name"] == torch.cuda.get_device_name()
    tok = tiny_tokenizer()
    m = AutoModelForCausalLM.from_pretrained(base).eval()
    ps, cs = ["the water is", "you are a", "they"], ["hot and long", "fool", ""]
    a = sample_nll(m, tok, ps, cs)
    b = sample_nll(m.to("cuda"), tok, ps, cs, device="cuda")
    for (x, n), (y, k) in zip(a, b):
        assert n == k and abs(x - y) < 1e-3 * max(1.0, abs(x))
    texts = ["you are a stupid idiot", "have a nice day", "the water is hot"]
    s_cpu, s_gpu = JigsawScorer(device="cpu").score(texts), JigsawScorer(device="cuda").score(texts)
    assert abs(s_cpu - s_gpu).max() < 1e-4


def test_scorers_take_the_device():
    from detox.scorers import Scorer, load_scorer, register_scorer

    s = load_scorer("jigsaw", device="auto")
    assert s.device == resolve_device("auto") and next(s.model.parameters()).device == s.device

    class Fixed(Scorer):
        name = "fixed"

        def _score_labels_batch(self, texts):
            import numpy as np

            return np.full((len(texts), 1), 0.25)

    import detox.scorers as scorers_pkg

    register_scorer("fixed-test", lambda: Fixed())  # a factory without a device: it is left out
    try:
        assert list(load_scorer("fixed-test", device="cpu").score(["a", "b"])) == [0.25, 0.25]
    finally:
        scorers_pkg._FACTORIES.pop("fixed-test", None)  # the registry is global: leave it as it was
    if not (HAS_CUDA and torch.cuda.device_count() > 7):
        with pytest.raises(DeviceError, match="scorer device cuda:7"):
            load_scorer("jigsaw", device="cuda:7")


def test_cmd_train_under_bfloat16_mixed_precision(tmp_path):
    from detox.cmd import chain as C
    from detox.cmd.trainer import CMDTrainConfig, train_cmd
    from test_cmd import PROMPTS, _tiny_bpe_model

    base = _tiny_bpe_model(str(tmp_path / "base"))
    rows = [{"index": i, "prompt": p, "masked": None, "filled": None, "positive": "and the day",
             "negatives": ["fucking idiot shut up"], "text": C.training_text(p, "and the day", None, None)}
            for i, p in enumerate(PROMPTS)]
    cfg = CMDTrainConfig(steps=2, batch_size=3, lr=1e-3, lora=False, anchor_tokens=3, save_steps=2)
    out = train_cmd(rows, base, str(tmp_path / "t"), cfg, progress=False, device="cpu", dtype=torch.bfloat16)
    info = json.loads(open(os.path.join(out, "cmd_training.json")).read())
    losses = [h["loss"] for h in info["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(0 < x < float("inf") for x in losses)
    m = AutoModelForCausalLM.from_pretrained(out)
    assert next(m.parameters()).dtype is torch.float32  # mixed precision: float32 weights
    with pytest.raises(DeviceError, match="float16"):
        train_cmd(rows, base, str(tmp_path / "u"), cfg, progress=False, device="cpu", dtype=torch.float16)


@pytest.mark.parametrize("method", ["none", "socd", "reversal"])
def test_float16_generates_on_the_cpu(tiny, method):
    from detox.generation.driver import Generator

    g = Generator(method, model=tiny[0], toxic_model=tiny[1], device="cpu", dtype="float16")
    assert g.dtype is torch.float16 and next(g.model.parameters()).dtype is torch.float16
    if g.toxic is not None:
        assert next(g.toxic.parameters()).dtype is torch.float16
    texts = g.generate_batch(["the water is", "you are a"], num_samples=2, max_new_tokens=3, seed=0)
    assert len(texts) == 2 and all(len(t) == 2 and all(x.strip() for x in t) for t in texts)
    assert g.settings()["dtype"] == "float16"
