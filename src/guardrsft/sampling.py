"""Sampled decoding that does not depend on the batch: temperature, then top-p (nucleus).

Hard-sample mining (docs/HSDPO.md) draws k answers per (item, policy) and caches each under a
key that holds its seed and sample index, so an answer must come out the same whichever other
prompts share its batch, on whichever backend (transformers' `generate` or the slot engine,
guardrsft.fastgen) and after a resume. A per-row torch.Generator is batch-independent but
costs one kernel launch per row and per step, and the slot engine cannot carry generators
through its slots. Here each draw is instead a pure function of (row seed, step): one uniform
number from a 32-bit integer hash (murmur3's finalizer, in int64 arithmetic that never
overflows), turned into a token by the inverse CDF of the row's sorted, top-p-cut
distribution. Elementwise over rows, so any grouping of rows gives the same picks.
"""
from __future__ import annotations

M32 = 0xFFFFFFFF


def seed32(key: str) -> int:
    """A row seed from a sample's hex cache key (its first 32 bits)."""
    return int(key[:8], 16)


def _mul32(h, c: int):
    """(h * c) mod 2**32 for h in [0, 2**32): split c in 16-bit halves so no product passes 2**48."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & M32


def _fmix32(h):
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def uniform(seeds, steps):
    """One float32 in [0, 1) per row: seeds and steps are int64 tensors (seeds in [0, 2**32))."""
    h = _fmix32(_fmix32(seeds & M32) ^ _fmix32((steps + 0x9E3779B9) & M32))
    return (h >> 8).float() * 2.0 ** -24  # 24 bits: exact in float32


def pick(logits, seeds, steps, temperature: float, top_p: float):
    """The next token of each row: logits [rows, vocab]; seeds, steps [rows] (int64, same device)."""
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sp, si = probs.sort(dim=-1, descending=True)
    if top_p < 1:
        # keep the smallest prefix whose mass reaches top_p (the token crossing it included)
        sp = sp.masked_fill(sp.cumsum(-1) - sp >= top_p, 0.0)
    cum = sp.cumsum(-1)
    target = uniform(seeds, steps) * cum[:, -1]
    j = (cum <= target[:, None]).sum(-1)  # the first position whose cumulative mass passes target
    j = torch.minimum(j, (sp > 0).sum(-1) - 1)  # rounding can never pick a token top-p removed
    return si.gather(-1, j[:, None]).squeeze(-1)
