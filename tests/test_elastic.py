"""Elastic memory across replicas: whatever the overload strategy does (drop layers and pipeline,
swap, migrate, recompute), every request's greedy output equals the same model served plainly, and
after the burst every weight byte and every page is back."""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import time

import pytest

from coserve.elastic import ElasticCluster, ElasticConfig
from coserve.elastic.drop_plan import ReplicaDemand, plan_groups
from coserve.elastic.replica import param_bytes
from coserve.engine.config import EngineConfig
from coserve.engine.llm_engine import LLMEngine
from coserve.errors import ConfigError, ContextLengthError, InvalidRequestError, UnknownModelError
from coserve.sampling_params import SamplingParams

GREEDY = SamplingParams(max_tokens=24, ignore_eos=True, temperature=0)


def _prompts(count: int, vocab: int) -> list[list[int]]:
    # 44-token prompts (three pages) growing to 68 tokens (five): two requests outgrow eight pages
    return [[(7 * i + 13 * j + 1) % vocab for j in range(44)] for i in range(count)]


def _reference(config: EngineConfig, prompts: list[list[int]]) -> tuple[dict[str, list[int]], int]:
    engine = LLMEngine(config)
    for i, prompt in enumerate(prompts):
        engine.add_request(prompt, GREEDY, str(i))
    outputs = _drain(engine)
    return outputs, engine.weight_bytes


def _drain(engine, outputs=None, on_step=lambda: None) -> dict[str, list[int]]:
    outputs = {} if outputs is None else outputs
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                outputs[output.request_id] = output.outputs[0].token_ids
        on_step()
    return outputs


def _budget(weight_bytes: int, config: EngineConfig, num_layers: int, kv_size: int, pages: int) -> int:
    return weight_bytes + pages * num_layers * 2 * config.block_size * kv_size * 4


def _burst(cluster: ElasticCluster, prompts: list[list[int]], on_step=lambda: None) -> dict[str, list[int]]:
    """A few requests start decoding (their KV exists when the burst hits), then the rest arrive."""
    for i in range(2):
        cluster.add_request(prompts[i], GREEDY, str(i))
    outputs: dict[str, list[int]] = {}
    for _ in range(6):
        for output in cluster.step():
            if output.finished:
                outputs[output.request_id] = output.outputs[0].token_ids
    for i in range(2, len(prompts)):
        cluster.add_request(prompts[i], GREEDY, str(i))
    _drain(cluster, outputs, on_step)
    idle_until_restored(cluster)
    return outputs


def idle_until_restored(cluster: ElasticCluster, seconds: float = 30.0) -> None:
    """Idle rounds until no group is left: a group restores once its demand has fallen and its
    weights have crossed the (fast, by default) peer link."""
    deadline = time.monotonic() + seconds
    cluster.step()
    while (cluster.groups or cluster.repairs) and time.monotonic() < deadline:
        cluster.step()


def _assert_all_back(cluster: ElasticCluster, checksums: list[str]) -> None:
    assert not cluster.groups
    assert [r.weights_checksum() for r in cluster.replicas] == checksums
    assert all(r.is_whole() for r in cluster.replicas)
    assert all(r.held_layers() == list(range(r.spec.num_layers)) for r in cluster.replicas)
    assert cluster._pool.num_free_blocks == cluster._pool.num_blocks


def test_drop_exchange_and_restore_keep_outputs_and_give_everything_back():
    config = EngineConfig(model="smollm2-135m-instruct", max_num_seqs=8, max_num_batched_tokens=256)
    prompts = _prompts(8, 49152)
    want, weight_bytes = _reference(config, prompts)
    budget = _budget(weight_bytes, config, 30, 192, pages=8)
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget)) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        seen: list = []
        got = _burst(cluster, prompts, lambda: _check_stages(cluster, seen))
        assert got == want
        # SmolLM2's head is its embedding: the first member keeps it to embed, the last to end
        assert seen and all(parts == [{"embedding"}, {"embedding"}] for parts in seen)
        (_, members, exchanged), = cluster.events.drops
        assert len(members) == 2 and exchanged > 0  # requests were mid-decode: their KV was exchanged
        assert len(cluster.events.restores) == 1
        _assert_all_back(cluster, checksums)


