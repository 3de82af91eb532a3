"""Replicas as Ray actors on a local Ray cluster: outputs equal the multiprocess backend's (through
the OpenAI server and through a drop, exchange and restore), and a killed actor leaves the server up
and reported as degraded."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import openai
import pytest

from coserve.elastic import ElasticCluster, ElasticConfig
from coserve.engine.config import EngineConfig
from coserve.entrypoints.placement_serve import build_clusters, server_config_for
from coserve.errors import ConfigError
from coserve.placement.placement_file import PlacementFile

from .test_elastic import GREEDY, _assert_all_back, _budget, _burst, _prompts, _reference, idle_until_restored
from .test_server import RunningServer

ray = pytest.importorskip("ray", reason="the Ray backend is the optional extra coserve[ray]")

REAL = "smollm2-135m-instruct"
PAGE_BYTES = 30 * 2 * 16 * 192 * 4  # one page of SmolLM2's KV over all 30 layers (float32)
PROMPTS = ["The capital of France is", "def fibonacci(n):", "List three primary colors:", "The quick brown fox",
           "Once upon a time, in a small village by the sea, there lived an old fisherman who"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _placement(num_meshes: int = 2, kv_pages: int = 64, tensor_parallel: int = 1) -> PlacementFile:
    placed = dict(name="smol", model=REAL, dtype="float32", tensor_parallel=tensor_parallel, rate=1.0,
                  prefill_share=0.5, decode_share=0.5, kv_quota_bytes=kv_pages * PAGE_BYTES,
                  kv_quota_tokens=kv_pages * 16, max_num_seqs=8, est_throughput=1.0, est_ttft_ms=10.0,
                  est_tpot_ms=10.0, est_slo_attainment=1.0)
    width = tensor_parallel  # each mesh has the GPUs its degree uses, or the file itself is inconsistent
    meshes = [dict(id=i, node=0, gpus=list(range(i * width, (i + 1) * width)), est_throughput=1.0, models=[placed])
              for i in range(num_meshes)]
    return PlacementFile.model_validate(dict(
        strategy="greedy", objective="throughput",
        cluster=dict(nodes=1, gpus_per_node=num_meshes * tensor_parallel, gpu="A100-80GB", interconnect="nvlink"),
        totals=dict(rate=2.0, est_throughput=2.0, est_goodput=2.0, est_slo_attainment=1.0, gpus_used=num_meshes,
                    plan_seconds=0.1),
        meshes=meshes,
        models=[dict(name="smol", rate=2.0, replicas=list(range(num_meshes)), est_throughput=2.0,
                     est_slo_attainment=1.0)]))


def _complete_all(server: RunningServer) -> list[str]:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

    def one(prompt: str) -> str:
        return client.completions.create(model="smol", prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(one, PROMPTS))


def _serve(backend: str, **placement) -> RunningServer:
    clusters = build_clusters(_placement(**placement), backend=backend, device="cpu")
    return RunningServer(server_config_for(clusters, "127.0.0.1", 0), clusters)


def test_ray_replicas_answer_as_the_process_backend_does():
    with _serve("process") as server:
        want = _complete_all(server)
    with _serve("ray") as server:
        got = _complete_all(server)
        cluster = server.engine("smol").cluster
        assert all(r.scheduler.num_running == 0 for r in cluster.replicas)
        served = [r.name for r in cluster.replicas if r.kv.pool.capacity(r.kv.owner) > 0]
        assert len(served) == 2
        assert httpx.get(server.url + "/health").json() == {
            "status": "ok", "instances": {"smol#0": "ok", "smol#1": "ok"}}
    assert got == want
    assert all(text for text in got)


def test_drop_exchange_and_restore_across_ray_actors_keep_outputs():
    from coserve.distributed.ray_backend import RayBackend

    config = EngineConfig(model=REAL, max_num_seqs=8, max_num_batched_tokens=256)
    prompts = _prompts(8, 49152)
    want, weight_bytes = _reference(config, prompts)
    budget = _budget(weight_bytes, config, 30, 192, pages=8)
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget), backend=RayBackend()) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        assert _burst(cluster, prompts) == want
        (_, members, exchanged), = cluster.events.drops
        assert len(members) == 2 and exchanged > 0  # KV of decoding requests crossed between the actors
        (_, _, pulled), = cluster.events.restores
        assert pulled >= 15 * cluster.replicas[0].layer_bytes  # each member took back the other's layers
        _assert_all_back(cluster, checksums)


def test_killing_an_actor_leaves_the_server_up_and_reports_it():
    with _serve("ray") as server:
        cluster = server.engine("smol").cluster
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def one(prompt: str):
            try:
                return client.completions.create(model="smol", prompt=prompt, max_tokens=48, temperature=0,
                                                 extra_body={"ignore_eos": True}).choices[0].text
            except openai.APIError as exc:
                return exc
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            futures = [pool.submit(one, p) for p in PROMPTS]
            victim = cluster.replicas[1]
            deadline = time.monotonic() + 120
            while not victim.states and time.monotonic() < deadline:
                time.sleep(0.05)  # polling for the condition, not timing: the kill needs requests on it
            assert victim.states
            ray.kill(victim.handle, no_restart=True)
            results = [f.result(timeout=300) for f in futures]
        failed = [r for r in results if isinstance(r, Exception)]
        assert all("died" in str(r) or "dead" in str(r) for r in failed)
        assert len(failed) < len(results)  # those on the live replica, or moved there, finished
        assert httpx.get(server.url + "/health").json() == {
            "status": "degraded", "instances": {"smol#0": "ok", "smol#1": "dead"}}
        after = _complete_all(server)  # every new request goes to the live replica
        assert all(isinstance(text, str) and text for text in after)
        assert not victim.states and all(r.scheduler.num_running == 0 for r in cluster.replicas)
        ray.kill(cluster.replicas[0].handle, no_restart=True)  # the last one: found dead by its next job
        with pytest.raises(openai.APIError, match="down"):
            client.completions.create(model="smol", prompt="The capital of France is", max_tokens=4)
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and health.json()["models_down"] == ["smol"]


def test_placement_asking_for_tensor_parallelism_is_refused_clearly():
    with pytest.raises(ConfigError, match="tensor degree 2"):
        build_clusters(_placement(tensor_parallel=2), backend="ray", device="cpu")


def _assert_survivor_serves(cluster: ElasticCluster, survivor, checksum: str, outputs: dict, prompts, want) -> None:
    """After a member died: every request finished whole and right or failed naming the cause, the
    survivor holds all its weights and a free pool, and serves a new request correctly."""
    assert len(outputs) == len(prompts) and not cluster.groups and not cluster.repairs
    for output in outputs.values():
        if output.error is None:
            assert output.outputs[0].token_ids == want[output.request_id]
        else:
            assert any(word in output.error for word in ("died", "dead", "down"))
    assert survivor.held_layers() == list(range(4)) and survivor.weights_checksum() == checksum
    assert survivor.is_whole()  # the driver's record of its end parts agrees with the worker
    assert cluster._pool.num_free_blocks == cluster._pool.num_blocks
    cluster.add_request(prompts[0], GREEDY, "after")
    assert _finish(cluster, {})["after"].outputs[0].token_ids == want["0"]


def _finish(cluster: ElasticCluster, outputs: dict) -> dict:
    while cluster.has_unfinished_requests():
        outputs.update({o.request_id: o for o in cluster.step() if o.finished})
    return outputs


def test_a_dead_actor_fails_what_it_started_and_reroutes_what_it_had_not(tiny):
    from coserve.distributed.ray_backend import RayBackend

    config, prompts, want, _ = tiny
    config = EngineConfig(model=config.model, max_num_seqs=2, max_num_batched_tokens=128)
    with ElasticCluster(config, ElasticConfig("recompute", memory_budget_bytes=1 << 30),
                        backend=RayBackend()) as cluster:
        for i, prompt in enumerate(prompts[:6]):  # arrivals far from now: one reset at the move would show
            cluster.add_request(prompt, GREEDY, str(i), arrival_time=1000.0 + i)
        victim = cluster.replicas[1]
        outputs: dict = {}
        while not any(r.num_output_tokens for r in victim.scheduler.running):
            outputs.update({o.request_id: o for o in cluster.step() if o.finished})
        started = {r.request_id for r in victim.scheduler.running if r.num_output_tokens}
        queued = {r.request_id for r in victim.scheduler.waiting}
        assert started and queued  # two run on it (max_num_seqs=2), the third waits
        ray.kill(victim.handle, no_restart=True)
        _finish(cluster, outputs)
        assert cluster.health() == {f"{config.name}#0": "ok", f"{config.name}#1": "dead"}
        for rid in started:
            assert outputs[rid].error and "died" in outputs[rid].error
        for rid in set(outputs) - started:  # the rest, rerouted ones included, are whole and right
            assert outputs[rid].error is None and outputs[rid].outputs[0].token_ids == want[rid]
        for rid in queued:  # moved to the survivor, their TTFT still from their first arrival
            assert outputs[rid].metrics.arrival_time == 1000.0 + int(rid)
        assert len(outputs) == 6
        survivor = cluster.replicas[0]
        assert survivor.kv.pool.num_free_blocks == survivor.kv.pool.num_blocks


def test_a_pipeline_member_dying_repairs_the_group_from_the_checkpoint(tiny):
    from coserve.distributed.ray_backend import RayBackend

    config, prompts, want, budget = tiny
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget), backend=RayBackend()) as cluster:
        survivor, victim = cluster.replicas
        checksum = survivor.weights_checksum()
        for i, prompt in enumerate(prompts):
            cluster.add_request(prompt, GREEDY, str(i))
        outputs: dict = {}
        while not cluster.groups:
            outputs.update({o.request_id: o for o in cluster.step() if o.finished})
        assert survivor.held_layers() != list(range(4))
        ray.kill(victim.handle, no_restart=True)
        _finish(cluster, outputs)
        _assert_survivor_serves(cluster, survivor, checksum, outputs, prompts, want)


def test_swap_across_ray_keeps_outputs_and_frees_the_host_copy_of_an_aborted_request(tiny):
    from coserve.distributed.ray_backend import RayBackend

    config, prompts, want, budget = tiny
    with ElasticCluster(config, ElasticConfig("swap", memory_budget_bytes=budget), backend=RayBackend()) as cluster:
        for i, prompt in enumerate(prompts):
            cluster.add_request(prompt, GREEDY, str(i))
        outputs: dict = {}
        while not any(cluster.swapped.values()):
            outputs.update({o.request_id: o for o in cluster.step() if o.finished})
        aborted = next(q[0].request.request_id for q in cluster.swapped.values() if q)
        cluster.abort_request(aborted)
        _finish(cluster, outputs)
        assert {rid: o.outputs[0].token_ids for rid, o in outputs.items()} == {
            rid: tokens for rid, tokens in want.items() if rid != aborted}
        assert [ray.get(r.handle.host_copies.remote()) for r in cluster.replicas] == [0, 0]
        assert cluster._pool.num_free_blocks == cluster._pool.num_blocks


def test_a_worker_dying_idle_as_kv_swaps_back_fails_what_it_held_and_the_rest_serve_on(tiny, monkeypatch):
    """It dies between jobs, just as a request's KV is to come back from its host memory: the copy
    finds it dead, so it is lost there and then (not at a later job), and nothing escapes the step."""
    from coserve.distributed.ray_backend import RayBackend
    from coserve.elastic import kv_moves

    config, prompts, want, budget = tiny
    real, on_host = kv_moves.swap_in, set()

    def dying(replica, swapped, link):
        pages = -(-swapped.request.num_computed_tokens // replica.kv.block_size)
        if not on_host and replica.kv.pool.headroom(replica.kv.owner) >= pages:  # the copy will be tried
            on_host.update(s.request.request_id for s in cluster.swapped[replica.index])
            _kill_and_wait(replica.handle)
        return real(replica, swapped, link)
    monkeypatch.setattr(kv_moves, "swap_in", dying)
    with ElasticCluster(config, ElasticConfig("swap", memory_budget_bytes=budget), backend=RayBackend()) as cluster:
        outputs = _finish(cluster, _burst_started(cluster, prompts))
        victim = next(r for r in cluster.replicas if not r.alive)
        assert len(outputs) == len(prompts) and cluster.health()[victim.name] == "dead"
        for rid in on_host:
            assert "down" in outputs[rid].error or "died" in outputs[rid].error
        for output in outputs.values():
            assert output.error or output.outputs[0].token_ids == want[output.request_id]
        assert cluster._pool.num_free_blocks == cluster._pool.num_blocks


@pytest.mark.parametrize("moment", ["drop", "restore"])
def test_a_member_dying_during_a_drop_or_restore_is_lost_and_the_other_serves_on(tiny, monkeypatch, moment):
    from coserve.distributed.ray_backend import RayBackend
    from coserve.elastic import pipeline

    config, prompts, want, budget = tiny
    # restore_below 0.9: the group restores while requests still run, so the survivor has some to keep
    elastic = ElasticConfig("drop", memory_budget_bytes=budget, restore_below=0.9)
    with ElasticCluster(config, elastic, backend=RayBackend()) as cluster:
        survivor, victim = cluster.replicas
        checksum = survivor.weights_checksum()
        real, calls, on_survivor = getattr(pipeline, moment), [], set()

        def dying(*args, **kwargs):
            calls.append(moment)
            on_survivor.update(survivor.states)
            _kill_and_wait(victim.handle)
            return real(*args, **kwargs)
        monkeypatch.setattr(pipeline, moment, dying)
        for i, prompt in enumerate(prompts):
            cluster.add_request(prompt, GREEDY, str(i))
        outputs = _finish(cluster, {})
        idle_until_restored(cluster)  # where a restore happens
        outputs = _finish(cluster, outputs)
        assert calls == [moment] and cluster.health()[victim.name] == "dead"
        for rid in on_survivor:  # its KV or layers were lost, never its tokens: it prefills again
            assert outputs[rid].error is None, outputs[rid].error
        _assert_survivor_serves(cluster, survivor, checksum, outputs, prompts, want)


def test_a_member_dying_after_its_partner_dropped_layers_leaves_the_partner_right(tiny, monkeypatch):
    """The partner had let layers go (and their KV with them) when the death stopped the drop: it
    reloads them from the checkpoint, and its requests prefill again rather than decode from KV
    that is not there; every one of them finishes right."""
    from coserve.distributed.ray_backend import RayBackend
    from coserve.distributed.remote_replica import RemoteReplica

    config, prompts, want, budget = tiny
    real, killed = RemoteReplica.drop_layer, {}

    def drop_layer(self, index):
        partner = next(r for r in cluster.replicas if r is not self)
        if not killed and not partner.is_whole():  # the partner is done dropping: this one dies now
            killed.update(victim=self, on_partner=set(partner.states))
            _kill_and_wait(self.handle)
        return real(self, index)
    monkeypatch.setattr(RemoteReplica, "drop_layer", drop_layer)
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget), backend=RayBackend()) as cluster:
        checksums = {r.name: r.weights_checksum() for r in cluster.replicas}
        outputs = _finish(cluster, _burst_started(cluster, prompts))
        victim = killed["victim"]
        survivor = next(r for r in cluster.replicas if r is not victim)
        assert cluster.health()[victim.name] == "dead" and killed["on_partner"]
        for rid in killed["on_partner"]:
            assert outputs[rid].error is None and outputs[rid].outputs[0].token_ids == want[rid]
        _assert_survivor_serves(cluster, survivor, checksums[survivor.name], outputs, prompts, want)


def _kill_and_wait(handle) -> None:
    """ray.kill returns at once; the actor may still answer a call or two: wait until it cannot."""
    ray.kill(handle, no_restart=True)
    with pytest.raises(ray.exceptions.RayActorError):
        for _ in range(100):
            ray.get(handle.held_layers.remote(), timeout=10)
            time.sleep(0.1)


def _burst_started(cluster: ElasticCluster, prompts) -> dict:
    """Two requests decoding (KV held) before the rest arrive: the drop then has KV to lose."""
    outputs: dict = {}
    for i in range(2):
        cluster.add_request(prompts[i], GREEDY, str(i))
    for _ in range(6):
        outputs.update({o.request_id: o for o in cluster.step() if o.finished})
    for i in range(2, len(prompts)):
        cluster.add_request(prompts[i], GREEDY, str(i))
    return outputs


@pytest.mark.parametrize("method", ["drop_layer", "restore_layer"])
def test_a_worker_call_raising_mid_drop_or_restore_is_undone_and_nothing_is_lost(tiny, monkeypatch, method):
    """Not a death: the call raises (a bug, a lost object) with layers already moved. A drop is
    undone (layers reloaded, requests recomputed), a restore repaired; both replicas serve on whole."""
    from coserve.distributed.ray_backend import RayBackend
    from coserve.distributed.remote_replica import RemoteReplica
    from coserve.execution.lane import LaneError

    config, prompts, want, budget = tiny
    real, calls = getattr(RemoteReplica, method), []

    def flaky(self, *args):
        calls.append(self.name)
        if len(calls) == 2:  # one layer has moved already
            raise LaneError(f"injected: {method} raised")
        return real(self, *args)
    monkeypatch.setattr(RemoteReplica, method, flaky)
    elastic = ElasticConfig("drop", memory_budget_bytes=budget, restore_below=0.9)
    with ElasticCluster(config, elastic, backend=RayBackend()) as cluster:
        checksums = [r.weights_checksum() for r in cluster.replicas]
        outputs = _finish(cluster, _burst_started(cluster, prompts))
        idle_until_restored(cluster)
        assert len(calls) >= 2 and not cluster.repairs
        assert {rid: o.outputs[0].token_ids for rid, o in outputs.items()} == want
        assert all(o.error is None for o in outputs.values())
        assert cluster.health() == {r.name: "ok" for r in cluster.replicas}
        _assert_all_back(cluster, checksums)


def test_a_layer_that_reached_a_worker_unrecorded_is_known_after_a_reload(tiny):
    """The race a restore can lose: the layer's bytes land on the receiver, then the sender dies and
    the copy is reported failed, so the driver's record lacks a layer the worker holds."""
    from coserve.distributed.ray_backend import RayBackend

    config, _, _, budget = tiny
    with ElasticCluster(config, ElasticConfig("drop", memory_budget_bytes=budget), backend=RayBackend()) as cluster:
        replica = cluster.replicas[0]
        checksum = replica.weights_checksum()
        replica.drop_layer(2)
        assert ray.get(replica.handle.reload_layers.remote()) == list(range(4))  # behind the record's back
        replica.reload_layers()
        assert replica.held_layers() == list(range(4)) and replica.weights_checksum() == checksum
