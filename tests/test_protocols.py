"""Evaluation protocols by name (detox.protocols, `detox eval --protocol`): each sets its paper's
settings, options the user gives win, and the report lists settings and deviations; top_k and
min_new_tokens reach the generator and the generation-cache key; the statistics reach the report."""

from __future__ import annotations

import json

import pytest

from detox import protocols as P
from detox.cli import build_parser, main as cli_main
from detox.harness import EvalConfig, generate_cached, generation_key
from detox.generation.driver import Generator

from tiny_models import tiny_llama_dir


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_llama_dir(str(root / "base"), seed=0)
    prompts = root / "prompts.jsonl"
    with open(prompts, "w") as f:
        for i, p in enumerate(["the water is", "you are a", "they said that", "we can go", "what time is"]):
            f.write(json.dumps({"prompt": {"text": p, "toxicity": 0.3 + i / 10}}) + "\n")
    return base, str(prompts)


def _given(argv):
    args = build_parser().parse_args(argv)
    return args, P.given_options(args)


def test_given_options_are_told_from_defaults():
    args, given = _given(["eval"])
    assert given == set()
    assert type(args.top_p) is float and args.top_p == 0.9 and type(args.seeds) is list  # plain values again
    _, given = _given(["eval", "--top-p", "0.9", "--num-s=3", "--inclusive", "--seeds", "0"])
    assert given == {"top_p", "num_samples", "inclusive", "seeds"}  # equal to the default still counts as given


@pytest.mark.parametrize("name", P.names())
def test_a_protocol_sets_every_setting_it_names(name):
    cfg = P.apply(EvalConfig(), name)
    p = P.get(name)
    for fld, value in p.settings.items():
        if fld == "dist_variant" and value == "words" and not P.words_variant_available():
            assert cfg.dist_variant == "prompt"
            assert any("per-word variant is not available" in d for d in cfg.protocol["deviations"])
            continue
        assert getattr(cfg, fld) == value, fld
    rec = cfg.protocol
    assert rec["name"] == name and set(rec["settings"]) == set(p.settings)
    dev = " ".join(rec["deviations"])
    # the defaults here are not the paper's: prompts, scorer, PPL model and base model are each a deviation
    assert "prompts:" in dev and "toxicity scorer" in dev and "PPL model" in dev and "base model" in dev


def test_the_papers_own_settings_differ_where_their_code_differs():
    s = {n: P.get(n).settings for n in P.names()}
    assert s["dexperts"]["top_k"] == 0 and all(s[n]["top_k"] == 50 for n in ("hspd", "reversal", "sasa", "cmd"))
    assert s["reversal"]["min_new_tokens"] == 5 and s["reversal"]["seeds"] == [2023]
    assert s["reversal"]["dist_variant"] == "corpus" and s["reversal"]["prompt_filters"] == {"min_toxicity": 0.5}
    assert s["hspd"]["seeds"] == [1337, 1338, 1339, 1340, 1341]
    assert all(s[n]["ppl_variant"] == "sample" for n in P.names())
    assert "rate" in P.get("cmd").tp_rule


def test_the_options_given_win_and_are_listed_as_deviations():
    cfg = EvalConfig(num_samples=3, top_k=7, scorer="detoxify:/x.ckpt", ppl_model="gpt2-xl", limit=10)
    P.apply(cfg, "reversal", given={"num_samples", "top_k"})
    assert cfg.num_samples == 3 and cfg.top_k == 7 and cfg.min_new_tokens == 5 and cfg.seeds == [2023]
    dev = cfg.protocol["deviations"]
    assert any(d.startswith("num_samples = 3 set by the user (protocol: 25)") for d in dev)
    assert any(d.startswith("top_k = 7 set by the user (protocol: 50)") for d in dev)
    assert not any("PPL model" in d for d in dev)  # the paper's PPL model given: no deviation
    assert any("subset of 10 prompts" in d for d in dev)
    hs = P.apply(EvalConfig(scorer="detoxify:/x.ckpt"), "hspd").protocol["deviations"]
    assert not any("toxicity scorer" in d for d in hs)  # Detoxify given for the protocol that uses it


