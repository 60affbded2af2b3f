"""Tiny random-weight causal LMs with a real (word-level) tokenizer, saved as HF directories."""

from __future__ import annotations

import os

import torch

from bench.common import WORDS, word_tokenizer  # the benchmarks' random-weight models use the same tokenizer


def tiny_tokenizer():
    """A word-level tokenizer over ``WORDS`` (left padding)."""
    return word_tokenizer()


def tiny_llama_dir(path: str, seed: int, vocab_size: int | None = None) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      initializer_range=0.3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
