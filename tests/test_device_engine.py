"""Models sharing a device's pages and lanes (worker processes) under each multiplexing policy."""

from __future__ import annotations

import os
import signal

import pytest

from coserve import SamplingParams
from coserve.engine.config import EngineConfig
from coserve.engine.device_engine import DeviceEngine
from coserve.engine.device_pool import DeviceKVPool, PageLayout
from coserve.engine.llm_engine import LLMEngine
from coserve.engine.multiplexer import ModelLoad, Multiplexer
from coserve.errors import ConfigError

REAL = "smollm2-135m-instruct"
CONFIGS = {
    "real": dict(model=REAL),
    "tiny": dict(model="random:llama-tiny-49k", tokenizer=REAL, seed=1),
    "small": dict(model="random:llama-small-49k", tokenizer=REAL, seed=2),
}
PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time"]
PARAMS = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


def _engines(names: list[str], budget_mb: int = 64) -> dict[str, LLMEngine]:
    configs = {n: EngineConfig(name=n, **CONFIGS[n]) for n in names}
    pool = DeviceKVPool(PageLayout.for_configs(list(configs.values()), budget_mb << 20))
    return {n: LLMEngine(c, pool=pool) for n, c in configs.items()}


def _run(driver, engines: dict[str, LLMEngine]) -> dict[str, list[int]]:
    for name, engine in engines.items():
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(prompt, PARAMS, request_id=f"{name}-{i}")
    done = {}
    while driver.has_unfinished_requests():
        for output in driver.step():
            if output.finished:
                done[output.request_id] = output
    return done


class _Sequential:
    """Reference: each model's engine stepped in-process, one after the other."""

    def __init__(self, engines):
        self.engines = engines

    def has_unfinished_requests(self):
        return any(e.has_unfinished_requests() for e in self.engines.values())

    def step(self):
        return [o for e in self.engines.values() for o in e.step()]


@pytest.fixture(scope="module")
def reference() -> dict[str, list[int]]:
    engines = _engines(list(CONFIGS))
    return {rid: o.outputs[0].token_ids for rid, o in _run(_Sequential(engines), engines).items()}


@pytest.mark.parametrize("policy,names,lanes", [("mux", list(CONFIGS), 2), ("temporal", list(CONFIGS), 1),
                                                ("spatial", ["real", "small"], 2)])
def test_policies_serve_everything_and_match_the_in_process_engine(reference, policy, names, lanes):
    engines = _engines(names)
    device = DeviceEngine(engines, policy, lanes)
    try:
        done = _run(device, engines)
    finally:
        device.close()
    assert {rid: o.outputs[0].token_ids for rid, o in done.items()} == {
        rid: tokens for rid, tokens in reference.items() if rid.split("-")[0] in names}
    pool = next(iter(engines.values())).kv.pool
    assert pool.num_free_blocks == pool.num_blocks


def test_a_dead_lane_fails_its_batch_and_the_device_keeps_serving():
    engines = _engines(["real", "tiny"])
    device = DeviceEngine(engines, "mux", 2)
    try:
        for name, engine in engines.items():
            engine.add_request("Tell me a long story", SamplingParams(max_tokens=40, ignore_eos=True),
                               request_id=f"{name}-long")
        device.dispatch()  # fill both lanes, without waiting for either
        assert len(device.in_flight) == 2
        victim = device.executor.lanes[0]
        victim_model = device.in_flight[0].model
        os.kill(victim.process.pid, signal.SIGKILL)
        finished = {}
        while device.has_unfinished_requests():
            for output in device.step():
                if output.finished:
                    finished[output.request_id] = output
        assert "died" in finished[f"{victim_model}-long"].error
        survivor = next(n for n in engines if n != victim_model)
        assert finished[f"{survivor}-long"].error is None
        assert len(finished[f"{survivor}-long"].outputs[0].token_ids) == 40
        assert device.executor.lanes[0].alive  # restarted
        again = _run(device, {victim_model: engines[victim_model]})
        assert all(o.error is None for o in again.values())
        pool = engines["real"].kv.pool
        assert pool.num_free_blocks == pool.num_blocks
    finally:
        device.close()


