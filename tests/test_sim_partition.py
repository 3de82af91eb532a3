"""Simulating independent device groups in parallel gives the records one event loop gives; meshes
with pipeline stages are timed by the roofline's pipeline formula."""

from __future__ import annotations

import dataclasses

import pytest

from coserve.costmodel.hardware import get_hardware
from coserve.costmodel.roofline import decode_seconds
from coserve.metrics import SLO
from coserve.placement.shapes import model_spec
from coserve.simulator import BatchShape, MeshModel, RooflineCost, SimCluster, SimDeviceSpec, SimModel
from coserve.simulator.partition import group_runs, independent_groups, simulate_in_parallel
from coserve.workload import LengthSpec, WorkloadSpec, generate_workload

GiB = 1 << 30
HW = get_hardware("A100-80GB", "nvlink")


def _cost_for(device: SimDeviceSpec, specs):
    return RooflineCost({m.name: MeshModel(specs[m.name], m.dtype) for m in device.models}, HW, device.lane_shares)


def _devices() -> list[SimDeviceSpec]:
    slo = SLO(ttft_ms=400, tpot_ms=60)
    a, b, c, d = (SimModel(name, "llama-7b", rate=rate, slo=slo, max_num_seqs=32)
                  for name, rate in [("a", 6.0), ("b", 4.0), ("c", 3.0), ("d", 2.0)])
    # "b" has replicas on two meshes, so mesh0 and mesh1 form one group; mesh2 and mesh3 stand alone
    return [SimDeviceSpec("mesh0", [a, b], 40 * GiB, "mux", [0.6, 0.6]),
            SimDeviceSpec("mesh1", [b], 20 * GiB, "mux", [0.6, 0.6]),
            SimDeviceSpec("mesh2", [c], 20 * GiB, "mux", [0.6, 0.6]),
            SimDeviceSpec("mesh3", [d], 20 * GiB, "temporal", [1.0])]


def _workload():
    spec = WorkloadSpec(("a", "b", "c", "d"), 120, model_rates=(6.0, 4.0, 3.0, 2.0), seed=3,
                        lengths=LengthSpec("sharegpt-lengths", max_input_len=512, max_output_len=128))
    return generate_workload(spec)


def test_groups_are_the_devices_joined_by_shared_models():
    groups = independent_groups(_devices())
    assert [[d.name for d in group] for group in groups] == [["mesh0", "mesh1"], ["mesh2"], ["mesh3"]]
    runs = group_runs(_devices(), _workload())
    assert len(runs) == 3
    assert [run.work for run in runs] == sorted((run.work for run in runs), reverse=True)
    assert sorted(d.name for run in runs for d in run.devices) == ["mesh0", "mesh1", "mesh2", "mesh3"]
    assert sum(len(run.requests) for run in runs) == len(_workload())
    for run in runs:  # a request goes with the devices holding its model
        held = {m.name for d in run.devices for m in d.models}
        assert {r.model for r in run.requests} <= held


@pytest.mark.parametrize("workers", [2, 3])
def test_parallel_groups_give_the_records_of_one_event_loop(workers):
    one_loop = SimCluster(_devices(), _cost_for)
    expected = one_loop.run(_workload())
    records, end = simulate_in_parallel(_devices(), _cost_for, _workload(), workers)
    assert end == one_loop.clock.now
    assert len(records) == len(expected) == 120
    by_id = {r.request_id: r for r in records}
    for record in expected:
        assert dataclasses.asdict(by_id[record.request_id]) == dataclasses.asdict(record)
    assert all(r.success for r in expected)


def test_pipeline_stages_in_a_simulated_mesh_follow_the_roofline():
    spec = model_spec("llama-13b", "m")
    shape = BatchShape(tokens=16, sampled=16, attention_pairs=16 * 700.0, kv_read=16 * 700)
    for tp, pp in [(1, 1), (2, 1), (1, 2), (2, 2)]:
        cost = RooflineCost({"m": MeshModel(spec, "float16", tp, pp)}, HW, [0.5])
        expected = decode_seconds(spec, "float16", HW, 16, 700.0, share=0.5, tp=tp, pp=pp)
        assert cost.seconds("m", shape, 0.5) == pytest.approx(expected, rel=1e-12)
    staged = RooflineCost({"m": MeshModel(spec, "float16", 1, 2)}, HW, [1.0]).seconds("m", shape, 1.0)
    single = RooflineCost({"m": MeshModel(spec, "float16", 1, 1)}, HW, [1.0]).seconds("m", shape, 1.0)
    assert staged > single  # the same work in sequence, plus the send between the stages
