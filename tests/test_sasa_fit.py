"""The SASA subspace: streaming fit against a dense computation, data readers, the saved file."""

from __future__ import annotations

import json
import os

import pytest
import torch

from detox.sasa import EIG_THRESHOLD, MomentAccumulator, Subspace, fit_subspace, read_labelled, resolve_subspace


def fit_dense(h: torch.Tensor, labels, eig_threshold: float = EIG_THRESHOLD, shrinkage: float = 0.0):
    """The SASA fit from all embeddings at once (``torch.cov``, ``torch.linalg.pinv``): the dense
    reference the streaming :class:`MomentAccumulator` is checked against."""
    h = h.double()
    y = torch.as_tensor(labels)
    x1, x2 = h[y == 0], h[y == 1]
    n1, n2 = x1.shape[0], x2.shape[0]
    sigma = ((n1 - 1) * torch.cov(x1.T) + (n2 - 1) * torch.cov(x2.T)) / (n1 + n2 - 2)
    d = sigma.shape[0]
    sigma = sigma + shrinkage * torch.trace(sigma) / d * torch.eye(d, dtype=sigma.dtype)
    w = torch.linalg.pinv(sigma, hermitian=True, atol=eig_threshold) @ (x1.mean(0) - x2.mean(0)) / 2
    return w / w.norm(), (x1.mean(0) + x2.mean(0)) / 2


def _gaussian_classes(n1, n2, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g) / d ** 0.5
    shift = torch.randn(d, generator=g)
    x1 = torch.randn(n1, d, generator=g) @ a + shift
    x2 = torch.randn(n2, d, generator=g) @ a - shift
    return torch.cat([x1, x2]), [0] * n1 + [1] * n2


@pytest.mark.parametrize("n1,n2,d", [(300, 200, 16), (20, 15, 64)])  # full rank, and rank-deficient (pinv)
def test_streaming_fit_equals_dense(n1, n2, d):
    h, y = _gaussian_classes(n1, n2, d)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    h, y = h[perm], [y[i] for i in perm]
    acc = MomentAccumulator(d)
    for s in range(0, len(y), 37):  # odd batches, both classes mixed
        acc.add(h[s:s + 37].float(), y[s:s + 37])
    w, m, info = acc.solve()
    w_ref, m_ref = fit_dense(h.float(), y)
    assert info["n_nontoxic"] == n1 and info["n_toxic"] == n2
    assert info["eigenvalues_kept"] == min(d, n1 + n2 - 2)
    torch.testing.assert_close(m, m_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-6)
    assert abs(float(w.norm()) - 1) < 1e-12
    w_s, _, info_s = acc.solve(shrinkage=0.5)
    torch.testing.assert_close(w_s, fit_dense(h.float(), y, shrinkage=0.5)[0], atol=1e-6, rtol=1e-6)
    assert info_s["eigenvalues_kept"] == d and not torch.allclose(w_s, w)
    # positive margin = the non-toxic side: most class-0 points are positive
    margin = (h.double() - m) @ w
    yy = torch.tensor(y)
    assert (margin[yy == 0] > 0).float().mean() > 0.8 and (margin[yy == 1] < 0).float().mean() > 0.8


def test_fit_errors():
    acc = MomentAccumulator(4)
    acc.add(torch.randn(5, 4), [0] * 5)
    with pytest.raises(ValueError, match="at least 2 texts per class"):
        acc.solve()


def test_read_labelled_formats(tmp_path):
    (tmp_path / "hate_x_1k.txt").write_text("- bad one\\n- bad two\\n-\n- bad two\\n- bad three\\n-\n")
    (tmp_path / "neutral_x_1k.txt").write_text("- good one\\n- good two\\n-\n- good two\\n-\n")
    d = read_labelled(str(tmp_path))
    assert sorted(t for t, y in zip(d.texts, d.labels) if y == 1) == ["bad one", "bad three", "bad two"]
    assert sorted(t for t, y in zip(d.texts, d.labels) if y == 0) == ["good one", "good two"]
    lines = read_labelled([str(tmp_path / "hate_x_1k.txt"), str(tmp_path / "neutral_x_1k.txt")], toxigen_unit="lines")
    assert lines.counts() == (2, 2) and "bad one\n- bad two" in lines.texts[1] + lines.texts[2]
    rtp = tmp_path / "rtp.jsonl"
    rtp.write_text("\n".join(json.dumps({"prompt": {"text": f"t{i}", "toxicity": i / 10}}) for i in range(10))
                   + "\nnot json\n")
    d = read_labelled(str(rtp), score_field="prompt.toxicity", threshold=0.45)
    assert d.counts() == (5, 5)
    lab = tmp_path / "lab.jsonl"
    lab.write_text("\n".join(json.dumps({"text": f"x{i}", "label": i % 2}) for i in range(8)))
    assert read_labelled(str(lab)).counts() == (4, 4)
    assert read_labelled(str(lab), limit_per_label=3).counts() == (3, 3)
    with pytest.raises(FileNotFoundError):
        read_labelled(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="at least 2 non-toxic and 2 toxic"):
        read_labelled(str(tmp_path / "hate_x_1k.txt"))


