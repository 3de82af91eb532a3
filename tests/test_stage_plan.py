"""How a pipeline group splits layers (coserve.elastic.stage_plan), against every split of small models:
the most pages any split holds, and the cheapest slowest stage among the splits that hold a target."""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from coserve.elastic.stage_plan import StageCosts, max_pages, plan_ranges
from coserve.placement.shapes import model_spec

LLAMA = model_spec("llama-7b", "llama-7b")


def _splits(num_layers: int, size: int):
    for cuts in itertools.combinations(range(1, num_layers), size - 1):
        bounds = (0, *cuts, num_layers)
        yield [b - a for a, b in zip(bounds[:-1], bounds[1:])]


def _reference(case: dict, counts: list[int]) -> tuple[int, int]:
    """(pages the group holds, its slowest stage's cost), worked out from first principles: every
    member keeps the final norm, the first the embedding, the last the head (the embedding again when
    tied), every page spans each member's layers, and the last stage runs the head's matmul."""
    pages, slowest = [], 0
    for i, k in enumerate(counts):
        parts = case["kept"]
        if i == 0:
            parts += case["embedding"]
        if i == len(counts) - 1:
            parts += case["embedding"] if case["tied"] else case["head"]
        room = case["budget"] - k * case["layer_bytes"] - parts
        pages.append(room // (k * case["page_bytes"]) if room > 0 else 0)
        cost = k * case["layer_cost"] + (case["head_cost"] if i == len(counts) - 1 else 0)
        slowest = max(slowest, cost)
    return min(pages), slowest


def _costs(case: dict) -> StageCosts:
    spec = dataclasses.replace(LLAMA, num_layers=case["num_layers"], tie_word_embeddings=case["tied"],
                               vocab_size=case["vocab"], hidden_size=4096)
    assert spec.layer_params() == case["layer_cost"] and spec.vocab_size * spec.hidden_size == case["head_cost"]
    parts = {"embedding": case["embedding"]} | ({} if case["tied"] else {"head": case["head"]})
    return StageCosts(spec, case["budget"], case["layer_bytes"], case["page_bytes"], parts, case["kept"])


@st.composite
def _cases(draw) -> dict:
    num_layers = draw(st.integers(2, 9))
    vocab = draw(st.integers(1, 200_000))
    tied = draw(st.booleans())
    layer_bytes = draw(st.integers(50, 400))
    return {"num_layers": num_layers, "size": draw(st.integers(2, min(4, num_layers))), "tied": tied,
            "vocab": vocab, "layer_cost": LLAMA.layer_params(), "head_cost": vocab * 4096,
            "layer_bytes": layer_bytes, "page_bytes": draw(st.integers(1, 20)),
            "embedding": draw(st.integers(0, 800)), "head": draw(st.integers(0, 800)), "kept": draw(st.integers(0, 50)),
            "budget": draw(st.integers(layer_bytes, 4000)), "wanted": draw(st.integers(1, 400))}


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_the_plan_matches_every_split_of_small_models(case):
    costs, size = _costs(case), case["size"]
    outcomes = [_reference(case, counts) for counts in _splits(case["num_layers"], size)]
    best_pages = max(pages for pages, _ in outcomes)
    assert max_pages(costs, size) == best_pages
    if best_pages == 0:
        return
    target = min(case["wanted"], best_pages)
    ranges = plan_ranges(costs, size, case["wanted"])
    assert ranges[0][0] == 0 and ranges[-1][1] == case["num_layers"]
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])) and all(e > s for s, e in ranges)
    pages, slowest = _reference(case, [e - s for s, e in ranges])
    assert pages >= target
    assert slowest == min(cost for p, cost in outcomes if p >= target)


SMOL_LIKE = dataclasses.replace(LLAMA, num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
                                intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)


def test_smollm2s_head_weighs_eight_layers_so_its_stage_gets_fewer():
    """SmolLM2-135M: 3.54M weights per layer, a tied 28.3M-weight head. With pages to spare, the
    split that evens the stages is 19 + (11 layers and the head); when pages are what is short, both
    members hold the embedding, so the even 15 + 15 holds the most."""
    layer_bytes, embedding = SMOL_LIKE.layer_params() * 4, SMOL_LIKE.embedding_params() * 4
    page = 2 * 16 * SMOL_LIKE.kv_size * 4
    costs = StageCosts(SMOL_LIKE, 2 * 30 * layer_bytes + embedding, layer_bytes, page, {"embedding": embedding})
    assert plan_ranges(costs, 2, pages_wanted=1) == [(0, 19), (19, 30)]
    assert plan_ranges(costs, 2, pages_wanted=10**9) == [(0, 15), (15, 30)]
    assert max_pages(costs, 2) == (costs.budget - 15 * layer_bytes - embedding) // (15 * page)
