"""Simulated devices from a placement file (`coserve plan -o`), and the roofline costs for them.

A mesh becomes one simulated device: its GPUs' memory (less each GPU's process overhead) is the
budget, the models' tensor degree enters the cost model, and the policy decides the lanes:
`mux` two lanes (MuxServe's prefill and decode partitions), sized by the mesh's largest prefill
share; `temporal` one lane holding the whole mesh; `spatial` one lane per model, by its share.
"""

from __future__ import annotations

from coserve.costmodel.hardware import HardwareSpec, get_hardware
from coserve.engine.multiplexer import POLICIES
from coserve.errors import ConfigError
from coserve.execution.models.spec import ModelSpec
from coserve.metrics import SLO
from coserve.placement.placement_file import PlacedMesh, PlacementFile
from coserve.simulator.cluster import SimDeviceSpec, SimModel
from coserve.simulator.cost import MeshModel, RooflineCost
from coserve.simulator.lanes import JobCost


def placement_slos(placement: PlacementFile) -> dict[str, SLO]:
    return {m.name: SLO(ttft_ms=m.ttft_slo_ms, tpot_ms=m.tpot_slo_ms) for m in placement.models}


def devices_from_placement(placement: PlacementFile, policy: str = "mux") -> list[SimDeviceSpec]:
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    hw = get_hardware(placement.cluster.gpu, placement.cluster.interconnect)
    slos = placement_slos(placement)
    return [_device(mesh, hw, policy, slos) for mesh in placement.meshes if mesh.models]


def _device(mesh: PlacedMesh, hw: HardwareSpec, policy: str, slos: dict[str, SLO]) -> SimDeviceSpec:
    models = [SimModel(m.name, m.model, m.dtype, max(m.rate, 1e-9), slos.get(m.name),
                       max_num_seqs=m.max_num_seqs) for m in mesh.models]
    budget = len(mesh.gpus) * (hw.memory_bytes - hw.process_overhead_bytes)
    if policy == "temporal":
        shares = [1.0]
    elif policy == "spatial":
        total = sum(m.decode_share for m in mesh.models)
        shares = [m.decode_share / total for m in mesh.models]
    else:
        prefill = max(m.prefill_share for m in mesh.models)
        shares = [prefill, max(1.0 - prefill, prefill)]
    # GPU lanes are SM partitions over one memory: a model's batch split across lanes reads its
    # weights once per lane, and decode is bandwidth bound, so a batch stays on one lane (MuxServe
    # runs one decode job per LLM). CPU devices keep spreading: there a lane's cores are its compute.
    return SimDeviceSpec(f"mesh{mesh.id}", models, budget, policy, shares, spread_batches=False, device="cuda")


def roofline_factory(placement: PlacementFile):
    """`SimCluster`'s cost factory: each device's models with their tensor and pipeline degrees."""
    hw = get_hardware(placement.cluster.gpu, placement.cluster.interconnect)
    degrees = {(f"mesh{mesh.id}", m.name): (m.tensor_parallel, m.pipeline_parallel)
               for mesh in placement.meshes for m in mesh.models}

    def cost_for(device: SimDeviceSpec, specs: dict[str, ModelSpec]) -> JobCost:
        models = {m.name: MeshModel(specs[m.name], m.dtype, *degrees[device.name, m.name]) for m in device.models}
        return RooflineCost(models, hw, device.lane_shares)
    return cost_for