def test_multiplexer_orders_and_bad_configs():
    loads = [ModelLoad("a", False, True, 3.0), ModelLoad("b", True, True, 5.0), ModelLoad("c", True, True, 1.0)]
    mux = Multiplexer("mux", ["a", "b", "c"], 2)
    assert [mux.pick(0, loads), mux.pick(1, loads), mux.pick(0, loads)] == ["b", "c", "b"]  # prefill first
    assert Multiplexer("temporal", ["a", "b", "c"], 2).pick(0, loads) == "c"  # oldest request first
    spatial = Multiplexer("spatial", ["a", "b"], 2)
    assert spatial.pick(0, loads[:2]) == "a" and spatial.pick(1, loads[:2]) == "b"
    for args in [("fastest", ["a"], 1), ("mux", ["a"], 0), ("spatial", ["a", "b", "c"], 2)]:
        with pytest.raises(ConfigError):
            Multiplexer(*args)
    from coserve.engine.device_config import DeviceConfig

    for fields in [{"num_lanes": True}, {"memory_budget_bytes": "1GB"}, {"memory_budget_bytes": float("nan")},
                   {"kv_quotas": {"a": float("nan")}}, {"kv_quotas": {"a": "half"}},
                   {"lane_cores": [[0], [1]], "policy": "temporal"}]:  # temporal's one lane: core 1 would idle
        with pytest.raises(ConfigError, match=next(iter(fields))):
            DeviceConfig(**fields)


@pytest.mark.parametrize("wide", [False, True])
def test_one_models_batch_spreads_over_idle_lanes_and_still_matches(reference, wide):
    """Split over both lanes, or (wide) whole on the worker over both lanes' cores, which keeps
    both lanes from other models until it is back."""
    engines = _engines(["real"])
    launched = []
    device = DeviceEngine(engines, "mux", 2, wide_lane=wide, on_launch=lambda model, lanes, out: launched.append(lanes))
    try:
        for i, prompt in enumerate(PROMPTS):
            engines["real"].add_request(prompt, PARAMS, request_id=f"real-{i}")
        done = {}
        device.dispatch()
        assert launched == [[2] if wide else [0, 1]]
        assert sorted(device.in_flight) == ([0, 1, 2] if wide else [0, 1])
        assert len({id(flight) for flight in device.in_flight.values()}) == 1  # one batch
        if wide:
            assert device.executor.lanes[2].cores == sorted({*device.executor.lanes[0].cores,
                                                             *device.executor.lanes[1].cores})
        while device.has_unfinished_requests():
            done.update({o.request_id: o for o in device.step() if o.finished})
        assert not device.in_flight
    finally:
        device.close()
    assert {rid: o.outputs[0].token_ids for rid, o in done.items()} == {
        rid: tokens for rid, tokens in reference.items() if rid.startswith("real-")}


def test_a_dead_wide_lane_fails_its_batch_frees_the_lanes_it_held_and_is_restarted(reference):
    engines = _engines(["real"])
    device = DeviceEngine(engines, "mux", 2)
    try:
        for i, prompt in enumerate(PROMPTS):
            engines["real"].add_request(prompt, SamplingParams(max_tokens=40, ignore_eos=True), request_id=f"long-{i}")
        device.dispatch()
        wide = device.executor.wide_lane
        assert sorted(device.in_flight) == [0, 1, wide]
        os.kill(device.executor.lanes[wide].process.pid, signal.SIGKILL)
        failed = {}
        while device.has_unfinished_requests():
            failed.update({o.request_id: o for o in device.step() if o.finished})
        assert sorted(failed) == [f"long-{i}" for i in range(len(PROMPTS))]
        assert all("died" in output.error for output in failed.values())
        assert not device.in_flight and device.executor.lanes[wide].alive  # held lanes free, wide lane restarted
        pool = engines["real"].kv.pool
        assert pool.num_free_blocks == pool.num_blocks
        again = _run(device, engines)
        assert {rid: o.outputs[0].token_ids for rid, o in again.items()} == {
            rid: tokens for rid, tokens in reference.items() if rid.startswith("real-")}
    finally:
        device.close()


def test_split_batch_balances_tokens():
    from coserve.engine.device_engine import split_batch
    from coserve.engine.scheduler import ScheduledRequest

    items = [ScheduledRequest(object(), n) for n in (7, 5, 4, 1, 1, 1, 1)]
    parts = split_batch(items, 2)
    assert sorted(sum(i.num_new_tokens for i in part) for part in parts) == [10, 10]
    assert len(split_batch(items[:1], 3)) == 1  # no empty parts
