"""Per-row reproducible sampling inside ``generate`` (no host sync, no loop over rows).

Each row carries its own 32-bit seed; at generation step ``t`` the noise for token ``v`` is a
counter-based hash of (row seed, t, v) turned into Gumbel noise, and ``argmax(scores/T + g)``
is an exact sample from the (top-p filtered) softmax at temperature ``T``. So a candidate depends
only on its text's key and its own index, never on which other texts share the batch, the batch
size, the worker or a restart. Used with ``do_sample=False`` (generate's argmax picks the sample).
"""

from __future__ import annotations

import math

import torch
from transformers import LogitsProcessor

from ..generation.processors import top_p_filter

M32 = 0xFFFFFFFF


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding 32-bit values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def _fmix32_int(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def hash32(*parts: int) -> int:
    """A stable 32-bit hash of integers (Python side, for row seeds)."""
    h = 0x9E3779B9
    for p in parts:
        h = _fmix32_int(((h ^ (int(p) & M32)) * 0x01000193) & M32)
    return h


def gumbel_noise(row_seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    base = fmix32((row_seeds.long() + (step * 0x9E3779B9)) & M32)  # [R]
    tok = (torch.arange(vocab, device=row_seeds.device, dtype=torch.long) * 0x27D4EB2D) & M32
    h = fmix32(base[:, None] ^ tok[None, :])
    u = (h.double() + 0.5) * (1.0 / 4294967296.0)
    return (-torch.log(-torch.log(u))).float()


class RowSeededSampler(LogitsProcessor):
    """Temperature (per row), top-p, then Gumbel noise seeded per row: put it LAST in the list."""

    def __init__(self, row_seeds: torch.Tensor, temperatures: torch.Tensor, prompt_length: int, top_p: float = 1.0):
        self.row_seeds = row_seeds.long()
        self.temperatures = temperatures.float()
        self.prompt_length = int(prompt_length)
        self.top_p = float(top_p)

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        s = scores.float() / self.temperatures.to(scores.device)[:, None]
        if self.top_p < 1.0:
            s = top_p_filter(s, self.top_p)
        g = gumbel_noise(self.row_seeds.to(scores.device), step, s.shape[-1])
        return torch.where(torch.isfinite(s), s + g, torch.full_like(s, -math.inf))