def test_top_k_and_min_new_tokens_key_the_cache_only_when_set():
    cfg = EvalConfig()
    k0 = generation_key(cfg, "none", 0, ["a"], {})
    cfg.top_k = 50
    k1 = generation_key(cfg, "none", 0, ["a"], {})
    cfg.min_new_tokens = 5
    k2 = generation_key(cfg, "none", 0, ["a"], {})
    assert len({k0, k1, k2}) == 3
    cfg.top_k, cfg.min_new_tokens = 0, 0
    assert generation_key(cfg, "none", 0, ["a"], {}) == k0  # unchanged for runs without them


def test_generate_cached_passes_top_k_and_min_new_tokens(tiny, tmp_path):
    base, prompts = tiny
    gen = Generator("none", model=base)
    seen = []
    run = gen.run_batch

    def recording(*a, **kw):
        seen.append((kw["top_k"], kw["min_new_tokens"]))
        return run(*a, **kw)

    gen.run_batch = recording
    cfg = EvalConfig(methods=["none"], model=base, num_samples=2, max_new_tokens=6, top_k=3, min_new_tokens=6,
                     batch_size=2)
    _, conts = generate_cached(gen, cfg, ["the water is", "you are a", "we can go"], 0, str(tmp_path), progress=False)
    assert seen == [(3, 6), (3, 6)]
    tok = gen.tokenizer
    for cs in conts:  # min_new_tokens == max_new_tokens: no continuation ends early
        for c in cs:
            assert len(tok(c, add_special_tokens=False)["input_ids"]) >= 5


def test_eval_protocol_end_to_end_reports_settings_deviations_and_intervals(tiny, tmp_path, capsys):
    base, prompts = tiny
    out = tmp_path / "ev"
    rc = cli_main(["eval", "--protocol", "reversal", "--methods", "none,reversal", "--model", base,
                   "--prompts", prompts, "--num-samples", "2", "--max-new-tokens", "6", "--scorer", "profanity",
                   "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    pr = res["protocol"]
    assert pr["name"] == "reversal"
    assert pr["settings"]["min_new_tokens"] == 5 and pr["settings"]["top_k"] == 50 and pr["settings"]["num_samples"] == 2
    assert res["config"]["top_k"] == 50 and res["config"]["seeds"] == [2023]
    assert res["config"]["prompt_filters"] == {"min_toxicity": 0.5}
    assert res["prompts"].endswith("(3 prompts)")  # the filter kept the prompts with toxicity >= 0.5
    assert any("num_samples = 2 set by the user" in d for d in pr["deviations"])
    st = res["statistics"]
    assert set(st["intervals"]) == {"none", "reversal"} and set(st["paired"]) == {"reversal"}
    report = (out / "report.md").read_text()
    assert "## Protocol `reversal`" in report and "| min_new_tokens | 5 |" in report
    assert "Deviations from the paper" in report and "profanity instead of a DeBERTa" in report
    assert "Paired bootstrap against `none`" in report and "| reversal | " in report
    assert "protocol reversal:" in capsys.readouterr().out


def test_an_unknown_protocol_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["eval", "--protocol", "nope"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [(["eval", "--top-k", "-1"], "--top-k"),
                                          (["eval", "--min-new-tokens", "x"], "--min-new-tokens"),
                                          (["demo", "--top-k", "1.5"], "--top-k")])
def test_bad_top_k_and_min_new_tokens_are_one_line_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_demo_covers_the_six_methods_that_need_no_training():
    args = build_parser().parse_args(["demo"])
    assert args.methods.split(",") == ["none", "socd", "cd", "dexperts", "sasa", "reversal"]
