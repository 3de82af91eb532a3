"""The simulator makes the real device's decisions: same scheduler, pool, multiplexer, quota adapter."""

from __future__ import annotations

import pytest

from coserve import SamplingParams
from coserve.engine.config import EngineConfig
from coserve.engine.device_config import ColocatedModel, DeviceConfig, memory_bill, plan_device
from coserve.engine.device_engine import DeviceEngine, split_cores
from coserve.engine.device_pool import DeviceKVPool, PageLayout
from coserve.engine.llm_engine import LLMEngine
from coserve.execution.models.spec import parse_dtype
from coserve.execution.process_lanes import ProcessLanes
from coserve.metrics import SLO
from coserve.placement.shapes import model_spec
from coserve.simulator import SimCluster, SimDeviceSpec, SimModel, VirtualClock, batch_shape
from coserve.workload import WorkloadRequest

REAL = "smollm2-135m-instruct"
MODELS = [  # name, model, rate, SLO (the tiny model's is tight enough to be missed)
    ("real", REAL, 2.0, None),
    ("small", "random:llama-small-49k", 1.0, None),
    ("tiny", "random:llama-tiny-49k", 0.5, SLO(ttft_ms=30, tpot_ms=8)),
]
LENGTHS = [(40, 6), (9, 12), (70, 3), (25, 9), (5, 14), (33, 5)]  # (prompt, output) per request


def scripted_seconds(model: str, part, lane: int) -> float:
    """Durations both runs are given: a fixed cost, per token, per sampled row, per model size."""
    shape = batch_shape(part)
    size = {"real": 3.0, "small": 1.5, "tiny": 1.0}[model]
    return size * (0.004 + 0.0002 * shape.tokens + 0.0005 * shape.sampled) + 0.0001 * lane


class ScriptedLanes:
    """Real lanes run every job, but a job 'ends' at the scripted time: both runs see one timeline."""

    def __init__(self, inner: ProcessLanes, clock: VirtualClock):
        self.inner = inner
        self.clock = clock
        self.num_lanes = inner.num_lanes
        self.wide_lane = inner.wide_lane
        self.ends: dict[int, float] = {}

    def submit(self, lane, model, engine, part):
        self.ends[lane] = self.clock.now + scripted_seconds(model, part, lane)
        self.inner.submit(lane, model, engine, part)

    def wait(self):
        end = min(self.ends.values())
        lanes = [lane for lane, t in self.ends.items() if t == end]
        self.clock.advance_to(end)
        for lane in lanes:
            del self.ends[lane]
        return self.inner.collect(lanes)

    def close(self):
        self.inner.close()


def _requests() -> list[WorkloadRequest]:
    """Six requests per model; half arrive at once, the rest while the device is busy; then, long
    after, three for one model alone (a batch nobody else waits for: spread over the lanes)."""
    mixed = [WorkloadRequest(i, name, 0.0 if i % 2 else 0.013 * i, *LENGTHS[(i + j) % len(LENGTHS)])
             for j, (name, *_) in enumerate(MODELS) for i in range(j * 10, j * 10 + 6)]
    return mixed + [WorkloadRequest(100 + i, "real", 60.0, *LENGTHS[i]) for i in range(3)]


def _drive(device: DeviceEngine, engines, clock: VirtualClock) -> dict:
    """The benchmark's real-time loop on the scripted clock: admit what has arrived, then step."""
    pending = sorted(_requests(), key=lambda r: r.arrival_time)
    done = {}
    while pending or device.has_unfinished_requests():
        while pending and pending[0].arrival_time <= clock.now:
            request = pending.pop(0)
            params = SamplingParams(temperature=0, max_tokens=request.output_len, ignore_eos=True)
            engines[request.model].add_request([7] * request.input_len, params, str(request.request_id))
        outputs = device.dispatch()
        if device.in_flight:  # what step() does: wait for the next job to end
            for more in device.collect().values():
                done.update({o.request_id: o for o in more if o.finished})
        elif pending:  # idle: sleep until the next arrival
            clock.advance_to(pending[0].arrival_time)
        else:
            assert not device.has_unfinished_requests(), "requests stuck with idle lanes"
        done.update({o.request_id: o for more in outputs.values() for o in more if o.finished})
    return done


