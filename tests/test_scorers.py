"""Tests of detox.scorers: the offline scorers rank toxic above benign text, the Keras tokenizer and
BiLSTM are reproduced faithfully without TensorFlow, bad specs fail clearly, and the package
re-exports every public name of its modules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detox import scorers
from detox.scorers import KerasTokenizer, ScorerError, keras_tokenizer, load_scorer, pad_sequences

TOXIC = [
    "You are a stupid idiot.",
    "Shut up, you worthless piece of shit.",
    "You're disgusting!",
    "Fuck you, moron.",
    "I hate you, you ugly bitch.",
]
BENIGN = [
    "Have a nice day :)",
    "The weather is lovely this morning.",
    "Thank you for your help with the project.",
    "This is wonderful news.",
    "The meeting starts at ten o'clock.",
]


def _auc(pos, neg) -> float:
    pos, neg = np.asarray(pos), np.asarray(neg)
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


# --------------------------------------------------------------------------------------------------
# Keras tokenizer reproduction


def _keras_reference(tok_dict: dict, texts):
    """Keras' Tokenizer.texts_to_sequences, written out as Keras does it (word level)."""
    out = []
    num_words, oov = tok_dict["num_words"], tok_dict["oov_token"]
    oov_index = tok_dict["word_index"].get(oov)
    for text in texts:
        if tok_dict["lower"]:
            text = text.lower()
        text = text.translate(str.maketrans({c: tok_dict["split"] for c in tok_dict["filters"]}))
        seq = [w for w in text.split(tok_dict["split"]) if w]
        vect = []
        for w in seq:
            i = tok_dict["word_index"].get(w)
            if i is not None:
                if num_words and i >= num_words:
                    if oov_index is not None:
                        vect.append(oov_index)
                else:
                    vect.append(i)
            elif oov is not None:
                vect.append(oov_index)
        out.append(vect)
    return out


WI = {"the": 1, "you": 2, "are": 3, "don't": 4, "idiot": 5, "rare": 7, "a": 6}


def test_keras_tokenizer_punctuation_case_oov():
    tok = KerasTokenizer(WI, num_words=None)
    assert tok.texts_to_sequences(["You are an IDIOT!!!"]) == [[2, 3, 5]]  # 'an' unknown: dropped
    assert tok.texts_to_sequences(["you,are;the-idiot"]) == [[2, 3, 1, 5]]  # filters split words
    assert tok.texts_to_sequences(["Don't"]) == [[4]]  # the apostrophe is not a filter
    assert tok.texts_to_sequences(["\tyou \n  are  "]) == [[2, 3]]
    assert tok.texts_to_sequences(["", "!!!"]) == [[], []]
    assert tok.texts_to_sequences(["you\xa0are"]) == [[]]  # only ' ' splits: one unknown word
    # num_words: indices >= num_words are dropped ...
    assert KerasTokenizer(WI, num_words=7).texts_to_sequences(["a rare idiot"]) == [[6, 5]]
    # ... or become the OOV index, like unknown words
    wi = {"<OOV>": 1, **{w: i + 1 for w, i in WI.items()}}
    tok = KerasTokenizer(wi, num_words=8, oov_token="<OOV>")
    assert tok.texts_to_sequences(["a rare idiot zebra"]) == [[7, 1, 6, 1]]
    for kw in ({"num_words": None, "oov_token": None}, {"num_words": 7, "oov_token": None},
               {"num_words": 8, "oov_token": "<OOV>"}):
        d = {"word_index": wi if kw["oov_token"] else WI, "lower": True, "split": " ",
             "filters": keras_tokenizer._KERAS_DEFAULT_FILTERS, **kw}
        texts = ["A rare, RARE idiot: you are!", "zebra the (the) don't", "you--are--a\tidiot\n"]
        assert KerasTokenizer(d["word_index"], num_words=kw["num_words"], oov_token=kw["oov_token"]) \
            .texts_to_sequences(texts) == _keras_reference(d, texts)