def test_group_members_hold_only_what_their_stages_use_and_the_budget_counts_real_bytes(tiny):
    """llama-tiny's head is untied: the first stage keeps the embedding, the last the head. While
    grouped, what each member's budget counts as held is what its model really holds."""
    config, prompts, want, budget = tiny
    seen: list = []
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget)) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        assert _burst(cluster, prompts, lambda: _check_stages(cluster, seen)) == want
        _assert_all_back(cluster, checksums)
    assert [{"embedding"}, {"head"}] in seen


def _check_stages(cluster: ElasticCluster, seen: list) -> None:
    """Every grouped member holds its stage's layers and end parts, no more, and the bytes its
    budget counts as held are the bytes its model holds. Records each group's parts in `seen`."""
    for group in {id(g): g for g in cluster.groups.values()}.values():
        seen.append([m.held_parts() for m in group.members])
        for member, start, end in group.stages:
            assert member.held_parts() == member.spec.end_parts(start, end)
            assert member.held_layers() == list(range(start, end))
            assert member.weight_bytes_held() == param_bytes(member.model)


@pytest.mark.parametrize("strategy", ["recompute", "swap", "migrate", "drop", "auto"])
def test_every_strategy_keeps_outputs(tiny, strategy):
    config, prompts, want, budget = tiny
    with ElasticCluster(config, ElasticConfig(strategy, memory_budget_bytes=budget)) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        assert _burst(cluster, prompts) == want
        events = cluster.events
        if strategy == "swap":
            assert events.swaps_out > 0 and events.swaps_in == events.swaps_out
        if strategy == "drop":
            assert events.drops and events.restores
        if strategy == "auto":
            assert events.drops or events.swaps_out or events.spare_moves
            assert events.swaps_in == events.swaps_out
        _assert_all_back(cluster, checksums)


def test_requests_recomputed_at_a_drop_instead_of_exchanged_keep_their_outputs(tiny):
    """Over a 100 kB/s peer link a request's KV for half of llama-tiny's layers takes 0.65 s to cross,
    far longer than re-prefilling it, so with the choice on the drop recomputes the running requests
    (re-prefilled through the pipeline) and their greedy outputs stay the same."""
    config, prompts, want, budget = tiny
    elastic = ElasticConfig("drop", memory_budget_bytes=budget, peer_bytes_per_s=100e3, recompute_if_cheaper=True)
    with ElasticCluster(config, elastic) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        assert _burst(cluster, prompts) == want
        assert cluster.events.drops and cluster.events.exchange_recomputes > 0
        _assert_all_back(cluster, checksums)


def test_requests_a_group_member_takes_from_its_partner_queued_or_decoding_keep_their_outputs(tiny):
    """All requests start on one replica: once grouped, its partner takes queued ones (share_queue)
    and, when the queue is gone, decoding ones whose KV every stage already holds (balance_decodes)."""
    config, prompts, want, budget = tiny
    config = dataclasses.replace(config, max_num_seqs=4)  # a member cannot run its whole queue at once
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget)) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        first = cluster.replicas[0]
        for i, prompt in enumerate(prompts):  # all on one replica (past the router): one long queue
            first.add_request(prompt, GREEDY, str(i))
        got = _drain(cluster)
        idle_until_restored(cluster)
        assert got == want
        assert cluster.events.drops and cluster.events.queue_moves > 0 and cluster.events.decode_moves > 0
        _assert_all_back(cluster, checksums)


def test_a_member_lane_dying_fails_its_batch_and_the_rest_keeps_serving(tiny):
    config, prompts, want, budget = tiny
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget)) as cluster:
        for i, prompt in enumerate(prompts):
            cluster.add_request(prompt, GREEDY, str(i))
        finished = {}
        while not cluster.groups:  # the burst forms a pipeline group
            finished.update({o.request_id: o for o in cluster.step() if o.finished})
        cluster.dispatch()
        victim = next(iter(cluster.busy))
        os.kill(cluster.replicas[victim].lane.process.pid, signal.SIGKILL)
        while cluster.has_unfinished_requests():
            finished.update({o.request_id: o for o in cluster.step() if o.finished})
        failed = [o for o in finished.values() if o.outputs[0].finish_reason == "error"]
        assert failed and all("died" in o.error for o in failed)
        for output in finished.values():
            if output.outputs[0].finish_reason != "error":
                assert output.outputs[0].token_ids == want[output.request_id]
        cluster.add_request(prompts[0], GREEDY, "again")  # still serving, on a fresh lane
        assert _drain(cluster)["again"] == want["0"]


