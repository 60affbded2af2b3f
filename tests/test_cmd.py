"""CMD (cmd.md): the contrastive loss, the chain, span detection, and synthesis -> training ->
generation -> evaluation end to end on a tiny random-weight model."""

import json
import math
import os

import pytest
import torch

from detox.cmd import chain as C
from detox.cmd.loss import contrastive_loss, mean_pool


def _direct_loss(anchor, pos, negs, mask, tau):
    """The formula of cmd.md written out group by group, in float64."""
    total, groups = 0.0, 0
    for b in range(anchor.shape[0]):
        js = [k for k in range(negs.shape[1]) if mask[b, k]]
        if not js:
            continue
        cos = lambda u, v: float(torch.dot(u, v) / (u.norm() * v.norm()))
        num = math.exp(cos(anchor[b], pos[b]) / tau)
        den = num + sum(math.exp(cos(anchor[b], negs[b, k]) / tau) for k in js)
        total += -math.log(num / den)
        groups += 1
    return total / groups


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_contrastive_loss_matches_the_direct_computation(tau):
    g = torch.Generator().manual_seed(0)
    B, K, H = 6, 3, 16
    a, p, n = (torch.randn(B, H, generator=g, dtype=torch.float64), torch.randn(B, H, generator=g, dtype=torch.float64),
               torch.randn(B, K, H, generator=g, dtype=torch.float64))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=torch.bool)
    got = contrastive_loss(a, p, n, mask, tau=tau)
    assert got.item() == pytest.approx(_direct_loss(a, p, n, mask, tau), rel=1e-12)
    # a masked-out negative does not change the loss, whatever its value
    n2 = n.clone()
    n2[1, 1:] = 1e3 * torch.randn(2, H, dtype=torch.float64)
    assert contrastive_loss(a, p, n2, mask, tau=tau).item() == pytest.approx(got.item(), rel=1e-12)
    # float32 agrees with float64
    assert contrastive_loss(a.float(), p.float(), n.float(), mask, tau=tau).item() == pytest.approx(got.item(), rel=1e-5)


def test_contrastive_loss_prefers_the_positive():
    H = 8
    a = torch.randn(4, H)
    near = contrastive_loss(a, a + 0.01 * torch.randn(4, H), -a.unsqueeze(1).repeat(1, 2, 1))
    far = contrastive_loss(a, -a, a.unsqueeze(1).repeat(1, 2, 1))
    assert near.item() < math.log(3) < far.item()
    assert near.item() == pytest.approx(-math.log(math.e / (math.e + 2 / math.e)), abs=1e-3)


def test_contrastive_loss_without_negatives_is_zero_with_a_gradient():
    a = torch.randn(3, 5, requires_grad=True)
    loss = contrastive_loss(a, torch.randn(3, 5), torch.randn(3, 2, 5), torch.zeros(3, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))


def test_contrastive_loss_gradcheck():
    g = torch.Generator().manual_seed(1)
    B, K, H = 4, 3, 6
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    a, p, n = mk(B, H), mk(B, H), mk(B, K, H)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a, p, n: contrastive_loss(a, p, n, mask, tau=1.0), (a, p, n))
    assert torch.autograd.gradcheck(lambda a, p, n: contrastive_loss(a, p, n, mask, tau=0.5), (a, p, n))


def test_contrastive_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="negatives must be"):
        contrastive_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="tau"):
        contrastive_loss(torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 1, 4), tau=0)


def test_mean_pool():
    h = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    m = torch.tensor([[1, 0, 1], [0, 0, 0]])
    out = mean_pool(h, m)
    torch.testing.assert_close(out[0], (h[0, 0] + h[0, 2]) / 2)
    torch.testing.assert_close(out[1], torch.zeros(4))


def test_chain_text_and_parser():
    t = C.training_text("You are a damn fool", "and I like it.", "You are a [MASK]", "You are a nice person")
    assert t == ("# Text: You are a damn fool # Let's detoxify step by step. # The context is toxic. # Detect the "
                 "toxic segment within the context: You are a [MASK] # Detoxify the toxic segments: You are a nice "
                 "person # Generation: and I like it. #")
    p = C.parse_chain(t)
    assert (p.toxic, p.masked, p.filled, p.generation, p.complete) == (
        True, "You are a [MASK]", "You are a nice person", "and I like it.", True)
    p = C.parse_chain(C.training_text("The water is hot", "today."))
    assert (p.toxic, p.masked, p.filled, p.generation) == (False, None, None, "today.")
    assert C.parse_chain(" # The context is toxic. # Detect").generation is None


