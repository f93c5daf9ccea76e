"""guardrsft.sampling: draws that depend on (seed, step) only, with the right distribution."""
import torch

from guardrsft.sampling import _mul32, pick, seed32, uniform


def test_mul32_is_multiplication_mod_2_32():
    h = torch.tensor([0, 1, 2**32 - 1, 123456789, 3735928559], dtype=torch.long)
    for c in (0x85EBCA6B, 0xC2B2AE35, 1, 2**32 - 1):
        assert _mul32(h, c).tolist() == [(x * c) % 2**32 for x in h.tolist()]


def test_uniform_is_a_function_of_seed_and_step_only():
    seeds = torch.arange(4000, dtype=torch.long) * 2654435761 % 2**32
    steps = torch.arange(4000, dtype=torch.long) % 7
    u = uniform(seeds, steps)
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.02 and abs(u.std().item() - 12 ** -0.5) < 0.02
    # elementwise: a row alone, or in another order, draws the same number
    perm = torch.randperm(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(uniform(seeds[perm], steps[perm]), u[perm])
    assert torch.equal(uniform(seeds[5:6], steps[5:6]), u[5:6])
    # the next step or the next seed gives another number
    assert (uniform(seeds, steps + 1) != u).float().mean() > 0.99
    assert seed32("ffffffff0123") == 2**32 - 1 and seed32("0000000a") == 10


def test_pick_follows_temperature_and_top_p():
    n = 20000
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9]])).expand(n, 4)
    seeds, steps = torch.arange(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    freq = torch.bincount(pick(logits, seeds, steps, 1.0, 1.0), minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015), freq
    # top-p 0.6: the smallest prefix reaching 0.6 is {0, 1}, renormalized to 0.625 / 0.375
    freq = torch.bincount(pick(logits, seeds, steps, 1.0, 0.6), minlength=4).float() / n
    assert freq[2:].sum() == 0 and abs(freq[0].item() - 0.625) < 0.015, freq
    # a low temperature is greedy
    assert (pick(logits, seeds, steps, 0.01, 1.0) == 0).all()
    # the same (seed, step) picks the same token whatever the other rows are
    rows = pick(logits[:50], seeds[:50], steps[:50], 1.0, 0.95)
    assert torch.equal(rows[10:20], pick(logits[10:20], seeds[10:20], steps[10:20], 1.0, 0.95))
