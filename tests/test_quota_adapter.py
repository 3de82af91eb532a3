"""ADBS quota adaptation and the SLO-aware lane order, as plain decisions on hand-made loads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coserve.engine.model_load import ModelLoad
from coserve.engine.multiplexer import Multiplexer
from coserve.engine.quota_adapter import adapt_quotas, split_pages


def load(name, used=0, needed=0, pressure=0.0, arrival=0.0, prefill=False):
    return ModelLoad(name, prefill, needed > 0 or used > 0, arrival, used_pages=used, needed_pages=needed,
                     slo_pressure=pressure)


def test_held_pages_stay_needs_are_met_and_the_rest_follows_demand():
    loads = [load("a", used=10, needed=2), load("b", used=0, needed=5), load("c")]
    quotas = adapt_quotas(loads, 40, {"a": 3.0, "b": 1.0, "c": 0.0})
    # 40 - 10 held - 7 needed = 23 spare pages, split 3:1:0 -> 17.25 / 5.75 / 0 (largest remainder)
    assert quotas == {"a": 10 + 2 + 17, "b": 5 + 6, "c": 0}


@given(st.integers(0, 50), st.integers(0, 50), st.floats(0, 5), st.one_of(st.none(), st.integers(0, 60)))
def test_a_lone_model_may_hold_the_whole_pool_up_to_its_cap(used, needed, pressure, cap):
    pages = 50
    limits = {} if cap is None else {"only": max(cap, used)}  # a cap never sits below what is held
    quotas = adapt_quotas([load("only", used, needed, pressure)], pages, {"only": 1.0}, limits)
    assert quotas == {"only": min(pages, limits.get("only", pages))}


def test_a_model_missing_its_slo_gets_scarce_pages_first():
    loads = [load("meeting", needed=6, pressure=0.4, arrival=1.0), load("missing", needed=6, pressure=2.5,
                                                                      arrival=9.0)]
    quotas = adapt_quotas(loads, 8, {"meeting": 1.0, "missing": 1.0})
    assert quotas == {"missing": 6, "meeting": 2}
    # equal pressure: the older queue goes first
    tied = [load("young", needed=6, arrival=5.0), load("old", needed=6, arrival=1.0)]
    assert adapt_quotas(tied, 8, {})["old"] == 6


def test_fixed_limits_are_never_exceeded_and_their_spare_goes_to_others():
    loads = [load("capped", needed=9), load("free", needed=1)]
    quotas = adapt_quotas(loads, 20, {"capped": 10.0, "free": 1.0}, limits={"capped": 4})
    assert quotas == {"capped": 4, "free": 16}


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64).flatmap(lambda pages: st.tuples(
    st.just(pages),
    st.lists(st.tuples(st.integers(0, pages), st.integers(0, 30), st.floats(0, 5), st.floats(0, 10)),
             min_size=1, max_size=5))))
def test_quotas_always_cover_holdings_and_never_exceed_the_pool(case):
    pages, raw = case
    loads, held = [], 0
    for i, (used, needed, pressure, _) in enumerate(raw):
        used = min(used, pages - held)  # holdings are pages that exist
        held += used
        loads.append(load(f"m{i}", used, needed, pressure))
    demand = {f"m{i}": d for i, (_, _, _, d) in enumerate(raw)}
    quotas = adapt_quotas(loads, pages, demand)
    assert sum(quotas.values()) == pages  # every page belongs to someone: none idles unassigned
    for item in loads:
        assert quotas[item.name] >= item.used_pages
    spare = pages - held
    if spare >= sum(item.needed_pages for item in loads):
        assert all(quotas[item.name] - item.used_pages >= item.needed_pages for item in loads)


def test_split_pages_is_proportional_and_exact():
    assert split_pages(10, {"a": 1.0, "b": 1.0, "c": 2.0}) == {"a": 2, "b": 3, "c": 5} or \
        split_pages(10, {"a": 1.0, "b": 1.0, "c": 2.0}) == {"a": 3, "b": 2, "c": 5}
    assert split_pages(5, {"a": 0.0, "b": 0.0}) in ({"a": 3, "b": 2}, {"a": 2, "b": 3})
    assert split_pages(0, {"a": 1.0}) == {"a": 0}


def test_lane_time_goes_to_a_model_missing_its_slo_before_prefill_round_robin():
    mux = Multiplexer("mux", ["a", "b", "c"], 2)
    loads = [load("a", needed=1, prefill=True, pressure=0.2), load("b", used=3, pressure=1.7),
             load("c", used=3, pressure=1.2)]
    assert mux.pick(0, loads) == "b"  # decode-only, but furthest past its target
    meeting = [load("a", needed=1, prefill=True, pressure=0.2), load("b", used=3, pressure=0.9)]
    assert mux.pick(0, meeting) == "a"  # nobody missing: MuxServe's prefill-first order