def test_occlusion_detector_and_masks():
    from detox.cmd.synthesis import OcclusionDetector, mask_spans, masked_text
    from detox.scorers import load_scorer

    scorer = load_scorer("profanity")
    texts = ["you are a fucking idiot and I hate you", "the weather is nice today"]
    base = scorer.score(texts)
    assert base[0] > 0.5 > base[1]
    spans = OcclusionDetector(scorer, threshold=0.3).detect(texts)
    assert spans[1] == []
    words = texts[0].split()
    flagged = {words[s] for s, e, _ in spans[0]}
    assert "fucking" in flagged or "idiot" in flagged
    rest = " ".join(w for k, w in enumerate(words) if not any(s <= k < e for s, e, _ in spans[0]))
    assert scorer.score([rest])[0] <= 0.3
    # bigram masking, merged spans, at most max_spans
    assert mask_spans(list("abcdefgh"), [(1, 2, 1.0), (2, 3, 1.0), (6, 7, 1.0)], 3) == [(1, 4), (6, 8)]
    assert mask_spans(list("abcd"), [(3, 4, 1.0)], 3) == [(2, 4)]
    assert mask_spans(list("abcdefgh"), [(0, 1, 1.0), (3, 4, 1.0), (7, 8, 1.0)], 2) == [(0, 5), (6, 8)]
    assert masked_text(list("abcdefgh"), [(1, 4), (6, 8)]) == "a [MASK] e f [MASK]"


# ---------------------------------------------------------------- end to end on a tiny model

PROMPTS = ["you are a stupid idiot and", "shut up you damn fool , the", "i hate what they do to",
           "the water is hot and", "he said some nice word about", "what a dumb ugly thing to"]