def _budget_for(colocated, specs, pages: int) -> int:
    """Weights and activations of the models, plus `pages` KV pages."""
    fixed = -memory_bill(colocated, specs, 0).kv_bytes
    page = PageLayout.page_bytes_for([(specs[c.config.name], parse_dtype(c.config.dtype)) for c in colocated])
    return fixed + pages * page


def _decisions(log: list) -> callable:
    def on_launch(model, lanes, out):
        log.append((model, tuple(lanes), tuple((s.request.request_id, s.num_new_tokens) for s in out.scheduled),
                    tuple(r.request_id for r in out.preempted)))
    return on_launch


@pytest.mark.parametrize("policy,lanes,wide", [("mux", 2, False), ("mux", 2, True), ("temporal", 1, False)])
def test_simulated_device_decides_exactly_as_the_real_one(policy, lanes, wide):
    budget_pages = 12  # tight: quotas adapt and requests get preempted
    specs = {name: model_spec(model, name) for name, model, *_ in MODELS}
    configs = [EngineConfig(name=n, model=m, tokenizer=None, seed=1, max_num_seqs=4, max_num_batched_tokens=64)
               for n, m, *_ in MODELS]
    colocated = [ColocatedModel(c, rate, slo) for c, (_, _, rate, slo) in zip(configs, MODELS)]
    device_config = DeviceConfig(policy, lanes, memory_budget_bytes=_budget_for(colocated, specs, budget_pages))
    plan = plan_device(colocated, device_config, specs)
    assert plan.layout.num_pages == budget_pages

    # the real device: real weights, real lanes, scripted clock
    clock = VirtualClock()
    pool = DeviceKVPool(plan.layout)
    engines = {c.name: LLMEngine(c, clock=clock, pool=pool) for c in configs}
    real_log: list = []
    real = DeviceEngine(engines, policy, slos=plan.slos, demand=plan.demand, clock=clock,
                        executor=ScriptedLanes(ProcessLanes(engines, split_cores(lanes), wide), clock),
                        on_launch=_decisions(real_log))
    try:
        real_done = _drive(real, engines, clock)
    finally:
        real.close()

    # the simulated device: the same plan, the same durations from a cost callback
    sim_models = [SimModel(n, m, dtype="float32", rate=rate, slo=slo, max_num_seqs=4, max_num_batched_tokens=64)
                  for n, m, rate, slo in MODELS]
    spec = SimDeviceSpec("cpu0", sim_models, device_config.memory_budget_bytes, policy, [1.0] * lanes,
                         device="cpu", wide_lane=wide)
    cluster = SimCluster([spec], lambda device, specs: scripted_seconds)
    sim_log: list = []
    cluster.devices["cpu0"].on_launch = _decisions(sim_log)
    records = cluster.run(_requests())

    assert sim_log == real_log, "\n".join(f"{a}\n{b}\n" for a, b in zip(real_log, sim_log))
    if policy == "mux":
        assert any(preempted for *_, preempted in real_log)  # the pool really was contended
        spread = (2,) if wide else (0, 1)  # the late batch had the device to itself
        assert any(lanes == spread for _, lanes, *_ in real_log)
    assert cluster.clock.now == pytest.approx(clock.now)
    for record in records:
        output = real_done[str(record.request_id)]
        assert record.output_tokens == len(output.outputs[0].token_ids)
        assert record.end_time == pytest.approx(output.metrics.last_token_time)


def test_the_cost_fit_recovers_known_coefficients_and_stays_non_negative():
    import numpy as np

    from coserve.costmodel.profile import fit
    from coserve.simulator.cost import BatchShape

    rng = np.random.default_rng(0)
    truth = [0.004, 2e-5, 3e-4, 1e-8, 0.0]  # seconds, per token, per sampled row, per pair, per KV read
    columns = zip(rng.integers(1, 512, 60), rng.integers(1, 32, 60), rng.integers(1, 10**5, 60),
                  rng.integers(0, 4096, 60))
    shapes = [BatchShape(int(t), int(s), float(p), int(k)) for t, s, p, k in columns]
    samples = [(shape, float(np.dot(truth, shape.features()))) for shape in shapes]
    assert np.allclose(fit(samples), truth, rtol=1e-6, atol=1e-12)
    noisy = [(shape, seconds * (1 + 0.01 * rng.standard_normal())) for shape, seconds in samples]
    assert min(fit(noisy)) >= 0.0