@pytest.mark.parametrize("moment", ["drop", "restore"])
def test_a_lane_dying_just_before_a_drop_or_restore_is_replaced_and_nothing_changes(tiny, monkeypatch, moment):
    """Weights and KV are this process's shared memory: the lane is only a view of them. One killed
    while idle, as the group forms or dissolves, is replaced mid-transition with the change applied,
    so every output stays right and everything comes back."""
    from coserve.elastic import pipeline

    config, prompts, want, budget = tiny
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget)) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        real, killed = getattr(pipeline, moment), []

        def dying(*args, **kwargs):
            lane = cluster.replicas[1].lane
            os.kill(lane.process.pid, signal.SIGKILL)
            lane.process.join(timeout=10)
            killed.append(lane.process.pid)
            return real(*args, **kwargs)
        monkeypatch.setattr(pipeline, moment, dying)
        assert _burst(cluster, prompts) == want
        assert len(killed) == 1 and cluster.replicas[1].lane.process.pid != killed[0]
        assert cluster.events.drops and cluster.events.restores
        _assert_all_back(cluster, checksums)


def _failing_once(monkeypatch, method: str) -> list:
    """Make LayerKV.`method` raise a LaneError the first time it is called; returns the calls seen."""
    from coserve.elastic.layer_kv import LayerKV
    from coserve.execution.lane import LaneError

    real, calls = getattr(LayerKV, method), []

    def flaky(self, *args):
        calls.append(method)
        if len(calls) == 1:
            raise LaneError(f"injected: {method} failed")
        return real(self, *args)
    monkeypatch.setattr(LayerKV, method, flaky)
    return calls


def _run_all(cluster: ElasticCluster, prompts) -> dict:
    for i, prompt in enumerate(prompts):
        cluster.add_request(prompt, GREEDY, str(i))
    outputs: dict = {}
    while cluster.has_unfinished_requests():
        outputs.update({o.request_id: o for o in cluster.step() if o.finished})
    return outputs


def test_a_failed_swap_copy_recomputes_or_fails_one_request_and_leaks_nothing(tiny, monkeypatch):
    """The first swap-out's copy fails: its victim is recomputed instead. The first swap-in's copy
    fails: that request ends with the error. Every other output is right and every page comes back."""
    config, prompts, want, budget = tiny
    reads, writes = _failing_once(monkeypatch, "read"), _failing_once(monkeypatch, "write")
    with ElasticCluster(config, ElasticConfig("swap", memory_budget_bytes=budget)) as cluster:
        outputs = _run_all(cluster, prompts)
        assert len(reads) >= 2 and len(writes) >= 1 and cluster.events.swaps_out == len(reads) - 1
        failed = [o for o in outputs.values() if o.error]
        assert len(failed) == 1 and "injected: write failed" in failed[0].error
        assert all(o.outputs[0].token_ids == want[rid] for rid, o in outputs.items() if not o.error)
        assert len(outputs) == len(prompts) and not any(cluster.swapped.values())
        assert cluster._pool.num_free_blocks == cluster._pool.num_blocks
        assert all(r.alive for r in cluster.replicas)


def test_a_failed_migration_copy_leaves_the_request_where_it_was(tiny, monkeypatch):
    """A migration is planned by hand (whether the load makes one depends on timing), then its copy
    fails: the request stays on its replica and finishes right, and no page is lost."""
    from coserve.elastic import kv_moves

    config, prompts, want, budget = tiny
    with ElasticCluster(config, ElasticConfig("migrate", memory_budget_bytes=budget)) as cluster:
        cluster.add_request(prompts[0], GREEDY, "0")
        outputs: dict = {}
        src = next(r for r in cluster.replicas if "0" in r.states)
        while not src.kv.block_tables.get("0"):
            outputs.update({o.request_id: o for o in cluster.step() if o.finished})
        while cluster.busy:  # every batch back: the move may commit now
            cluster.collect()
        dst = next(r for r in cluster.replicas if r is not src)
        request = src.scheduler.running[0]
        cluster.migration = kv_moves.Migration(request, src, dst, 0.0, len(src.kv.block_tables["0"]))
        copies = _failing_once(monkeypatch, "copy_to")
        cluster._migrate(cluster.clock())
        assert copies == ["copy_to"] and cluster.migration is None and "0" in src.states
        while cluster.has_unfinished_requests():
            outputs.update({o.request_id: o for o in cluster.step() if o.finished})
        assert outputs["0"].error is None and outputs["0"].outputs[0].token_ids == want["0"]
        assert cluster._pool.num_free_blocks == cluster._pool.num_blocks