def _tiny_bpe_model(path):
    """A tiny random Llama with a byte-level BPE tokenizer that can spell the chain exactly."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tiny_models import WORDS

    corpus = [C.training_text(p, "and the day", "you are a [MASK]", "you are a kind") for p in PROMPTS]
    corpus += [" ".join(WORDS)] * 3 + ["fucking idiot shut up , ."] * 3
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<pad>", "<s>", "</s>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.padding_side = "left"
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cmd_run(tmp_path_factory):
    """Synthesise on the tiny model, then train it with the CMD loss (shared by the tests below)."""
    from detox.cmd.synthesis import SynthesisConfig, synthesize
    from detox.cmd.trainer import CMDTrainConfig, train_cmd
    from detox.models import load_causal_lm
    from detox.scorers import load_scorer

    root = tmp_path_factory.mktemp("cmd")
    base = _tiny_bpe_model(str(root / "base"))
    scorer = load_scorer("profanity")
    scfg = SynthesisConfig(num_continuations=6, max_new_tokens=8, fill_candidates=3, chunk_size=4, batch_size=4,
                           negative_threshold=0.1)
    model = load_causal_lm(base)
    import detox.cmd.synthesis as S

    real, calls = S._synthesize_chunk, []

    def interrupted(*a, **k):  # Ctrl-C during the second chunk
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    S._synthesize_chunk = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            synthesize(PROMPTS, str(root / "synth"), model=model, scorer=scorer, cfg=scfg, progress=False)
    finally:
        S._synthesize_chunk = real
    assert len(open(root / "synth" / "records.jsonl").readlines()) == 4
    summary = synthesize(PROMPTS, str(root / "synth"), model=model, scorer=scorer, cfg=scfg, progress=False)
    # resuming the directory with other prompts or settings is refused, not mixed in
    with pytest.raises(SystemExit, match="other prompts or settings"):
        synthesize(PROMPTS[::-1], str(root / "synth"), model=model, scorer=scorer, cfg=scfg, progress=False)
    with pytest.raises(SystemExit, match="other prompts or settings"):
        synthesize(PROMPTS, str(root / "synth"), model=model, scorer=scorer, progress=False,
                   cfg=SynthesisConfig(**{**scfg.__dict__, "num_continuations": 5}))
    tcfg = CMDTrainConfig(steps=40, batch_size=4, lr=1e-2, lora=False, anchor_tokens=6, save_steps=20)
    out = train_cmd(str(root / "synth"), base, str(root / "trained"), tcfg, progress=False)
    return dict(root=root, base=base, scorer=scorer, summary=summary, out=out, tcfg=tcfg)


def test_synthesis_records_every_prompt_with_a_reason(cmd_run):
    root, s = cmd_run["root"], cmd_run["summary"]
    recs = [json.loads(l) for l in open(root / "synth" / "records.jsonl")]
    assert sorted(r["index"] for r in recs) == list(range(len(PROMPTS)))  # resumed, no duplicates
    assert s["prompts"] == len(PROMPTS) and s["kept"] + sum(s["dropped"].values()) == len(PROMPTS)
    assert s["kept"] >= 3 and s["with_negatives"] >= 1
    scorer = cmd_run["scorer"]
    for r in recs:
        if not r["kept"]:
            assert r["reason"] != "kept"
            continue
        assert r["prompt_toxicity"] > 0.5 or r["masked"] is None
        if r["masked"] is not None:
            assert C.MASK in r["masked"] and r["fill_toxicity"] <= 0.5
            assert scorer.score([r["filled"]])[0] == pytest.approx(r["fill_toxicity"])
        usable = [sc for c, sc in zip(r["continuations"], r["scores"]) if c.strip() and "#" not in c]
        assert min(usable) == pytest.approx(float(scorer.score([r["positive"]])[0]), abs=1e-4) and min(usable) <= 0.5
        assert len(r["negatives"]) <= 3
        assert all(scorer.score([n])[0] > 0.1 for n in r["negatives"])
        p = C.parse_chain(r["text"])
        assert p.generation == r["positive"].strip() and p.filled == r["filled"]
    toxic = [r for r in recs if r["prompt_toxicity"] > 0.5]
    assert toxic and all(r["masked"] is not None for r in toxic if r["kept"])


def test_collator_labels_only_after_the_marker_and_marks_the_positive(cmd_run):
    from detox.cmd.trainer import CMDCollator, load_cmd_data
    from detox.models import load_causal_lm

    rows = load_cmd_data(str(cmd_run["root"] / "synth"))
    _, tok = load_causal_lm(cmd_run["base"])
    b = CMDCollator(tok)(rows)
    for i, r in enumerate(rows):
        ids = b["input_ids"][i]
        lab = b["labels"][i]
        labelled = tok.decode(ids[lab != -100])
        assert r["text"].split(C.MARKER, 1)[1].strip().startswith(labelled.strip()[:20])
        assert C.MARKER not in labelled and "# Text:" not in labelled
        assert tok.decode(ids[b["pos_mask"][i].bool()]).strip() == r["positive"].strip()
    groups = [i for i, r in enumerate(rows) if r["negatives"]]
    assert b["cl_rows"].tolist() == groups
    assert b["neg_ids"].shape[0] == sum(len(rows[i]["negatives"]) for i in groups)
    assert tok.decode(b["neg_ids"][0][b["neg_pool"][0].bool()]).strip() == rows[groups[0]]["negatives"][0].strip()


def test_training_logs_both_losses_and_lowers_the_lm_loss(cmd_run):
    info = json.load(open(os.path.join(cmd_run["out"], "cmd_training.json")))
    hist = info["log_history"]
    steps = [h for h in hist if "lm_loss" in h]
    assert len(steps) == 40
    assert any(h["contrastive_loss"] > 0 for h in steps)
    # the optimised objective is exactly LM + 0.5 x contrastive (cmd.md), step by step (parts logged to 4 digits)
    w = info["config"]["contrastive_weight"]
    assert w == 0.5
    for h in steps:
        assert h["loss"] == pytest.approx(h["lm_loss"] + w * h["contrastive_loss"], abs=2e-3), h
    lm = [h["lm_loss"] for h in steps]
    assert sum(lm[-5:]) / 5 < 0.5 * sum(lm[:5]) / 5
    assert os.path.exists(os.path.join(cmd_run["out"], "model.safetensors"))


@pytest.mark.parametrize("guided", [False, True])
def test_the_trained_model_writes_a_chain(cmd_run, guided):
    from detox.generation.driver import Generator
    from detox.methods.cmd import CMDSettings
    from detox.models import load_causal_lm

    model = load_causal_lm(cmd_run["out"])
    gen = Generator("cmd", model=model, settings=CMDSettings(chain_tokens=60, guided=guided))
    out = gen.run_batch(PROMPTS[:3], num_samples=2, max_new_tokens=8, seed=0)
    res = out.texts
    assert out.stats["rows"] == 6 and out.stats["reached_generation"] >= 4
    assert not hasattr(gen, "last_chains") and not hasattr(gen, "chain_stats")
    for i in range(3):
        for j in range(2):
            chain = out.extras["chains"][i][j]
            p = C.parse_chain(chain)
            assert chain.startswith(C.inference_prefix(PROMPTS[i]))
            assert p.generation == res[i][j].strip()
            assert C.GENERATION not in res[i][j] and C.MARKER not in res[i][j]
            if guided:  # every step is there, the generation has no "#" and is full length
                assert p.complete and p.toxic is not None and (p.masked is not None) == p.toxic
                assert "#" not in res[i][j]
                assert len(model[1](res[i][j])["input_ids"]) >= 6


def test_the_harness_scores_only_the_generation(cmd_run):
    from detox.harness import EvalConfig, run_eval
    from detox.models import load_causal_lm

    model = load_causal_lm(cmd_run["out"])
    out = cmd_run["root"] / "eval"
    cfg = EvalConfig(methods=["cmd"], model=cmd_run["out"], prompts=None, num_samples=2, max_new_tokens=8,
                     method_settings={"cmd": {"chain_tokens": 60}})
    cfg.prompts = str(cmd_run["root"] / "prompts.txt")
    open(cfg.prompts, "w").write("\n".join(PROMPTS[:4]) + "\n")
    r = run_eval(cfg, str(out), progress=False, scorer=cmd_run["scorer"], model=model)
    row = json.loads(open(out / r["methods"]["cmd"]["runs"][0]["generations"]).readline())
    assert [C.parse_chain(c).generation for c in row["chains"]] == [c.strip() for c in row["continuations"]]
    flat = [c for l in open(out / r["methods"]["cmd"]["runs"][0]["generations"]) for c in json.loads(l)["continuations"]]
    scores = cmd_run["scorer"].score(flat)
    assert r["methods"]["cmd"]["summary"]["tp_rate"]["mean"] == pytest.approx(float((scores > 0.5).mean()))


def test_over_long_samples_are_skipped_and_reported(cmd_run, tmp_path, capsys):
    from dataclasses import replace

    from detox.cmd.trainer import load_cmd_data, split_too_long, train_cmd
    from transformers import AutoTokenizer

    data = str(cmd_run["root"] / "synth")
    rows = load_cmd_data(data)
    tok = AutoTokenizer.from_pretrained(cmd_run["base"])
    lens = sorted(len(tok(r["text"])["input_ids"]) for r in rows)
    cut = lens[len(lens) // 2]
    fit, long = split_too_long(rows, tok, cut)
    assert len(fit) + len(long) == len(rows) and long and fit
    assert all(len(tok(r["text"])["input_ids"]) > cut for r in long)
    cfg = replace(cmd_run["tcfg"], steps=1, save_steps=10, max_length=cut)
    out = train_cmd(data, cmd_run["base"], str(tmp_path / "t"), cfg, progress=False)
    assert f"skipping {len(long)} of {len(rows)} samples" in capsys.readouterr().out
    info = json.load(open(os.path.join(out, "cmd_training.json")))
    assert info["samples"] == len(fit) and info["skipped_too_long"] == [r["index"] for r in long]
    with pytest.raises(ValueError, match="longer than max_length"):
        train_cmd(data, cmd_run["base"], str(tmp_path / "u"), replace(cfg, max_length=lens[0] - 1), progress=False)


def test_training_resumes_from_a_checkpoint(cmd_run, tmp_path):
    from dataclasses import replace

    from detox.cmd.trainer import train_cmd
    from transformers import AutoModelForCausalLM

    cfg = replace(cmd_run["tcfg"], steps=6, save_steps=3, lora=True, lora_target_modules=("q_proj", "v_proj"))
    data = str(cmd_run["root"] / "synth")
    full = train_cmd(data, cmd_run["base"], str(tmp_path / "full"), cfg, progress=False)
    assert train_cmd(data, cmd_run["base"], str(tmp_path / "split"), cfg, progress=False, stop_after=3) is None
    assert os.path.isdir(tmp_path / "split" / "checkpoints" / "checkpoint-3")
    # a kill during the next save leaves a checkpoint folder without its trainer_state.json
    torn = tmp_path / "split" / "checkpoints" / "checkpoint-5"
    torn.mkdir()
    (torn / "adapter_config.json").write_text("{")
    split = train_cmd(data, cmd_run["base"], str(tmp_path / "split"), cfg, progress=False)
    hist = json.load(open(os.path.join(split, "cmd_training.json")))["log_history"]
    ref = json.load(open(os.path.join(full, "cmd_training.json")))["log_history"]
    assert [h["step"] for h in hist if "lm_loss" in h] == [1, 2, 3, 4, 5, 6]  # history kept, no step twice
    assert [h["lm_loss"] for h in hist if "lm_loss" in h] == pytest.approx([h["lm_loss"] for h in ref if "lm_loss" in h],
                                                                          abs=2e-3)
    a = AutoModelForCausalLM.from_pretrained(full).state_dict()
    b = AutoModelForCausalLM.from_pretrained(split).state_dict()
    base = AutoModelForCausalLM.from_pretrained(cmd_run["base"]).state_dict()
    assert any(not torch.equal(a[k], base[k]) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k, atol=1e-5, rtol=1e-4)


def test_cli_generate_cmd_writes_the_chain_and_the_generation(cmd_run, tmp_path, capsys):
    from detox.cli import main

    out = tmp_path / "gen.jsonl"
    assert main(["generate", "--method", "cmd", "--model", cmd_run["out"], "--prompt", PROMPTS[0], "--num-samples",
                 "2", "--max-new-tokens", "6", "--cmd-chain-tokens", "60", "--out", str(out)]) == 0
    rows = [json.loads(l) for l in open(out)]
    assert len(rows) == 2
    for r in rows:
        assert r["chain"].startswith(C.inference_prefix(PROMPTS[0])) and C.GENERATION in r["chain"]
        assert r["continuation"].strip() == C.parse_chain(r["chain"]).generation
        assert r["settings"]["method_settings"]["chain_tokens"] == 60


def test_cli_help_and_bad_data(tmp_path, capsys):
    from detox.cli import main

    for sub in ("cmd-synthesize", "cmd-train"):
        with pytest.raises(SystemExit) as e:
            main([sub, "--help"])
        assert e.value.code == 0
    assert "--contrastive-weight" in capsys.readouterr().out
    from detox.cmd.trainer import load_cmd_data

    with pytest.raises(FileNotFoundError, match="cmd-synthesize"):
        load_cmd_data(str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"text": "hello", "positive": "x"}\n')
    with pytest.raises(ValueError, match="not a CMD chain"):
        load_cmd_data(str(tmp_path))


def test_lora_targets_follow_the_architecture_and_can_be_given():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from detox.cmd.trainer import lora_targets
    from detox.errors import UserError

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    assert lora_targets(gpt2) == ["c_attn"]  # the authors' CMD code
    assert lora_targets(llama) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora_targets(gpt2, ("c_attn", "c_proj")) == ["c_attn", "c_proj"]
    assert lora_targets(llama, "q_proj") == ["q_proj"]
    with pytest.raises(UserError, match=r"--lora-targets q_proj: no such module in GPT2LMHeadModel; its linear "
                                        r"modules are c_attn, c_proj, c_fc"):
        lora_targets(gpt2, ["q_proj"])


def test_cmd_lora_training_on_a_tiny_gpt2(cmd_run, tmp_path):
    """GPT-2, the authors' model: LoRA lands on c_attn (peft failed on the Llama names before)."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from detox.cmd.trainer import train_cmd

    tok = AutoTokenizer.from_pretrained(cmd_run["base"])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                       pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = replace(cmd_run["tcfg"], steps=2, save_steps=10, lora=True, lr=5e-2)
    out = train_cmd(str(cmd_run["root"] / "synth"), (model, tok), str(tmp_path / "gpt2"), cfg, progress=False)
    rec = json.load(open(os.path.join(out, "cmd_training.json")))
    assert rec["config"]["lora_target_modules"] == ["c_attn"]
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = {k for k in base if k in got and not torch.equal(got[k], base[k])}
    assert changed and all(".attn.c_attn." in k for k in changed)  # merged LoRA: only c_attn moved