def test_pad_sequences_pre_padding_and_truncation():
    got = pad_sequences([[1, 2, 3], [4], [], [5, 6, 7, 8, 9]], maxlen=3)
    assert got.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0], [7, 8, 9]]
    assert got.dtype == np.int64


@pytest.fixture(scope="module")
def jigsaw():
    return load_scorer("jigsaw")


def test_real_pickled_keras_tokenizer(jigsaw):
    from detox import assets

    tok = jigsaw.tokenizer
    assert tok.num_words == 20000 and tok.oov_token is None and tok.lower and tok.split == " "
    assert tok.word_index["the"] == 1 and tok.word_index["you"] == 6 and tok.word_index["don't"] == 59
    assert max(tok.word_index.values()) == 19999  # only the usable part is kept
    # against the Keras algorithm applied to the full pickled word index
    with open(assets.asset_path("jigsaw-bilstm", "tokenizer"), "rb") as fh:
        full = keras_tokenizer._KerasTokenizerUnpickler(fh).load().__dict__
    texts = ["You're SO dumb... and stupid!!", "Wikipedia's editors; don't (ever) vandalise", "zxqv"]
    assert tok.texts_to_sequences(texts) == _keras_reference(full, texts)


def test_unpickler_refuses_other_classes(tmp_path):
    import pickle

    p = tmp_path / "evil.pickle"
    p.write_bytes(pickle.dumps(np.zeros(2)))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        scorers.load_keras_tokenizer(p)


# --------------------------------------------------------------------------------------------------
# Jigsaw BiLSTM


def _keras_lstm_numpy(x, kernel, rec, bias, reverse):
    """One Keras LSTM (gates i, f, c, o; sigmoid / tanh) over x (T, E); returns h for every step."""
    units = rec.shape[0]
    h, c = np.zeros(units), np.zeros(units)
    out = np.zeros((x.shape[0], units))
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for t in steps:
        z = x[t] @ kernel + h @ rec + bias
        i, f, g, o = z[:units], z[units:2 * units], z[2 * units:3 * units], z[3 * units:]
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out[t] = h
    return out


def _write_keras_h5(path, layers):
    """A Keras 3 style ``.weights.h5``: ``layers/<name>/.../vars/<i>``."""
    import h5py

    with h5py.File(path, "w") as f:
        for name, arrays in layers.items():
            for i, a in enumerate(arrays):
                f.create_dataset(f"layers/{name}/vars/{i}", data=a)