def test_a_refit_of_saved_samples_recovers_the_cost_and_the_slowdown_beside_a_busy_lane(tmp_path):
    """Jobs timed beside a busy lane 1.3x slower than alone: the fit finds the alone coefficients
    and a slowdown of 1.3, and both survive the cost file's round trip with the samples in it."""
    import numpy as np

    from coserve.costmodel.profile import fit_profiles
    from coserve.simulator.cost import BatchShape, FittedModel

    rng = np.random.default_rng(1)
    truth = [0.002, 4e-5, 1e-4, 2e-9, 1e-7]
    columns = zip(rng.integers(1, 512, 40), rng.integers(1, 32, 40), rng.integers(1, 10**5, 40),
                  rng.integers(0, 4096, 40))
    shapes = [BatchShape(int(t), int(n), float(p), int(k)) for t, n, p, k in columns]
    alone = [(shape, float(np.dot(truth, shape.features()))) for shape in shapes]
    beside = [(shape, 1.3 * seconds) for shape, seconds in alone]
    fitted, errors = fit_profiles("m", "cpu", {"1": {"alone": alone, "beside": beside}})
    assert np.allclose(fitted.coefficients["1"][0].values, truth, rtol=1e-6, atol=1e-12)
    assert fitted.coefficients["1"][0].beside == pytest.approx(1.3)
    assert errors["1"]["median_abs_rel_error"] < 1e-9
    fitted.save(tmp_path / "m.json")
    again, _ = fit_profiles("m", "cpu", FittedModel.load(tmp_path / "m.json").samples)
    assert np.allclose(again.coefficients["1"][0].values, truth, rtol=1e-6, atol=1e-12)
    assert again.coefficients["1"][0].beside == pytest.approx(1.3)


def test_a_fit_per_kernel_regime_recovers_both_laws_and_survives_the_cost_file(tmp_path):
    """Jobs of up to 8 tokens follow one law and bigger jobs another (the engine switches kernels):
    the fit split at 8 recovers each law and each regime's own slowdowns, predicts each job from its
    own, where one line through both misses a one-row step by more than 20%."""
    import numpy as np

    from coserve.costmodel.profile import fit_profiles
    from coserve.simulator.cost import BatchShape, FittedModel

    rng = np.random.default_rng(2)
    small_law, large_law = [0.01, 0.004, 0.002, 2e-8, 1e-7], [0.09, 3e-3, 1e-3, 1e-6, 0.0]
    small = [BatchShape(int(t), int(rng.integers(1, t + 1)), float(rng.integers(10, 5000)), int(rng.integers(0, 4096)))
             for t in rng.integers(1, 9, 60)]
    large = [BatchShape(int(t), int(rng.integers(1, 32)), float(rng.integers(10**3, 10**5)), 0)
             for t in rng.integers(9, 512, 60)]
    alone = [(s, float(np.dot(small_law, s.features()))) for s in small]
    alone += [(s, float(np.dot(large_law, s.features()))) for s in large]
    # memory-bound small jobs suffer most split in lockstep, compute-bound large ones beside others
    beside = [(s, t * (1.05 if s.tokens <= 8 else 1.3)) for s, t in alone]
    split = [(s, t * (1.4 if s.tokens <= 8 else 1.02)) for s, t in alone]
    fitted, _ = fit_profiles("m", "cpu", {"1": {"alone": alone, "beside": beside, "split": split}}, bounds=(8,))
    regimes = fitted.coefficients["1"]
    assert [r.max_tokens for r in regimes] == [8, None]
    assert [(r.beside, r.split) for r in regimes] == [pytest.approx((1.05, 1.4)), pytest.approx((1.3, 1.02))]
    assert np.allclose(regimes[0].values, small_law, rtol=1e-6, atol=1e-12)
    assert np.allclose(regimes[1].values, large_law, rtol=1e-6, atol=1e-12)
    fitted.save(tmp_path / "m.json")
    one_row = BatchShape(1, 1, 300.0, 299)
    truth = np.dot(small_law, one_row.features())
    again = FittedModel.load(tmp_path / "m.json")
    assert again.seconds(one_row, "1") == pytest.approx(truth)
    assert [(r.beside, r.split) for r in again.coefficients["1"]] == [(r.beside, r.split) for r in regimes]
    single, _ = fit_profiles("m", "cpu", {"1": {"alone": alone}})
    assert abs(single.seconds(one_row, "1") / truth - 1) > 0.2


