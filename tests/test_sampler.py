"""Sampler against brute-force references: top-k/top-p support sets and categorical frequencies."""

import torch

from coserve.execution.sampler import Sampler, _apply_top_k_top_p
from coserve.sampling_params import SamplingParams


def _reference_support(logits: torch.Tensor, k: int, p: float) -> set[int]:
    order = sorted(range(len(logits)), key=lambda i: -float(logits[i]))
    if k > 0:
        order = order[:k]
    probs = torch.softmax(logits[order], dim=0)
    kept, mass = [], 0.0
    for index, prob in zip(order, probs.tolist()):
        if mass >= p:
            break
        kept.append(index)
        mass += prob
    return set(kept)


def test_top_k_top_p_support_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        logits = torch.randn(4, 30, generator=gen) * 3
        ks = [int(torch.randint(1, 31, (1,), generator=gen)) for _ in range(4)]
        ps = [float(torch.rand(1, generator=gen)) * 0.99 + 0.01 for _ in range(4)]
        filtered = _apply_top_k_top_p(logits, ks, ps)
        for row in range(4):
            support = set(torch.nonzero(torch.isfinite(filtered[row])).flatten().tolist())
            assert support == _reference_support(logits[row], ks[row], ps[row]), (trial, row)


def test_greedy_is_argmax():
    logits = torch.randn(3, 50)
    tokens = Sampler()(logits, ["a", "b", "c"], [SamplingParams(temperature=0)] * 3)
    assert tokens == logits.argmax(-1).tolist()


def test_sampling_frequencies_follow_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    params = SamplingParams(temperature=0.7)
    sampler = Sampler(seed=1)
    counts = torch.zeros(4)
    draws = 6000
    for _ in range(draws):
        counts[sampler(logits, ["r"], [params])[0]] += 1
    expected = torch.softmax(logits[0] / 0.7, dim=0)
    assert torch.allclose(counts / draws, expected, atol=0.02)


def test_per_request_seed_reproduces_and_ignores_batch_neighbours():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 100, generator=gen)
    seeded = SamplingParams(temperature=1.0, seed=42)
    first = [Sampler(seed=0)(logits[:1], ["x"], [seeded])[0] for _ in range(1)]
    sampler = Sampler(seed=99)
    alone = [sampler(logits[:1], ["x"], [seeded])[0] for _ in range(5)]
    sampler2 = Sampler(seed=7)
    batched = [sampler2(logits, ["x", "y"], [seeded, SamplingParams(temperature=1.0)])[0] for _ in range(5)]
    assert alone == batched and alone[0] == first[0]