def test_a_served_cluster_keeps_stepping_after_the_burst_until_its_group_restores(tiny):
    """The server steps an engine only while it says it has work: a group left standing when the
    last request finished must still count as work, or its layers would stay dropped for good."""
    from coserve.elastic.serving import ServedCluster

    config, prompts, want, budget = tiny
    # restore_below 0.01: the group restores only once no request is left (not while the burst drains)
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget, restore_below=0.01)) as cluster:
        served = ServedCluster(cluster)
        checksums = [r.weights_checksum() for r in cluster.replicas]
        outputs = _run_all(cluster, prompts)
        assert {rid: o.outputs[0].token_ids for rid, o in outputs.items()} == want
        assert cluster.groups and not cluster.has_unfinished_requests() and served.has_unfinished_requests()
        for _ in range(1000):  # what the server's engine loop does, bounded
            if not served.has_unfinished_requests():
                break
            assert served.step() == []
        assert not served.has_unfinished_requests() and cluster.events.restores
        _assert_all_back(cluster, checksums)


def test_a_group_restores_beside_a_queue_for_compute_but_not_one_short_of_pages(tiny):
    """Once the burst is over a request or two may always wait for a sequence slot or the next
    step; that queue is no reason to stay grouped. One refused pages is."""
    from coserve.elastic import pipeline

    config, prompts, want, budget = tiny
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget, restore_below=0.01)) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        assert {rid: o.outputs[0].token_ids for rid, o in _run_all(cluster, prompts).items()} == want
        (group,) = {id(g): g for g in cluster.groups.values()}.values()
        cluster.config.restore_below = 0.9  # demand is now far below one member's pages
        caps = {m.index: m.scheduler.config.max_num_seqs for m in group.members}
        for member in group.members:
            pipeline.tune_scheduler(member, max_num_seqs=1)
        short = [[1 + i, 2, 3] for i in range(4)]  # a page each: their queue is for sequence slots
        for i, prompt in enumerate(short):
            cluster.add_request(prompt, GREEDY, f"late{i}")
        cluster.dispatch()
        members = group.members
        assert any(m.scheduler.waiting for m in members) and not any(m.scheduler.short_of_pages for m in members)
        assert cluster._should_restore(group)
        queued = next(m for m in members if m.scheduler.waiting)
        queued.scheduler.short_of_pages = True  # the same queue, refused pages: the group holds
        assert not cluster._should_restore(group)
        queued.scheduler.short_of_pages = False
        late = {}
        while cluster.has_unfinished_requests():
            late.update({o.request_id: o.outputs[0].token_ids for o in cluster.step() if o.finished})
        assert late == {f"late{rid}": tokens for rid, tokens in _reference(config, short)[0].items()}
        for member in members:
            pipeline.tune_scheduler(member, max_num_seqs=caps[member.index])
        idle_until_restored(cluster)
        _assert_all_back(cluster, checksums)


def test_bad_configuration_and_requests_are_clear_errors(tiny):
    config, prompts, _, budget = tiny
    with pytest.raises(ConfigError, match="strategy"):
        ElasticConfig("teleport")
    with pytest.raises(ConfigError, match="balance_decodes must be true or false"):
        ElasticConfig("drop", balance_decodes="yes")
    with pytest.raises(ConfigError, match="recompute_if_cheaper"):
        ElasticConfig("drop", recompute_if_cheaper=1)
    with pytest.raises(ConfigError, match="share_pages must be true or false"):
        ElasticConfig("drop", share_pages=None)
    with pytest.raises(ConfigError, match="plan_for_growth must be true or false"):
        ElasticConfig("drop", plan_for_growth="yes")
    for bad in (0, -5.0, "200", True, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="expected_output_tokens must be a finite number > 0"):
            ElasticConfig("drop", expected_output_tokens=bad)
    for field, bad in (("num_replicas", True), ("num_replicas", 2.0), ("num_replicas", 0),
                       ("memory_budget_bytes", float("nan")), ("memory_budget_bytes", float("inf")),
                       ("memory_budget_bytes", 0), ("max_group_size", 2.5), ("max_group_size", 1),
                       ("max_group_size", True), ("host_bytes_per_s", float("nan")),
                       ("peer_bytes_per_s", float("inf")), ("peer_bytes_per_s", -1.0), ("host_bytes_per_s", "fast"),
                       ("restore_below", float("nan"))):
        with pytest.raises(ConfigError, match=field):
            ElasticConfig("drop", **{field: bad})
    with pytest.raises(ConfigError, match="no room for KV"):
        ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=1000))
    with ElasticCluster(config, ElasticConfig("recompute", memory_budget_bytes=budget)) as cluster:
        with pytest.raises(UnknownModelError):
            cluster.add_request(prompts[0], GREEDY, model="nope")
        with pytest.raises(ContextLengthError):
            cluster.add_request(list(range(200)) * 2, GREEDY)
        assert not cluster.has_unfinished_requests()
        # a caller's id that looks like the next automatic one (the refused request above took r0):
        # the automatic id steps past it
        assert cluster.add_request(prompts[0], GREEDY, "r1") == "r1"
        assert cluster.add_request(prompts[1], GREEDY) == "r2"
        with pytest.raises(InvalidRequestError, match="already in use"):
            cluster.add_request(prompts[2], GREEDY, "r1")
        for rid in list(cluster._request_ids):
            cluster.abort_request(rid)
        assert not cluster.has_unfinished_requests()