def test_keras_weights_to_pytorch_layout(tmp_path):
    from detox.scorers.keras_weights import read_bilstm_weights

    rng = np.random.default_rng(0)
    V, E, U, H, K = 11, 4, 3, 5, 2
    emb = rng.normal(size=(V, E))
    cell = lambda: [rng.normal(size=(E, 4 * U)), rng.normal(size=(U, 4 * U)), rng.normal(size=4 * U)]  # noqa: E731
    fw, bw = cell(), cell()
    d1 = [rng.normal(size=(2 * U, H)), rng.normal(size=H)]
    d2 = [rng.normal(size=(H, K)), rng.normal(size=K)]
    p = tmp_path / "m.weights.h5"
    _write_keras_h5(p, {"embedding": [emb], "bidirectional/forward_layer/cell": fw,
                        "bidirectional/backward_layer/cell": bw, "dense_1": d2, "dense": d1})
    sd = read_bilstm_weights(p)
    np.testing.assert_array_equal(sd["lstm.weight_ih_l0"], fw[0].T)
    np.testing.assert_array_equal(sd["lstm.weight_hh_l0_reverse"], bw[1].T)
    np.testing.assert_array_equal(sd["lstm.bias_ih_l0"], fw[2])
    assert not sd["lstm.bias_hh_l0"].any()
    np.testing.assert_array_equal(sd["dense.weight"], d1[0].T)  # "dense" before "dense_1"
    np.testing.assert_array_equal(sd["out.bias"], d2[1])
    model = scorers.KerasBiLSTM.from_keras_h5(p)
    assert (model.embedding.num_embeddings, model.lstm.hidden_size, model.dense.out_features,
            model.out.out_features) == (V, U, H, K)
    ids = torch.tensor([[0, 3, 5, 7]])
    x = emb[ids[0].numpy()]
    seq = np.concatenate([_keras_lstm_numpy(x, *fw, False), _keras_lstm_numpy(x, *bw, True)], axis=1)
    ref = 1 / (1 + np.exp(-(np.maximum(seq.max(0) @ d1[0] + d1[1], 0) @ d2[0] + d2[1])))
    np.testing.assert_allclose(model(ids)[0].numpy(), ref, atol=1e-5)
    # files without the expected layers are refused with what was found
    _write_keras_h5(tmp_path / "two.weights.h5", {"embedding": [emb], "dense": d1})
    with pytest.raises(ScorerError, match=r"expected layers embedding, bidirectional.*found \['dense', 'embedding'\]"):
        read_bilstm_weights(tmp_path / "two.weights.h5")
    import h5py

    with h5py.File(tmp_path / "bare.h5", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(ScorerError, match="not a Keras 3 .weights.h5 file"):
        read_bilstm_weights(tmp_path / "bare.h5")


def test_bilstm_matches_keras_equations(jigsaw):
    import h5py

    from detox import assets

    texts = ["You are so dumb and stupid!", "Have a nice day :)"]
    ids = jigsaw.encode(texts)
    with h5py.File(assets.asset_path("jigsaw-bilstm", "weights")) as f:
        L = f["layers"]
        emb = L["embedding/vars/0"][()]
        fw = [L[f"bidirectional/forward_layer/cell/vars/{i}"][()] for i in range(3)]
        bw = [L[f"bidirectional/backward_layer/cell/vars/{i}"][()] for i in range(3)]
        d1 = [L[f"dense/vars/{i}"][()] for i in range(2)]
        d2 = [L[f"dense_1/vars/{i}"][()] for i in range(2)]
    for row, text in zip(ids, texts):
        x = emb[row].astype(np.float64)
        seq = np.concatenate([_keras_lstm_numpy(x, *fw, False), _keras_lstm_numpy(x, *bw, True)], axis=1)
        hidden = np.maximum(seq.max(axis=0) @ d1[0] + d1[1], 0)
        ref = 1 / (1 + np.exp(-(hidden @ d2[0] + d2[1])))
        got = jigsaw.score_labels_array([text])[0]
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_jigsaw_matches_tensorflow_reference_output(jigsaw):
    # the package README's TensorFlow output for this sentence
    ref = [0.9889402985572815, 0.07256772369146347, 0.620429277420044,
           0.01934845559298992, 0.8664075136184692, 0.04072948172688484]
    got = jigsaw.score_labels(["You are so dumb and stupid!"])
    assert list(got) == list(scorers.JIGSAW_LABELS)
    np.testing.assert_allclose([got[k][0] for k in scorers.JIGSAW_LABELS], ref, atol=1e-5)
    # README: "Overall Toxicity Score" (mean of the six labels) of a batch
    means = jigsaw.score_labels_array(["I hate you so much!", "You're disgusting!", "Have a nice day :)"]).mean(1)
    np.testing.assert_allclose(means, [0.1395, 0.3110, 0.0115], atol=6e-5)


def test_jigsaw_ranks_toxic_above_benign(jigsaw):
    tox, ben = jigsaw.score(TOXIC), jigsaw.score(BENIGN)
    assert _auc(tox, ben) == 1.0
    assert (tox > 0.5).all() and (ben < 0.5).all()


def test_jigsaw_batching_is_consistent(jigsaw):
    texts = TOXIC + BENIGN + ["", None, "x " * 500]  # empty, None and a > 100-token text
    full = jigsaw.score(texts)
    np.testing.assert_allclose(jigsaw.score(texts, batch_size=3), full, atol=1e-6)
    single = np.array([jigsaw.score([t])[0] for t in texts])
    np.testing.assert_allclose(single, full, atol=1e-6)
    assert full.shape == (len(texts),) and ((full >= 0) & (full <= 1)).all()
    assert jigsaw.score([]).shape == (0,)
    with pytest.raises(TypeError, match="not a single string"):
        jigsaw.score("a string")


# --------------------------------------------------------------------------------------------------
# profanity-check


def test_profanity_ranks_toxic_above_benign():
    s = load_scorer("profanity")
    assert s.name == "profanity"
    tox, ben = s.score(TOXIC), s.score(BENIGN)
    assert _auc(tox, ben) == 1.0
    assert ((tox >= 0) & (tox <= 1)).all()
    assert s.score(TOXIC + BENIGN, batch_size=2).tolist() == pytest.approx(np.r_[tox, ben].tolist())


# --------------------------------------------------------------------------------------------------
# HuggingFace classifier directories and Detoxify checkpoints (tiny random models built here)


def _tiny_bert(tmp_path, num_labels, id2label=None, problem_type=None):
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "are", "a", "nice", "idiot", "day", "have"]
    tk = Tokenizer(WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = BertPreTokenizer()
    from tokenizers.processors import TemplateProcessing

    tk.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]", model_max_length=64)
    kw = {}
    if id2label is not None:
        kw["id2label"] = id2label
        kw["label2id"] = {v: k for k, v in id2label.items()}
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=num_labels,
                     problem_type=problem_type, **kw)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return model, tok