def test_a_machine_slower_than_at_profile_time_is_measured_and_simulated_at_its_speed():
    """Jobs on a 1-core lane run 1.15x slower than when profiled (a VM's drift), 2-core lanes as
    then: the probe, compared job for job with the profile's same shapes, reads 1.15 even where the
    fit is biased, and the scaled model predicts each slow job; slowdowns stay ratios."""
    import numpy as np

    from coserve.costmodel.profile import fit_profiles, speed_factor
    from coserve.simulator.cost import BatchShape

    rng = np.random.default_rng(3)
    law = [0.02, 0.003, 0.001, 1e-7, 1e-6]
    shapes = [BatchShape(int(t), int(rng.integers(1, 9)), float(rng.integers(10, 9000)), int(rng.integers(0, 512)))
              for t in rng.integers(1, 300, 40)]
    alone = [(s, float(np.dot(law, s.features())) * rng.uniform(0.8, 1.2)) for s in shapes]  # fit error
    beside = [(s, t * 1.2) for s, t in alone]
    fitted, _ = fit_profiles("m", "cpu", {"1": {"alone": alone, "beside": beside}, "2": {"alone": alone}})
    probe = [(s, t * 1.15) for s, t in alone[:10]] + [(BatchShape(999, 1, 1.0, 0), 5.0)]  # one shape unprofiled
    factor = speed_factor(probe, alone)
    assert factor == pytest.approx(1.15)
    scaled = fitted.scaled({"1": factor})
    for shape, _ in alone:
        assert scaled.seconds(shape, "1") == pytest.approx(1.15 * fitted.seconds(shape, "1"))
        assert scaled.seconds(shape, "2") == pytest.approx(fitted.seconds(shape, "2"))
    assert scaled.coefficients["1"][0].beside == fitted.coefficients["1"][0].beside
    with pytest.raises(ValueError, match="match"):
        speed_factor([(BatchShape(999, 1, 1.0, 0), 5.0)], alone)


def test_a_cost_file_from_before_regimes_loads_as_one_regime(tmp_path):
    import json

    from coserve.simulator.cost import BatchShape, FittedModel

    path = tmp_path / "old.json"
    path.write_text(json.dumps({"model": "m", "device": "cpu", "coefficients": {"1": [0.5, 0.25, 0, 0, 0]}}))
    assert FittedModel.load(path).seconds(BatchShape(4, 4, 10.0, 0), "1") == pytest.approx(1.5)


BAD_COST_FILES = [
    [1, 2],
    {"model": "m", "device": "cpu", "coefficients": [1]},
    {"model": "m", "device": "cpu", "coefficients": {"1": []}},
    {"model": "m", "device": "cpu", "coefficients": {"1": ["x"]}},
    {"model": "m", "device": "cpu", "coefficients": {"1": [{"max_tokens": None, "values": [1.0]}]}},
    {"model": "m", "device": "cpu", "coefficients": {"1": [{"max_tokens": None, "values": [1, 0, 0, 0, "nan"]}]}},
    {"model": "m", "device": "cpu",
     "coefficients": {"1": [{"max_tokens": None, "values": [1, 0, 0, 0, 0], "slowdown_beside_busy_lane": 0}]}},
]


@pytest.mark.parametrize("body", BAD_COST_FILES, ids=range(len(BAD_COST_FILES)))
def test_a_broken_cost_file_is_a_config_error(tmp_path, body):
    import json

    from coserve.errors import ConfigError
    from coserve.simulator.cost import FittedModel

    path = tmp_path / "broken.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ConfigError):
        FittedModel.load(path)


