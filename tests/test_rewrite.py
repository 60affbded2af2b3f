"""detox rewrite (HSPD): extraction, ranking, seeded sampling, resume after kill -9, formats,
malformed lines, the Ray engine, and the fine-tuning step. Tiny random-weight Llama models
(tests/tiny_models.py) with the real embedded scorer (Jigsaw) and embedder (all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from detox.rewrite import RewriteConfig, Rewriter, dedupe, extract_answer, fusion_scores, load_template
from detox.rewrite.rank import best_index
from detox.rewrite.runner import run_rewrite
from detox.rewrite.sampling import RowSeededSampler, gumbel_noise, hash32
from detox.rewrite.templates import TEMPLATES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tiny_models import tiny_llama_dir  # noqa: E402

TEXTS = ["you are a stupid idiot", "i hate them all", "what a nice day", "shut up you dumb fool",
         "they are ugly and kill water", "the people like to write", "go find your number", "damn this long day",
         "she said you are kind", "he was a fool to call"]


# ------------------------------------------------------------------------------------------- pure
@pytest.mark.parametrize("gen,want", [
    ("this is fine.</answer> trailing", "this is fine."),
    ("no closing tag at all", "no closing tag at all"),
    ("junk <answer>the real one</answer>", "the real one"),
    ('  "quoted   answer"  ', "quoted answer"),
    ("</answer>", ""),
    ("first line\nsecond", "first line\nsecond".replace("\n", " ")),
])
def test_extract_hspd_tags(gen, want):
    t = TEMPLATES["hspd"]
    assert t.extract(gen) == want


def test_extract_fewshot_stops_at_newline_and_next_example():
    t = TEMPLATES["fewshot"]
    assert t.extract(" be kind to them.\n\nOffensive: more") == "be kind to them."
    assert t.extract(" be kind Offensive: x") == "be kind"
    assert extract_answer("a<|im_end|>b", stop=["<|im_end|>"], open_tag=None) == "a"


def test_templates_render_and_custom_file(tmp_path):
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    r = TEMPLATES["hspd"].render(tok, "you idiot")
    assert "you idiot" in r and r.endswith("<answer>") and "transcribe" in r
    f = TEMPLATES["fewshot"].render(tok, "you idiot")
    assert f.endswith("Offensive: you idiot\nPolite:")
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"chat": False, "text": "Rude: {text}\nNice:", "stop": ["\n"]}))
    assert load_template(str(p)).render(tok, "x") == "Rude: x\nNice:"
    p.write_text(json.dumps({"chat": False, "text": "no placeholder"}))
    with pytest.raises(ValueError, match="must contain"):
        load_template(str(p))
    with pytest.raises(ValueError, match="unknown template"):
        load_template("nope")


def test_dedupe_and_fusion_ranking():
    assert dedupe(["A b", "a  B", "", "c", "  ", "C", "d"]) == [0, 3, 6]
    tox = np.array([0.9, 0.1, 0.1, 0.0])
    cos = np.array([1.0, 0.2, 0.8, 0.1])
    np.testing.assert_allclose(fusion_scores(tox, cos, 0.5), [0.55, 0.55, 0.85, 0.55])
    assert best_index(tox, cos, 0.5) == 2
    assert best_index(tox, cos, 1.0) == 3           # toxicity only
    assert best_index(tox, cos, 0.0) == 0           # similarity only
    assert best_index(np.array([0.2, 0.2]), np.array([0.5, 0.5])) == 0   # ties: earliest
    with pytest.raises(ValueError):
        fusion_scores(tox, cos, 1.5)


def test_row_seeded_sampling_is_a_softmax_sample_and_row_independent():
    # exact distribution check: Gumbel-max over hashed noise samples softmax(logits / T)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -math_inf()]])
    n = 4000
    seeds = torch.tensor([hash32(7, i) for i in range(n)])
    s = RowSeededSampler(seeds, torch.full((n,), 0.8), prompt_length=3)
    picks = s(torch.zeros(n, 4, dtype=torch.long), logits.repeat(n, 1)).argmax(-1)
    freq = torch.bincount(picks, minlength=5).double() / n
    want = torch.softmax(logits / 0.8, -1)[0].double()
    assert freq[4] == 0
    assert torch.allclose(freq, want, atol=0.03), (freq, want)
    # a row's noise depends on its seed and step only, not on the other rows
    g_all = gumbel_noise(seeds[:5], 2, 50)
    g_one = gumbel_noise(seeds[3:4], 2, 50)
    assert torch.equal(g_all[3:4], g_one)
    assert not torch.equal(gumbel_noise(seeds[3:4], 3, 50), g_one)
    # top-p removes the tail
    s2 = RowSeededSampler(seeds, torch.ones(n), prompt_length=3, top_p=0.5)
    picks2 = s2(torch.zeros(n, 4, dtype=torch.long), logits.repeat(n, 1)).argmax(-1)
    assert set(picks2.tolist()) == {0}


def math_inf():
    return float("inf")


# --------------------------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    base = tiny_llama_dir(str(d / "base"), seed=1)
    toxic = tiny_llama_dir(str(d / "toxic"), seed=2)
    return base, toxic


@pytest.fixture(scope="module")
def shared_parts():
    from detox.rewrite.rank import TextEmbedder
    from detox.scorers import load_scorer

    return load_scorer("jigsaw"), TextEmbedder(None)


def _cfg(tiny, **kw):
    base, toxic = tiny
    d = dict(mode="socd", model=base, toxic_model=toxic, template="fewshot", temperatures=[0.7, 1.3],
             samples_per_temperature=2, max_new_tokens=6, batch_size=3, scorer="jigsaw", seed=0)
    d.update(kw)
    return RewriteConfig(**d)


def _rewriter(tiny, shared_parts, **kw):
    s, e = shared_parts
    return Rewriter(_cfg(tiny, **kw), device="cpu", scorer=s, embedder=e)


@pytest.mark.parametrize("mode", ["prompt", "cd", "socd"])
def test_rewriter_end_to_end_and_batch_independent(tiny, shared_parts, mode):
    rw = _rewriter(tiny, shared_parts, mode=mode)
    recs = [(i, i + 1, t) for i, t in enumerate(TEXTS[:4])]
    res = rw.rewrite(recs)
    assert [r["index"] for r in res] == [0, 1, 2, 3]
    for r in res:
        assert r["status"] in ("ok", "no_candidate")
        assert r["raw_generations"] == 4
        assert 0 <= r["tox_before"] <= 1 and 0 <= r["tox_after"] <= 1
        if r["status"] == "ok":
            c = r["candidates"]
            assert 1 <= len(c) <= 4 and len({x["text"].lower() for x in c}) == len(c)
            best = max(c, key=lambda x: x["score"])
            assert r["rewrite"] == best["text"] and r["temperature"] in (0.7, 1.3)
            assert abs(r["score"] - (0.5 * (1 - r["tox_after"]) + 0.5 * r["similarity"])) < 1e-9
    # the same text alone, or at another position in another batch, gets the same candidates
    gen_batch = rw.generate([t for _, _, t in recs], [0, 1, 2, 3])
    gen_alone = rw.generate([TEXTS[2]], [2])
    gen_other = rw.generate([TEXTS[7], TEXTS[2]], [9, 2])
    assert gen_alone[0] == gen_batch[2] == gen_other[1]
    # another key (or seed) gives other candidates
    assert rw.generate([TEXTS[2]], [3])[0] != gen_alone[0]


def test_prefill_once_equals_plain_generate(tiny, shared_parts):
    for mode in ("socd", "prompt"):
        rw = _rewriter(tiny, shared_parts, mode=mode)
        texts = [TEXTS[0], TEXTS[4], TEXTS[8]]
        fast = rw.generate(texts, [0, 1, 2])
        rw.shared_prefill = False   # every candidate row prefills its own copy of the prompt
        slow = rw.generate(texts, [0, 1, 2])
        assert fast == slow


def test_too_long_prompt_is_skipped_and_reported(tiny, shared_parts):
    rw = _rewriter(tiny, shared_parts)
    n = len(rw.tok(rw.template.render(rw.tok, "you idiot"))["input_ids"])
    rw.cfg.max_input_tokens = n + 10
    res = rw.rewrite([(0, 1, "you idiot"), (1, 2, " ".join(["word"] * 80))])
    assert res[0]["status"] in ("ok", "no_candidate")
    assert res[1]["status"] == "skipped" and "max_input_tokens" in res[1]["reason"]


# ---------------------------------------------------------------------------- runner / formats
def _write_jsonl(path, texts, bad_lines=True):
    lines = []
    for i, t in enumerate(texts):
        lines.append(json.dumps({"id": i, "meta": {"src": "t"}, "text": t}))
        if bad_lines and i == 2:
            lines += ['{"text": "unterminated', '{"id": 99}', '{"text": "   "}', '[1, 2]', '{"text": 5}']
    path.write_text("\n".join(lines) + "\n")


def test_jsonl_round_trip_provenance_and_malformed_lines(tiny, shared_parts, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    _write_jsonl(inp, TEXTS[:5])
    out = tmp_path / "out.jsonl"
    rw = _rewriter(tiny, shared_parts)
    s = run_rewrite(str(inp), str(out), rw.cfg, progress=False, _rewriter=rw)
    assert s["texts"] == 5 and s["malformed"] == 5
    assert [m["line"] for m in s["malformed_lines"]] == [4, 5, 6, 7, 8]
    reasons = " ".join(m["reason"] for m in s["malformed_lines"])
    for why in ("invalid JSON", "no text field", "empty text", "not a JSON object", "not a string"):
        assert why in reasons
    assert "5 malformed line(s) skipped" in capsys.readouterr().err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    prov = [json.loads(x) for x in open(s["provenance"])]
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4]                  # other fields kept, order kept
    assert all(r["meta"] == {"src": "t"} for r in rows)
    assert [p["original"] for p in prov] == TEXTS[:5]
    assert [r["text"] for r in rows] == [p["rewrite"] for p in prov]
    assert [p["line"] for p in prov] == [1, 2, 3, 9, 10]
    for p in prov:
        assert {"tox_before", "tox_after", "similarity", "temperature", "candidates"} <= set(p)
    rep = open(os.path.join(str(out) + ".hspd", "report.md")).read()
    assert "malformed" in rep and os.path.exists(os.path.join(str(out) + ".hspd", "rewrite.png"))
    # a second run with other settings refuses to mix them into the same work directory
    with pytest.raises(SystemExit, match="other settings"):
        run_rewrite(str(inp), str(out), _cfg(tiny, seed=1), progress=False, _rewriter=rw)
    # ... and so does another --max-chars (it decides which lines count, hence the text numbering)
    with pytest.raises(SystemExit, match="other settings or input"):
        run_rewrite(str(inp), str(out), rw.cfg, progress=False, _rewriter=rw, max_chars=10)
    # ... and an edited input of the same size
    data = inp.read_bytes()
    inp.write_bytes(data.replace(b"src", b"SRC", 1))
    with pytest.raises(SystemExit, match="other settings or input"):
        run_rewrite(str(inp), str(out), rw.cfg, progress=False, _rewriter=rw)
    inp.write_bytes(data)
    # ... and so does a changed input file under the same name
    with open(inp, "a") as f:
        f.write(json.dumps({"text": "one more"}) + "\n")
    with pytest.raises(SystemExit, match="other settings or input"):
        run_rewrite(str(inp), str(out), rw.cfg, progress=False, _rewriter=rw)


def test_text_and_parquet_round_trips(tiny, shared_parts, tmp_path):
    rw = _rewriter(tiny, shared_parts, mode="prompt")
    txt = tmp_path / "in.txt"
    txt.write_text("\n".join(TEXTS[:4]) + "\n\n")
    s = run_rewrite(str(txt), str(tmp_path / "out.txt"), rw.cfg, progress=False, _rewriter=rw)
    prov = [json.loads(x) for x in open(s["provenance"])]
    assert (tmp_path / "out.txt").read_text().splitlines() == [p["rewrite"] for p in prov]
    assert len(prov) == 4

    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"doc": list(range(6)), "text": TEXTS[:5] + [""], "label": [1.0] * 6})
    pq.write_table(table, tmp_path / "in.parquet")
    s = run_rewrite(str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), rw.cfg, progress=False, _rewriter=rw)
    got = pq.read_table(tmp_path / "out.parquet")
    assert got.schema == table.schema
    assert got.column("doc").to_pylist() == [0, 1, 2, 3, 4]           # the empty text (row 5) reported, skipped
    assert s["malformed_lines"] == [{"line": 5, "reason": "empty text"}]
    prov = [json.loads(x) for x in open(s["provenance"])]
    assert got.column("text").to_pylist() == [p["rewrite"] for p in prov]


def _cli(tiny, inp, out, *extra):
    base, toxic = tiny
    return [sys.executable, "-m", "detox.cli", "rewrite", str(inp), "--out", str(out), "--model", base,
            "--toxic-model", toxic, "--temperatures", "0.7,1.3", "--samples-per-temperature", "2",
            "--max-new-tokens", "6", "--batch-size", "2", "--scorer", "jigsaw", *extra]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "python"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_resume_after_kill_loses_and_duplicates_nothing(tiny, tmp_path):
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(40)]
    inp = tmp_path / "in.jsonl"
    _write_jsonl(inp, texts, bad_lines=False)
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    subprocess.run(_cli(tiny, inp, ref), env=_env(), check=True, capture_output=True)
    parts = tmp_path / "out.jsonl.hspd" / "parts"
    p = subprocess.Popen(_cli(tiny, inp, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 300:
        files = list(parts.glob("part-*.jsonl")) if parts.exists() else []
        if files and sum(f.read_text().count("\n") for f in files) >= 4:
            break
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done_before = sum(f.read_text().count("\n") for f in parts.glob("part-*.jsonl"))
    assert 4 <= done_before < 40, "the run was not interrupted mid-way"
    assert not out.exists()
    # simulate the kill landing in the middle of a write: a torn last line
    with open(sorted(parts.glob("part-*.jsonl"))[-1], "a") as f:
        f.write('{"index": 39, "original": "torn')
    r = subprocess.run(_cli(tiny, inp, out), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torn tail" in r.stderr
    prov = [json.loads(x) for x in open(tmp_path / "out.jsonl.hspd" / "provenance.jsonl")]
    assert [p["index"] for p in prov] == list(range(40))
    assert out.read_text() == ref.read_text()
    summary = json.load(open(tmp_path / "out.jsonl.hspd" / "summary.json"))
    assert summary["texts_this_run"] == 40 - done_before


def _same_up_to_rounding(x, y, rel=1e-5):
    import math

    if isinstance(x, float) or isinstance(y, float):
        return isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isclose(x, y, rel_tol=rel, abs_tol=1e-9)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same_up_to_rounding(x[k], y[k], rel) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(_same_up_to_rounding(u, v, rel) for u, v in zip(x, y))
    return x == y


def test_part_store_out_of_order_appends_and_torn_tail(tmp_path, capsys):
    """Ray delivers shards in any order: each append is persisted at once, an out-of-order one
    starts a new part (every part stays sorted), and the merge still yields each index once, in
    order. A torn last line is cut off on reopening, read a line at a time."""
    from detox.rewrite.runner import PartStore

    st = PartStore(str(tmp_path))
    assert st.append([{"index": 6}, {"index": 5}]) == 2
    assert st.append([{"index": 9}]) == 1          # in order: same part
    assert st.append([{"index": 2}, {"index": 1}, {"index": 5}]) == 2   # 5 is done already
    st.close()
    parts = st.part_files()
    assert len(parts) == 2
    for p in parts:
        idx = [json.loads(line)["index"] for line in open(p)]
        assert idx == sorted(idx)
    with open(parts[-1], "a") as f:
        f.write('{"index": 3, "orig')
    st2 = PartStore(str(tmp_path))
    assert "torn tail" in capsys.readouterr().err
    assert st2.done.count == 5 and all(i in st2.done for i in (1, 2, 5, 6, 9)) and 3 not in st2.done
    assert [r["index"] for r in st2.merged()] == [1, 2, 5, 6, 9]
    assert open(parts[-1]).read().endswith("\n")
    assert st2.append([{"index": 0}]) == 1 and len(st2.part_files()) == 3


def test_ray_engine_matches_local(tiny, shared_parts, tmp_path):
    pytest.importorskip("ray")
    inp = tmp_path / "in.jsonl"
    _write_jsonl(inp, TEXTS[:8])
    cfg = _cfg(tiny, batch_size=2)
    rw = Rewriter(cfg, device="cpu", scorer=shared_parts[0], embedder=shared_parts[1])
    local = run_rewrite(str(inp), str(tmp_path / "local.jsonl"), cfg, progress=False, _rewriter=rw)
    os.environ["PYTHONPATH"] = _env()["PYTHONPATH"]
    dist = run_rewrite(str(inp), str(tmp_path / "ray.jsonl"), cfg, engine="ray", workers=2, window=3, progress=False)
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
    a = [json.loads(x) for x in open(local["provenance"])]
    b = [json.loads(x) for x in open(dist["provenance"])]
    # same texts, candidates and choices; scores equal up to float rounding (the Ray actors run the
    # scorer and embedder with another thread count than this process, which changes the last bits)
    assert len(a) == 8 and _same_up_to_rounding(a, b)
    assert dist["malformed"] == local["malformed"] == 5
    assert set(dist["timing_seconds"]) == {"generate", "score", "embed", "other"}


def test_finetune_on_rewritten_corpus(tiny, tmp_path):
    base, _ = tiny
    data = tmp_path / "rw.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp_path / "ft"
    r = subprocess.run([sys.executable, "-m", "detox.cli", "finetune", "--data", str(data), "--model", base, "--out",
                        str(out), "--steps", "3", "--batch-size", "2", "--lr", "1e-3", "--lora"],
                       env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.load(open(out / "training.json"))
    assert len(info["losses"]) == 3 and info["config"]["lora"]
    from detox.models import load_causal_lm

    m, _ = load_causal_lm(str(out))
    m0, _ = load_causal_lm(base)
    assert not torch.equal(m.model.layers[0].self_attn.q_proj.weight, m0.model.layers[0].self_attn.q_proj.weight)
    # and the evaluation of the fine-tuned model runs on it
    prompts = tmp_path / "p.txt"
    prompts.write_text("you are a\nthey are\n")
    r = subprocess.run([sys.executable, "-m", "detox.cli", "eval", "--model", str(out), "--methods", "none",
                        "--prompts", str(prompts), "--num-samples", "2", "--max-new-tokens", "3", "--scorer", "jigsaw",
                        "--out", str(tmp_path / "eval")], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(tmp_path / "eval" / "results.json"))
    assert "none" in json.dumps(res)
    # a Parquet corpus (what `detox rewrite --out x.parquet` writes) is read as a table, not as text
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), tmp_path / "rw.parquet")
    r = subprocess.run([sys.executable, "-m", "detox.cli", "finetune", "--data", str(tmp_path / "rw.parquet"),
                        "--model", base, "--out", str(tmp_path / "ft-pq"), "--steps", "1", "--batch-size", "2",
                        "--lora"], env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"({len(TEXTS)} texts)" in r.stdout
    r = subprocess.run([sys.executable, "-m", "detox.cli", "finetune", "--data", str(tmp_path / "missing.jsonl"),
                        "--out", str(out)], env=_env(), capture_output=True, text=True)
    assert r.returncode == 2 and "not found" in r.stderr


@pytest.mark.slow
def test_real_embedded_model_rewrites(tmp_path):
    """The embedded SmolLM2 with the few-shot template: a toxic text gets candidates, a rewrite, scores."""
    cfg = RewriteConfig(mode="prompt", temperatures=[0.7], samples_per_temperature=2, max_new_tokens=12, batch_size=2)
    rw = Rewriter(cfg, device="cpu")
    res = rw.rewrite([(0, 1, "shut up you stupid idiot, nobody likes you"), (1, 2, "women are dumb")])
    for r in res:
        assert r["status"] == "ok" and r["rewrite"] and "\n" not in r["rewrite"]
        assert 0 < r["similarity"] <= 1