def test_hf_classifier_directory_softmax(tmp_path):
    model, tok = _tiny_bert(tmp_path, 2, {0: "non-toxic", 1: "toxic"})
    s = load_scorer(str(tmp_path))
    assert s.activation == "softmax" and s.labels[s.score_index] == "toxic"
    texts = ["you are a nice day", "idiot", "have a nice day you idiot idiot"]
    with torch.inference_mode():
        ref = torch.softmax(model(**tok(texts, return_tensors="pt", padding=True)).logits, -1)[:, 1]
    np.testing.assert_allclose(s.score(texts, batch_size=2), ref.numpy(), atol=1e-5)
    assert load_scorer(f"hf:{tmp_path}", label="non-toxic").score_index == 0


def test_hf_classifier_directory_sigmoid(tmp_path):
    model, tok = _tiny_bert(tmp_path, 3, {0: "neutral", 1: "offensive", 2: "hate"},
                            problem_type="multi_label_classification")
    s = load_scorer(tmp_path)
    assert s.activation == "sigmoid" and s.score_index == 1
    with torch.inference_mode():
        ref = torch.sigmoid(model(**tok(["you idiot"], return_tensors="pt")).logits)[0, 1]
    assert s.score(["you idiot"])[0] == pytest.approx(float(ref), abs=1e-5)


def test_pick_toxic_label():
    pick = scorers.pick_toxic_label
    assert pick({0: "LABEL_0", 1: "LABEL_1"}, 2) == 1
    assert pick({0: "toxic", 1: "non-toxic"}, 2) == 0
    assert pick({0: "not_hate", 1: "hate"}, 2) == 1
    assert pick({0: "nothate", 1: "hate"}, 2) == 1
    assert pick({0: "normal", 1: "offensive", 2: "hate speech"}, 3) == 1
    assert pick({0: "identity_hate", 1: "toxicity"}, 2) == 1  # exact "toxic(ity)" first
    assert pick({0: "harmless", 1: "harmful"}, 2) == 1
    assert pick({0: "x"}, 1) == 0