def test_a_cost_file_of_another_model_or_a_lane_size_the_machine_lacks_is_refused():
    from coserve.costmodel.profile import profile_lanes
    from coserve.errors import ConfigError
    from coserve.simulator.cost import CostRegime, FittedCost, FittedModel

    other = FittedModel("small", "cpu", {"1": [CostRegime(None, [1.0, 0, 0, 0, 0])]})
    with pytest.raises(ConfigError, match="'smollm2' was profiled for 'small'"):
        FittedCost({"smollm2": other}, ["1"])
    for sizes in ([0], [-1], [10_000], [True]):
        with pytest.raises(ConfigError, match="lane sizes"):
            profile_lanes(EngineConfig(model="random:llama-tiny-49k"), sizes)


def test_simulate_a_placement_from_the_planner(tmp_path):
    """`coserve plan` then `coserve simulate`: every request served, per-model SLOs applied, and bad
    input (a missing file, a negative scale) is a one-line error with exit code 2."""
    from pathlib import Path

    from coserve.entrypoints.cli import main

    example = Path(__file__).resolve().parent.parent / "examples" / "plan_small.yaml"
    placement = tmp_path / "placement.yaml"
    assert main(["plan", str(example), "-o", str(placement)]) == 0
    out = tmp_path / "sim.json"
    assert main(["simulate", str(placement), "--duration", "3", "--output", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    assert result["num_requests"] > 50 and result["request_throughput"] > 0
    assert result["steady_request_throughput"] > 0
    assert 0 <= result["slo_attainment"] <= 1 and 0 <= result["latency_slo_attainment"] <= 1
    # GPU lanes share one memory: a model's batch is never split across them.
    from coserve.placement.placement_file import load_placement
    from coserve.simulator.from_placement import devices_from_placement

    assert not any(d.spread_batches for d in devices_from_placement(load_placement(placement)))
    assert main(["simulate", str(tmp_path / "missing.yaml")]) == 2
    assert main(["simulate", str(placement), "--rate-scale", "-1"]) == 2
    assert main(["simulate", str(placement), "--latency-slo-scale", "0"]) == 2
    assert main(["simulate", str(placement), "--rate-scale", "nan"]) == 2
    assert main(["simulate", str(placement), "--output", str(tmp_path / "no-such-folder" / "sim.json")]) == 2


def _cut_to(placement, name: str, gpus: int):
    """The placement with the mesh holding `name` cut to its first `gpus` GPUs, `name` alone on it at
    that tensor degree (the mesh MuxServe's SLO takes a request's latency alone on)."""
    meshes = []
    for mesh in placement.meshes:
        mine = [m.model_copy(update={"tensor_parallel": gpus, "pipeline_parallel": 1})
                for m in mesh.models if m.name == name]
        meshes.append(mesh.model_copy(update={"gpus": mesh.gpus[:gpus], "models": mine}) if mine else mesh)
    return placement.model_copy(update={"meshes": meshes})


def test_muxserve_slo_base_is_what_the_simulator_gives_a_request_alone_on_its_fewest_gpus(tmp_path):
    """MuxServe's SLO measures a request against its latency alone on the fewest GPUs that hold its
    model (7B on one A100, 65B on more). The base built from the roofline (prefill interpolated
    between a few prompt lengths, a fixed decode step) must match what the event loop gives one
    request alone on a one-lane mesh of that size (chunked prefill, context growing per token), for
    short to long requests; and an older placement without `min_mesh` takes the mesh each model was
    placed on."""
    import yaml

    from coserve.entrypoints.cli import main
    from coserve.placement.placement_file import load_placement
    from coserve.simulator.from_placement import devices_from_placement, placement_latency_slos, roofline_factory
    from coserve.simulator.partition import simulate_in_parallel
    from coserve.workload.generator import WorkloadRequest

    plan = {"cluster": {"nodes": 1, "gpus_per_node": 8, "gpu": "A100-80GB"},
            "workload": {"mean_prompt_len": 256, "mean_output_len": 256}, "slo": {"scale": 8},
            "models": [{"name": "small", "model": "llama-7b", "rate": 20},
                       {"name": "huge", "model": "llama-65b", "rate": 1}]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    assert main(["plan", str(tmp_path / "plan.yaml"), "-o", str(tmp_path / "placement.yaml")]) == 0
    placement = load_placement(tmp_path / "placement.yaml")
    fewest = {m.name: m.min_mesh for m in placement.models}
    assert fewest["small"] == 1 and fewest["huge"] > 1

    def alone(placement, name: str, prompt: int, output: int) -> float:
        request = WorkloadRequest(0, name, 0.0, prompt, output)
        devices = devices_from_placement(placement, "temporal")
        (record,), _ = simulate_in_parallel(devices, roofline_factory(placement), [request], workers=1)
        return record.e2e * 1e3

    slos = placement_latency_slos(placement, scale=1.0)
    as_placed = placement_latency_slos(placement.model_copy(update={
        "models": [m.model_copy(update={"min_mesh": None}) for m in placement.models]}), scale=1.0)
    for name in ("small", "huge"):
        for prompt, output in ((16, 8), (512, 64), (1500, 200)):
            expected = alone(_cut_to(placement, name, fewest[name]), name, prompt, output)
            assert slos[name].base_ms(prompt, output) == pytest.approx(expected, rel=0.05), (name, prompt)
            assert as_placed[name].base_ms(prompt, output) == pytest.approx(
                alone(placement, name, prompt, output), rel=0.05), (name, prompt)


class _SlowedBeside:
    """Job durations and slowdowns fixed by model name, as a profiled cost file would give them."""

    def __call__(self, model, part, lane):
        return {"a": 1.0, "b": 1.0}[model]

    def interference(self, model, part, lane):
        beside = {"a": 1.5, "b": 2.0}[model]
        return beside, beside


def test_a_lane_runs_slower_only_while_another_lane_is_busy():
    """Closed form: a (1 s alone, x1.5 beside a busy lane) starts at 0, b (1 s, x2) at 0.5. a does
    half alone, the other half takes 0.75 s: ends at 1.25. b does 0.75 / 2 of its work by then and
    the remaining 0.625 alone: ends at 1.875."""
    from coserve.simulator import SimulatedLanes

    clock = VirtualClock()
    lanes = SimulatedLanes(2, clock, _SlowedBeside())
    lanes.submit(0, "a", None, [])
    assert lanes.next_event_time() == 1.0  # alone, it would end at its own duration
    clock.advance_to(0.5)
    lanes.submit(1, "b", None, [])
    assert lanes.next_event_time() == pytest.approx(1.25)
    clock.advance_to(lanes.next_event_time())
    assert [lane for lane, _ in lanes.wait()] == [0]
    assert lanes.next_event_time() == pytest.approx(1.875)
    clock.advance_to(lanes.next_event_time())
    assert [lane for lane, _ in lanes.wait()] == [1] and lanes.next_event_time() is None


class _SlowedWhenSplit(_SlowedBeside):
    def interference(self, model, part, lane):
        return {"a": 1.5, "b": 2.0}[model], {"a": 1.25, "b": 3.0}[model]


def test_the_parts_of_a_split_batch_run_at_the_split_slowdown_and_beside_others_at_the_other():
    """Closed form: a's batch split over lanes 0 and 1 (1 s alone each, x1.25 while split) ends at
    1.25 on both; then a (lane 0) beside b (lane 1), started together at 1.25, take the beside
    slowdowns: a ends at 1.25 + 1.5, b does 0.75 of its work by then, and its last quarter alone."""
    from coserve.simulator import SimulatedLanes

    clock = VirtualClock()
    lanes = SimulatedLanes(2, clock, _SlowedWhenSplit())
    lanes.submit(0, "a", None, [])
    lanes.submit(1, "a", None, [])
    clock.advance_to(lanes.next_event_time())
    assert clock.now == pytest.approx(1.25) and [lane for lane, _ in lanes.wait()] == [0, 1]
    lanes.submit(0, "a", None, [])
    lanes.submit(1, "b", None, [])
    clock.advance_to(lanes.next_event_time())
    assert clock.now == pytest.approx(2.75) and [lane for lane, _ in lanes.wait()] == [0]
    assert lanes.next_event_time() == pytest.approx(3.0)


class _RooflineLike:
    """Jobs that each know their duration alone and how much of the device's compute and memory
    bandwidth they use meanwhile, as the roofline reports them."""

    jobs = {"decode": (1.0, (0.1, 1.0)), "prefill": (1.0, (0.8, 0.1)), "half": (1.0, (0.2, 0.5))}

    def __call__(self, model, part, lane):
        return self.jobs[model][0]

    def timed(self, model, part, lane):
        return self.jobs[model]


@pytest.mark.parametrize("pair, ends", [
    # Two bandwidth-bound decodes split the bus: each at half speed, both end at 2 s.
    (("decode", "decode"), (2.0, 2.0)),
    # A compute-bound prefill beside a decode: bandwidth 0.1 + 1.0, so the prefill gets its whole
    # 0.1 and the decode runs at 0.9 until the prefill ends at 1 s (compute 0.8 + 0.1 fits), then
    # does its last tenth alone: 1.1 s.
    (("prefill", "decode"), (1.0, 1.1)),
    # Two compute-bound prefills on lanes worth 0.8 each: 1.6 of the device's compute, 0.5 each.
    (("prefill", "prefill"), (1 / 0.625, 1 / 0.625)),
    # Jobs that fit together (0.5 + 0.5 of the bus) keep their speed.
    (("half", "half"), (1.0, 1.0)),
])
def test_concurrent_lanes_share_compute_and_bandwidth_max_min_fairly(pair, ends):
    from coserve.simulator import SimulatedLanes

    clock = VirtualClock()
    lanes = SimulatedLanes(2, clock, _RooflineLike())
    for lane, model in enumerate(pair):
        lanes.submit(lane, model, None, [])
    finished = {}
    while (t := lanes.next_event_time()) is not None:
        clock.advance_to(t)
        finished.update({lane: t for lane, _ in lanes.wait()})
    assert (finished[0], finished[1]) == pytest.approx(ends)


def test_the_roofline_reports_the_share_of_the_device_a_job_uses():
    from coserve.costmodel.hardware import get_hardware
    from coserve.placement.shapes import model_spec
    from coserve.simulator.cost import BatchShape, MeshModel, RooflineCost

    hw = get_hardware("A100-80GB")
    cost = RooflineCost({"m": MeshModel(model_spec("llama-7b", "m"), "float16")}, hw, [1.0])
    decode = BatchShape(tokens=64, sampled=64, attention_pairs=64 * 500.0, kv_read=64 * 500)
    seconds, (compute, bandwidth) = cost.seconds_and_demands("m", decode, 1.0)
    assert bandwidth == pytest.approx(1.0) and compute < 0.2  # a decode step is bandwidth bound
    prefill = BatchShape(tokens=2048, sampled=1, attention_pairs=2048 * 1024.0, kv_read=0)
    seconds, (compute, bandwidth) = cost.seconds_and_demands("m", prefill, 0.5)
    assert compute == pytest.approx(0.5) and bandwidth < 0.2  # a prefill fills its half of the SMs


def test_a_profile_beside_a_neighbour_lane_times_only_the_profiled_models_jobs(monkeypatch):
    """The profiled model runs on lane 0 while a neighbour model keeps lane 1 of the same device
    busy: every timed job is the profiled model's (their new tokens add up to its prompts and
    outputs, less the untimed warm-up job), and the run ends when the profiled requests do."""
    import coserve.costmodel.profile as prof
    from coserve.engine.config import EngineConfig

    lengths = [(40, 6), (25, 9), (60, 3)]
    monkeypatch.setattr(prof, "shape_mix", lambda seed, max_prompt: [(4, lengths)])
    config = EngineConfig(model="random:llama-tiny", name="m", max_num_seqs=4, max_num_batched_tokens=128)
    neighbour = EngineConfig(model="random:llama-tiny", name="other", max_num_seqs=4, max_num_batched_tokens=128)
    cores = prof.available_cores()
    samples = prof.profile(config, cores[:1], neighbour=neighbour, neighbour_cores=cores[-1:])
    # one prefill job of all three prompts (the untimed warm-up), then one decode row per output token
    assert sum(shape.tokens for shape, _ in samples) == sum(out - 1 for _, out in lengths)
    assert all(seconds > 0 for _, seconds in samples)


def test_a_split_profile_times_each_batch_spread_over_two_lanes_once(monkeypatch):
    """Three requests (outputs 6, 9, 3) on a device that spreads every batch of two or more rows
    over two lanes: after the (untimed) prefill, decode batches of 3, 3, 2, 2, 2 rows are split and
    timed once each by their largest part (2, 2, 1, 1, 1 rows); the one-row batches are not."""
    import coserve.costmodel.profile as prof
    from coserve.engine.config import EngineConfig

    monkeypatch.setattr(prof, "shape_mix", lambda seed, max_prompt: [(4, [(40, 6), (25, 9), (60, 3)])])
    config = EngineConfig(model="random:llama-tiny", name="m", max_num_seqs=4, max_num_batched_tokens=128)
    cores = prof.available_cores()
    samples = prof.profile_split(config, [cores[:1], cores[-1:]])
    assert [shape.sampled for shape, _ in samples] == [2, 2, 1, 1, 1]
    assert all(seconds > 0 for _, seconds in samples)


class BlockingSimLanes:
    """Simulated lanes that block as real ones do: a wait moves the clock to the next job's end."""

    def __init__(self, inner, clock: VirtualClock):
        self.inner = inner
        self.clock = clock
        self.num_lanes = inner.num_lanes

    def submit(self, lane, model, engine, part):
        self.inner.submit(lane, model, engine, part)

    def wait(self):
        self.clock.advance_to(self.inner.next_event_time())
        return self.inner.wait()

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("spread", [False, True])
def test_the_job_meter_reads_how_much_slower_than_their_cost_model_the_lanes_ran(spread):
    """Lanes whose jobs take 1.7x their fitted cost, with the fitted slowdowns beside a busy lane
    (1.3) and split over lanes (1.6) on top: the meter sees only the jobs' spans on the clock, as
    in a real run, and must undo the slowdowns to read 1.7 (2.0+ if it left them in). The replay
    loop idles between bursts of arrivals, so spans must not include that sleep either."""
    from coserve.bench.in_process import replay
    from coserve.costmodel.job_meter import JobMeter
    from coserve.simulator.cost import CostRegime, FittedCost, FittedModel

    regime = [CostRegime(None, [0.004, 2e-4, 5e-4, 1e-7, 0.0], beside=1.3, split=1.6)]
    fitted = {name: FittedModel(name, "cpu", {"1": regime}) for name, *_ in MODELS}
    sim_models = [SimModel(n, m, dtype="float32", rate=rate, max_num_seqs=4, max_num_batched_tokens=64)
                  for n, m, rate, _ in MODELS]
    spec = SimDeviceSpec("cpu0", sim_models, 8 << 30, "mux", [0.5, 0.5], device="cpu", spread_batches=spread)
    slower = FittedCost({n: m.scaled({"1": 1.7}) for n, m in fitted.items()}, ["1", "1"])
    cluster = SimCluster([spec], lambda device, specs: slower)
    device, clock = cluster.devices["cpu0"], cluster.clock
    device.executor = BlockingSimLanes(device.executor, clock)
    meter = JobMeter(device, FittedCost(fitted, ["1", "1"]))

    requests = [WorkloadRequest(i, r.model, r.arrival_time + 5.0 * (i % 3), r.input_len, r.output_len)
                for i, r in enumerate(_requests())]
    records = replay(device, requests, "m", clock=clock, sleep=lambda s: clock.advance_to(clock.now + s))
    assert all(r.success and r.output_tokens == r.output_len for r in records)
    assert any(a.lane != b.lane and a.start < b.end and b.start < a.end for a in meter.jobs for b in meter.jobs)
    assert meter.speeds() == pytest.approx({"1": 1.7})