def test_subspace_file_roundtrip_and_errors(tmp_path):
    s = Subspace(torch.randn(8), torch.randn(8), "some/model", info={"heldout_accuracy": 0.9})
    p = s.save(str(tmp_path / "s.safetensors"))
    t = Subspace.load(p)
    assert torch.equal(t.direction, s.direction) and torch.equal(t.midpoint, s.midpoint)
    assert (t.model, t.layer, t.pooling, t.info["heldout_accuracy"]) == ("some/model", "last", "last-token", 0.9)
    assert os.path.getsize(p) < 2000
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable SASA subspace"):
        Subspace.load(str(tmp_path / "junk.safetensors"))
    with pytest.raises(FileNotFoundError, match="detox fit-sasa"):
        Subspace.load(str(tmp_path / "none.safetensors"))
    with pytest.raises(FileNotFoundError, match="no SASA subspace"):
        resolve_subspace(None, "no-such-model")


def test_fit_subspace_on_a_tiny_model_matches_dense_embeddings(tmp_path):
    from transformers import AutoModelForCausalLM

    from detox.sasa import embed
    from tiny_models import tiny_llama_dir, tiny_tokenizer

    d = tiny_llama_dir(str(tmp_path / "m"), 0)
    model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), tiny_tokenizer()
    toxic = ["you stupid idiot", "i hate you", "shut up fool", "kill the dumb", "ugly idiot you", "damn fool"]
    clean = ["the water is nice", "a good day", "he was kind", "she is happy", "we can go", "it is time"]
    from detox.sasa import Labelled

    data = Labelled(texts=toxic + clean, labels=[1] * 6 + [0] * 6)
    sub = fit_subspace(model, tok, data, model_name=d, batch_size=5, holdout=0.0, progress=False, shrinkage=0.0)
    h = embed(model, tok, data.texts)
    # embedding = the hidden state at the last real token, whatever the padding
    one = embed(model, tok, [data.texts[0]])
    torch.testing.assert_close(h[0], one[0], atol=1e-5, rtol=1e-5)
    w, m = fit_dense(h, data.labels)
    torch.testing.assert_close(sub.direction.double(), w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sub.midpoint.double(), m, atol=1e-5, rtol=1e-5)
    sub2 = fit_subspace(model, tok, data, model_name=d, batch_size=4, holdout=0.34, progress=False, shrinkage=0.0)
    assert sub2.info["heldout_n"] == 4 and 0 <= sub2.info["heldout_accuracy"] <= 1


def test_automatic_shrinkage_is_chosen_on_the_training_split_only(tmp_path):
    """shrinkage=None: every grid value is fitted on the training texts outside the validation
    part and scored on that part; the best (ties: the smallest) is refitted on the whole training
    split. The held-out texts never influence it: other held-out texts change nothing."""
    import random

    from transformers import AutoModelForCausalLM

    from detox.sasa import SHRINKAGE_GRID, Labelled, embed
    from tiny_models import WORDS, tiny_llama_dir, tiny_tokenizer

    d = tiny_llama_dir(str(tmp_path / "m"), 0)
    model, tok = AutoModelForCausalLM.from_pretrained(d).eval(), tiny_tokenizer()
    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    bad = words[:len(words) // 2]
    texts = [" ".join(rng.choice(bad if i % 2 else words) for _ in range(5)) for i in range(60)]
    labels = [i % 2 for i in range(60)]
    data = Labelled(texts=texts, labels=labels)
    sub = fit_subspace(model, tok, data, model_name=d, batch_size=7, holdout=0.2, progress=False, shrinkage=None)
    info = sub.info
    chosen = info["shrinkage"]
    acc = info["shrinkage_chosen_by"]["accuracy"]
    assert set(acc) == {str(s) for s in SHRINKAGE_GRID} and info["shrinkage_chosen_by"]["validation_n"] == 10
    best = max(acc.values())
    assert acc[str(chosen)] == best and all(float(k) >= chosen for k, v in acc.items() if v == best)
    # the final fit is the dense fit of all 48 training texts with the chosen shrinkage
    held = {i for i in range(60) if i not in _training_indices(data, 0.2, 0)}
    train = [i for i in range(60) if i not in held]
    h = embed(model, tok, [texts[i] for i in train])
    w, m = fit_dense(h, [labels[i] for i in train], shrinkage=chosen)
    torch.testing.assert_close(sub.direction.double(), w, atol=1e-4, rtol=1e-4)
    # other held-out texts (the split depends on the labels only) change neither the choice nor the fit
    other = [" ".join(rng.choice(words) for _ in range(7)) if i in held else t for i, t in enumerate(texts)]
    flipped = Labelled(texts=other, labels=labels)
    sub_f = fit_subspace(model, tok, flipped, model_name=d, batch_size=7, holdout=0.2, progress=False, shrinkage=None)
    assert sub_f.info["shrinkage_chosen_by"] == info["shrinkage_chosen_by"]
    torch.testing.assert_close(sub_f.direction, sub.direction)


def _training_indices(data, holdout, seed):
    import random

    idx = list(range(len(data.texts)))
    random.Random(seed).shuffle(idx)
    train = []
    for c in (0, 1):
        cls = [i for i in idx if data.labels[i] == c]
        train += cls[int(round(holdout * len(cls))):]
    return set(train)