def test_detoxify_checkpoint_offline(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "cfg"
    model, tok = _tiny_bert(cfg_dir, 6)
    ckpt = tmp_path / "toxic_original.ckpt"
    torch.save({
        "config": {
            "arch": {"args": {"model_type": "bert-base-uncased", "model_name": "BertForSequenceClassification",
                              "tokenizer_name": "BertTokenizer", "num_classes": 6}},
            "dataset": {"args": {"classes": list(scorers.JIGSAW_LABELS)}},
        },
        "state_dict": model.state_dict(),
    }, ckpt)
    texts = ["you are a nice day", "idiot idiot", "have a nice day"]
    with torch.inference_mode():
        ref = torch.sigmoid(model(**tok(texts, return_tensors="pt", padding=True)).logits)
    s = load_scorer(f"detoxify:{ckpt}:{cfg_dir}")
    assert s.labels[0] == "toxicity" and s.labels[5] == "identity_attack" and s.score_index == 0
    np.testing.assert_allclose(s.score_labels_array(texts), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(s.score(texts), ref[:, 0].numpy(), atol=1e-5)
    # configured by environment variables: the default scorer becomes Detoxify
    monkeypatch.setenv("DETOX_DETOXIFY_CHECKPOINT", str(ckpt))
    monkeypatch.setenv("DETOX_DETOXIFY_CONFIG", str(cfg_dir))
    for spec in (None, "default", "detoxify"):
        assert isinstance(load_scorer(spec), scorers.DetoxifyScorer)


# --------------------------------------------------------------------------------------------------
# errors and the default


def test_missing_detoxify_checkpoint(monkeypatch, tmp_path):
    monkeypatch.delenv("DETOX_DETOXIFY_CHECKPOINT", raising=False)
    monkeypatch.delenv("DETOX_DETOXIFY_CONFIG", raising=False)
    with pytest.raises(ScorerError, match="(?s)needs a local checkpoint: none was given.*DETOX_DETOXIFY_CHECKPOINT"):
        load_scorer("detoxify")
    with pytest.raises(ScorerError, match="(?s)does not exist.*cannot work without a network"):
        load_scorer(f"detoxify:{tmp_path / 'nope.ckpt'}")
    ckpt = tmp_path / "x.ckpt"
    torch.save({"config": {}, "state_dict": {}}, ckpt)
    with pytest.raises(ScorerError, match="unexpected Detoxify checkpoint config"):
        load_scorer(f"detoxify:{ckpt}")
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ScorerError, match="not a Detoxify checkpoint"):
        load_scorer(f"detoxify:{ckpt}")


def test_bad_specs():
    with pytest.raises(ScorerError, match="(?s)unknown scorer 'perspectiv'.*jigsaw.*profanity"):
        load_scorer("perspectiv")
    with pytest.raises(ScorerError, match="no such scorer path"):
        load_scorer("/no/such/classifier")
    with pytest.raises(ScorerError, match="no such classifier directory"):
        load_scorer("hf:/no/such/classifier")


def test_not_a_model_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ScorerError, match="(?s)no config.json.*notes.txt"):
        load_scorer(tmp_path)


def test_default_scorer_is_jigsaw_offline(monkeypatch):
    monkeypatch.delenv("DETOX_DETOXIFY_CHECKPOINT", raising=False)
    s = scorers.default_scorer()
    assert isinstance(s, scorers.JigsawScorer) and s.name == "jigsaw"
    assert load_scorer(s) is s
    assert isinstance(load_scorer("jigsaw-bilstm"), scorers.JigsawScorer)
    assert s.info()["score_label"] == "toxic"
    assert math.isclose(float(s(["You are so dumb and stupid!"])[0]), 0.98894, abs_tol=1e-4)


# --------------------------------------------------------------------------------------------------
# the package


def test_package_reexports_every_public_name():
    import importlib

    mods = ["base", "keras_tokenizer", "keras_weights", "jigsaw", "profanity", "hf_classifier", "detoxify"]
    for name in scorers.__all__:
        assert hasattr(scorers, name), name
    for m in mods:
        mod = importlib.import_module(f"detox.scorers.{m}")
        for name in mod.__all__:
            if m == "keras_weights":  # an internal loader, reached through KerasBiLSTM.from_keras_h5
                continue
            assert getattr(scorers, name) is getattr(mod, name), f"{m}.{name}"
    assert scorers.JIGSAW_MAXLEN == 100
    assert scorers.scorer_names() == ["detoxify", "jigsaw", "profanity"]