def _brute_force_covered(replicas, capacity, max_size) -> int:
    """Most overloaded replicas any set of disjoint feasible groups covers."""
    best = 0
    names = [r.name for r in replicas]
    by_name = {r.name: r for r in replicas}

    def search(left: list[str], covered: int) -> None:
        nonlocal best
        best = max(best, covered)
        if not left:
            return
        first, rest = left[0], left[1:]
        search(rest, covered)  # `first` stays alone
        for size in range(1, max_size):
            for partners in itertools.combinations(rest, size):
                group = [by_name[first]] + [by_name[p] for p in partners]
                if sum(r.demand_pages for r in group) <= capacity(len(group)):
                    remaining = [n for n in rest if n not in partners]
                    search(remaining, covered + sum(r.surplus < 0 for r in group))

    search(names, 0)
    return best


def test_drop_plan_is_feasible_and_near_brute_force_coverage():
    """The greedy plan (O(N log N)) against the best disjoint grouping, on random small clusters:
    every group it forms is feasible, and it covers nearly as many overloaded replicas."""
    import random

    capacity = {1: 10, 2: 26, 3: 45}.get  # a group holds more than its members alone: freed weights
    covered_total = optimal_total = 0
    for seed in range(200):
        rng = random.Random(seed)
        replicas = [ReplicaDemand(f"r{i}", rng.randint(0, 22), 10) for i in range(rng.randint(2, 6))]
        groups = plan_groups(replicas, capacity, max_group_size=3)
        by_name = {r.name: r for r in replicas}
        members = [name for group in groups for name in group]
        assert len(members) == len(set(members))
        for group in groups:
            assert sum(by_name[n].demand_pages for n in group) <= capacity(len(group))
            assert any(by_name[n].surplus < 0 for n in group)
        covered_total += sum(by_name[n].surplus < 0 for n in members)
        optimal_total += _brute_force_covered(replicas, capacity, 3)
    print(f"greedy covers {covered_total} of {optimal_total} coverable overloaded replicas")
    assert covered_total >= 0.8 * optimal_total  # measured: 290 of 342 (85%)


