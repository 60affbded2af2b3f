"""The method registry: settings and their validation, the generated CLI options, what the harness
loads, the generation-cache key, and adding a method in one file."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from detox import methods as registry
from detox.cli import build_parser, main as cli_main
from detox.methods import GenerationResult, Method, Settings, SettingsError, setting

from tiny_models import tiny_llama_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILTIN = ("none", "socd", "cd", "dexperts", "unidetox", "reversal", "sasa", "cmd")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from detox.sasa import Subspace

    root = tmp_path_factory.mktemp("methods")
    base = tiny_llama_dir(str(root / "base"), seed=0)
    toxic = tiny_llama_dir(str(root / "toxic"), seed=1)
    prompts = root / "prompts.txt"
    prompts.write_text("the water is\nyou are a\nthey said that\n")
    g = torch.Generator().manual_seed(0)
    sub = Subspace(torch.randn(32, generator=g, dtype=torch.float64), torch.zeros(32, dtype=torch.float64),
                   base).save(str(root / "sub.safetensors"))
    return dict(base=base, toxic=toxic, prompts=str(prompts), subspace=sub)


def test_every_builtin_method_is_registered_with_valid_defaults():
    assert registry.names() == BUILTIN
    for cls in registry.methods():
        assert cls.Settings.method == cls.name and cls.title and cls.docs
        s = cls.Settings().validate()
        assert registry.settings_for(cls.name, s.to_dict()) == s  # a dict of its fields round-trips
    assert [n for n in BUILTIN if registry.get(n).needs_toxic] == ["socd", "cd", "dexperts", "unidetox"]
    assert registry.get("cmd").extra_outputs == ("chains",)


@pytest.mark.parametrize("method,bad,fragment", [
    ("socd", {"k_min": 0}, "(--socd-k-min) must be >= 1; got 0"),
    ("socd", {"k_min": 20, "k_max": 10}, "--socd-k-max (10) must be >= --socd-k-min (20)"),
    ("socd", {"divergence": "kl"}, "must be one of fkl, rkl, skl, jsd, tvd, l2; got 'kl'"),
    ("socd", {"k_min": 2.5}, "must be int, got 2.5"),
    ("cd", {"alpha": 1.0}, "--cd-alpha) must be < 1.0; got 1.0"),
    ("dexperts", {"top_p": 0.0}, "--dexperts-top-p) must be > 0.0; got 0.0"),
    ("dexperts", {"alpha": float("nan")}, "must be a finite number"),
    ("sasa", {"max_candidates": 0}, "--sasa-max-candidates) must be >= 1; got 0"),
    ("sasa", {"mode": "hard"}, "must be one of softmax, tilt; got 'hard'"),
    ("cmd", {"chain_tokens": -1}, "--cmd-chain-tokens) must be >= 1"),
    ("reversal", {"renorm": "yes"}, "must be bool"),
    ("reversal", {"layerz": "1"}, "unknown reversal setting(s) layerz"),
])
def test_settings_are_validated_with_the_option_and_the_value(method, bad, fragment):
    with pytest.raises(SettingsError) as e:
        registry.settings_for(method, bad)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_a_k_larger_than_the_vocabulary_is_refused_when_the_models_are_known(tiny):
    from detox.generation.driver import Generator

    with pytest.raises(SettingsError, match="--socd-k-min must be <= the vocabulary size"):
        Generator("socd", model=tiny["base"], toxic_model=tiny["toxic"], settings={"k_min": 100_000})


def test_cli_options_are_generated_one_group_per_method():
    sub = build_parser()._subparsers._group_actions[0]
    for command in ("generate", "eval", "demo"):
        p = sub.choices[command]
        groups = {g.title: g for g in p._action_groups}
        for cls in registry.methods():
            fields = cls.Settings.fields_info()
            if not fields:
                continue
            opts = {o for a in groups[f"{cls.name} settings"]._group_actions for o in a.option_strings}
            for f, _ in fields:
                assert cls.Settings.option(f.name) in opts, (command, cls.name, f.name)
    rewrite = sub.choices["rewrite"]
    titles = {g.title for g in rewrite._action_groups}
    assert {"socd settings", "cd settings"} <= titles and "sasa settings" not in titles


def test_help_is_grouped_by_method_and_names_no_spec_file():
    for command in ("generate", "eval", "demo", "rewrite", "fit-sasa", "train-toxic", "cmd-synthesize", "cmd-train",
                    "finetune"):
        out = subprocess.run([sys.executable, "-m", "detox.cli", command, "--help"], capture_output=True, text=True,
                             cwd=ROOT)
        assert out.returncode == 0, out.stderr
        for bad in ("../shared", "shared/", "specs", "socd.md", "sasa.md", "reversal.md", "cmd.md", "eval.md",
                    "hspd.md", "perf.md"):
            assert bad not in out.stdout, (command, bad)
        if command in ("generate", "eval", "demo"):
            for name in ("socd", "cd", "dexperts", "unidetox", "sasa", "reversal", "cmd"):
                assert f"{name} settings:" in out.stdout


def test_cli_settings_reach_the_method_and_bad_values_exit_2(capsys):
    from detox.methods._cli import method_settings_from_args

    args = build_parser().parse_args(["generate", "--prompt", "x", "--socd-k-min", "7", "--socd-divergence", "jsd",
                                      "--no-cmd-guided", "--sasa-beta", "-2"])
    s = method_settings_from_args(args, ["socd", "cmd", "sasa", "cd"])
    assert (s["socd"].k_min, s["socd"].divergence, s["socd"].k_max) == (7, "jsd", None)
    assert s["cmd"].guided is False and s["sasa"].beta == -2.0 and s["cd"] == registry.get("cd").Settings()
    rc = cli_main(["generate", "--prompt", "x", "--socd-k-min", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "error: socd setting k_min (--socd-k-min) must be >= 1; got 0"
    rc = cli_main(["eval", "--methods", "none,sasaa"])
    assert rc == 2 and "unknown method 'sasaa'; choose one of none, socd" in capsys.readouterr().err


def test_eval_none_and_sasa_never_load_or_make_a_toxic_model(tiny, tmp_path, monkeypatch, capsys):
    """On an empty $DETOX_HOME, methods that need no toxic model neither train nor load one."""
    import detox.toxic

    monkeypatch.setenv("DETOX_HOME", str(tmp_path / "home"))

    def no_toxic(*a, **k):
        raise AssertionError("the toxic model was asked for")

    monkeypatch.setattr(detox.toxic, "resolve_toxic_model", no_toxic)
    monkeypatch.setattr(detox.toxic, "make_toxic_model", no_toxic)
    import detox.models

    loaded = []
    real = detox.models.load_causal_lm
    monkeypatch.setattr(detox.models, "load_causal_lm", lambda name, **kw: loaded.append(name) or real(name, **kw))
    out = tmp_path / "eval"
    rc = cli_main(["eval", "--methods", "none,sasa", "--model", tiny["base"], "--prompts", tiny["prompts"],
                   "--sasa-subspace", tiny["subspace"], "--num-samples", "2", "--max-new-tokens", "3",
                   "--scorer", "profanity", "--out", str(out)])
    assert rc == 0
    assert loaded == [tiny["base"]]  # the base model once (it is also the PPL model), nothing else
    assert not (tmp_path / "home" / "models").exists()
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"none", "sasa"} and "toxic_model" not in res["methods"]["sasa"]["settings"]


def _generation_files(out):
    d = out / "generations"
    return {f: os.path.getmtime(d / f) for f in sorted(os.listdir(d))}


def test_other_methods_settings_do_not_invalidate_cached_generations(tiny, tmp_path):
    from detox.harness import EvalConfig, run_eval

    class Share:
        name = "share"

        def score(self, texts):
            return [len(t) % 7 / 7 for t in texts]

    out = tmp_path / "eval"
    cfg = EvalConfig(methods=["sasa", "socd"], model=tiny["base"], toxic_model=tiny["toxic"],
                     prompts=tiny["prompts"], num_samples=2, max_new_tokens=3,
                     method_settings={"sasa": {"subspace": tiny["subspace"]}})
    run_eval(cfg, str(out), progress=False, scorer=Share())
    first = _generation_files(out)
    # settings of CD and DExperts (not run) and of SoCD (run, but another method) leave SASA's cache alone
    cfg.method_settings.update(cd={"beta": 0.9}, dexperts={"alpha": 1.0}, socd={"k_min": 5})
    run_eval(cfg, str(out), progress=False, scorer=Share())
    files = _generation_files(out)
    sasa = [f for f in first if f.startswith("sasa-")]
    assert len(sasa) == 1 and files[sasa[0]] == first[sasa[0]]
    assert len([f for f in files if f.startswith("socd-")]) == 2  # SoCD's own setting changed: a new file
    # SASA's own setting makes a new generation file
    cfg.method_settings["sasa"] = {"subspace": tiny["subspace"], "beta": 3.0}
    run_eval(cfg, str(out), progress=False, scorer=Share())
    assert len([f for f in _generation_files(out) if f.startswith("sasa-")]) == 2


# -- adding a method: the worked example of docs/adding-a-method.md, one class ----------------------

@dataclass
class BanSettings(Settings):
    words: str = setting("idiot,stupid", "comma-separated words that are never generated", metavar="WORDS")


class BanWords(Method):
    """Bans a list of words: a logits processor inside generate."""

    name = "ban-words"
    title = "never generate the listed words"
    Settings = BanSettings

    def setup(self, **extra_models):
        super().setup(**extra_models)
        tok = self.models.tokenizer
        self.ids = [i for w in self.settings.words.split(",") for i in tok(w, add_special_tokens=False)["input_ids"]]

    def processor(self, attention_mask):
        ids = torch.tensor(self.ids, device=self.models.device)

        def ban(input_ids, scores):
            return scores.index_fill(-1, ids, float("-inf"))

        return ban


def test_a_new_method_is_one_class(tiny, monkeypatch):
    from detox.generation.driver import Generator

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(BanWords)
    assert registry.names() == BUILTIN + ("ban-words",) and BanSettings.method == "ban-words"
    assert registry.settings_for("ban-words", {"words": "hate"}).words == "hate"
    kw = dict(num_samples=8, max_new_tokens=8, seed=0, temperature=2.0)
    prompts = ["you are a", "the water is"]

    def words(r):
        return " ".join(t for row in r.texts for t in row).split()

    plain = words(Generator("none", model=tiny["base"]).run_batch(prompts, **kw))
    common = sorted(set(plain), key=lambda w: (-plain.count(w), w))[:2]  # what plain sampling writes most
    gen = Generator("ban-words", model=tiny["base"], settings={"words": ",".join(common)})
    res = gen.run_batch(prompts, **kw)
    assert isinstance(res, GenerationResult) and [len(r) for r in res.texts] == [8, 8]
    assert not set(common) & set(words(res)) and len(words(res)) > 50
    assert gen.settings()["method_settings"] == {"words": ",".join(common)}


def test_every_method_has_a_docs_page_with_every_setting():
    for cls in registry.methods():
        page = os.path.join(ROOT, cls.docs)
        assert os.path.exists(page), cls.docs
        text = open(page, encoding="utf-8").read()
        for f, _ in cls.Settings.fields_info():
            assert cls.Settings.option(f.name) in text, (cls.docs, f.name)