def test_a_group_is_sized_for_its_members_expected_growth_and_formed_for_their_demand_now():
    """Four replicas, each 2 pages over its 10 and expected to need 6 more: two pairs hold what they
    need now (24 <= 26) but not what they expect (36), so the pairs merge into one group of four
    (48 <= 70 now). Capped at three, a merge would not fit and both pairs stay: growth never leaves
    a replica uncovered that the demand now covers."""
    capacity = {1: 10, 2: 26, 3: 45, 4: 70}.get
    now_only = [ReplicaDemand(f"r{i}", 12, 10) for i in range(4)]
    growing = [ReplicaDemand(f"r{i}", 12, 10, growth_pages=6) for i in range(4)]
    assert sorted(map(len, plan_groups(now_only, capacity, max_group_size=4))) == [2, 2]
    assert [len(g) for g in plan_groups(growing, capacity, max_group_size=4)] == [4]
    assert sorted(map(len, plan_groups(growing, capacity, max_group_size=3))) == [2, 2]
    # without growth the plan is the cover pass's, order included: the most overloaded replica's group first
    order = [ReplicaDemand("a", 200, 100), ReplicaDemand("b", 160, 100), ReplicaDemand("c", 10, 100),
             ReplicaDemand("d", 100, 100)]
    assert plan_groups(order, {1: 100, 2: 260}.get, 2) == [["a", "c"], ["b", "d"]]
    # a spare replica joins a pair expected to outgrow it, if the three still hold the demand now
    spare = ReplicaDemand("s", 0, 10)
    assert plan_groups([ReplicaDemand("a", 14, 10, growth_pages=20), ReplicaDemand("b", 10, 10), spare],
                       capacity, 3) == [["a", "b", "s"]]
    # ... and not if they would not: the pair that fits now stays (a bigger group is never all or nothing)
    tight = {1: 10, 2: 26, 3: 40}.get
    assert plan_groups([ReplicaDemand("a", 20, 10, growth_pages=30), ReplicaDemand("b", 5, 10),
                        ReplicaDemand("c", 20, 10, growth_pages=5)], tight, 3) == [["a", "b"]]
    assert plan_groups([ReplicaDemand("a", 14, 10, growth_pages=20), ReplicaDemand("b", 10, 10)],
                       {1: 10, 2: 26, 3: 0}.get, 3) == [["a", "b"]]
    # a group that could not hold even the demand now does not form, growth or not
    assert plan_groups([ReplicaDemand(f"r{i}", 40, 10, growth_pages=6) for i in range(4)], capacity, 4) == []


def test_planning_for_growth_keeps_every_group_feasible_now_and_covers_at_least_as_much():
    import random

    capacity = {1: 10, 2: 26, 3: 45, 4: 66}.get
    for seed in range(200):
        rng = random.Random(seed)
        now = [ReplicaDemand(f"r{i}", rng.randint(0, 22), 10) for i in range(rng.randint(2, 7))]
        growing = [ReplicaDemand(r.name, r.demand_pages, 10, rng.randint(0, 15)) for r in now]
        by_name = {r.name: r for r in growing}
        plain = {n for g in plan_groups(now, capacity, 4) for n in g}
        groups = plan_groups(growing, capacity, 4)
        members = [n for g in groups for n in g]
        assert len(members) == len(set(members)) and plain <= set(members)
        for group in groups:
            assert 2 <= len(group) <= 4
            assert sum(by_name[n].demand_pages for n in group) <= capacity(len(group))


def test_growth_headroom_is_what_each_request_adds_to_reach_the_mean_output():
    from types import SimpleNamespace

    from coserve.elastic.demand_growth import OutputLengths, growth_pages

    requests = [SimpleNamespace(num_tokens=p + n, num_output_tokens=n) for p, n in ((10, 0), (20, 100), (30, 400))]
    # demand counts the next token's slot already: 300 more tokens on 10 go from 1 page (11 tokens) to
    # 20 (19 more), 200 more on 120 from 8 (121 tokens) to 20 (12 more), none past the mean
    assert growth_pages(requests, 16, 300.0) == 19 + 12
    assert growth_pages([SimpleNamespace(num_tokens=16, num_output_tokens=0)], 16, 16.0) == 0  # 17 slots: 2 pages
    assert growth_pages([SimpleNamespace(num_tokens=32, num_output_tokens=20)], 16, 16.0) == 0  # past the mean
    assert growth_pages(requests, 16, None) == 0
    learned = OutputLengths()
    assert learned.mean is None
    learned.add(10)
    learned.add(30)
    assert learned.mean == 20
    told = OutputLengths(expected=250.0)
    told.add(10)
    assert told.mean == 250.0  # the deployment's figure from its history is not overwritten by a few


def test_the_router_counts_a_group_members_share_of_the_groups_pages():
    """Two grouped replicas with 300 free pages between them and a lone one with 200: each member
    has 150 of its own to offer, so a request goes to the lone replica."""
    from types import SimpleNamespace

    from coserve.elastic.router import pick_replica
    from coserve.engine.block_pool import BlockPool

    pool = BlockPool(500)
    pool.set_limit("group", 300)
    pool.set_limit("lone", 200)

    def replica(owner: str):
        scheduler = SimpleNamespace(num_running=1, num_waiting=0, num_waiting_pages=0)
        return SimpleNamespace(kv=SimpleNamespace(pool=pool, owner=owner, block_size=16), scheduler=scheduler)
    first, second, lone = replica("group"), replica("group"), replica("lone")
    assert pick_replica([first, second, lone], prompt_len=100) is lone
    pool.set_limit("lone", 100)
    assert pick_replica([first, second, lone], prompt_len=100) is first
