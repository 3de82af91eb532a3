"""Simulated devices from a placement file (`coserve plan -o`), and the roofline costs for them.

A mesh becomes one simulated device: its GPUs' memory (less each GPU's process overhead) is the
budget, the models' tensor degree enters the cost model, and the policy decides the lanes:
`mux` two lanes (MuxServe's prefill and decode partitions), sized by the mesh's largest prefill
share; `temporal` one lane holding the whole mesh; `spatial` one lane per model, by its share.
"""

from __future__ import annotations

from coserve.costmodel.hardware import HardwareSpec, get_hardware
from coserve.costmodel.roofline import decode_seconds, prefill_seconds
from coserve.engine.multiplexer import POLICIES
from coserve.errors import ConfigError
from coserve.execution.models.spec import ModelSpec
from coserve.metrics import SLO, LatencySLO
from coserve.placement.placement_file import PlacedMesh, PlacementFile
from coserve.placement.shapes import model_spec
from coserve.simulator.cluster import SimDeviceSpec, SimModel
from coserve.simulator.cost import MeshModel, RooflineCost
from coserve.simulator.lanes import JobCost

PROBE_PROMPTS = (16, 128, 512, 2048)  # prompt lengths the solo prefill is taken at (and interpolated between)
# cached tokens of the solo decode step: the paper's ShareGPT means, a 161-token prompt + half a 338-token answer
DECODE_CONTEXT = 330


def placement_hardware(placement: PlacementFile) -> HardwareSpec:
    cluster = placement.cluster
    return get_hardware(cluster.gpu, cluster.interconnect, cluster.hardware)


def placement_slos(placement: PlacementFile) -> dict[str, SLO]:
    return {m.name: SLO(ttft_ms=m.ttft_slo_ms, tpot_ms=m.tpot_slo_ms) for m in placement.models}


def placement_latency_slos(placement: PlacementFile, scale: float) -> dict[str, LatencySLO]:
    """MuxServe's SLO per model: end-to-end latency within `scale` x the same request alone on the
    fewest GPUs that hold the model, all of them (as MuxServe profiles its base: 7B and 13B on one
    GPU, 30B on four, 65B on eight), from the roofline: prefill at a few prompt lengths, and one
    decode step at batch 1. A placement without `min_mesh` (an older file) uses the smallest mesh
    the model was placed on."""
    hw = placement_hardware(placement)
    copies = [m for mesh in placement.meshes for m in mesh.models]
    largest_first = sorted(copies, key=lambda m: -m.tensor_parallel * m.pipeline_parallel)
    placed = {m.name: m for m in largest_first}  # the last copy of a name, on its smallest mesh, stays
    slos = {}
    for summary in placement.models:
        m = placed.get(summary.name)
        if m is None:
            if summary.replicas:
                raise ConfigError(f"model {summary.name!r} lists replicas {summary.replicas} but no mesh holds it")
            continue
        spec = model_spec(m.model, m.name)
        if summary.min_mesh:
            degrees = dict(tp=summary.min_mesh, pp=1)
        else:
            degrees = dict(tp=m.tensor_parallel, pp=m.pipeline_parallel)
        prefill = tuple((n, 1e3 * prefill_seconds(spec, m.dtype, hw, n, (n - 1) / 2, **degrees)) for n in PROBE_PROMPTS)
        decode = 1e3 * decode_seconds(spec, m.dtype, hw, 1, DECODE_CONTEXT, **degrees)
        slos[summary.name] = LatencySLO(prefill, decode, scale)
    return slos


def devices_from_placement(placement: PlacementFile, policy: str = "mux") -> list[SimDeviceSpec]:
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    hw = placement_hardware(placement)
    for mesh in placement.meshes:  # degrees the model's heads and layers cannot take fail here, not mid-run
        for m in mesh.models:
            decode_seconds(model_spec(m.model, m.name), m.dtype, hw, 1, 1, tp=m.tensor_parallel, pp=m.pipeline_parallel)
    slos = placement_slos(placement)
    return [_device(mesh, hw, policy, slos) for mesh in placement.meshes if mesh.models]


def _device(mesh: PlacedMesh, hw: HardwareSpec, policy: str, slos: dict[str, SLO]) -> SimDeviceSpec:
    models = [SimModel(m.name, m.model, m.dtype, max(m.rate, 1e-9), slos.get(m.name),
                       max_num_seqs=m.max_num_seqs) for m in mesh.models]
    budget = int(len(mesh.gpus) * (hw.memory_bytes - hw.process_overhead_bytes))
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
    hw = placement_hardware(placement)
    degrees = {(f"mesh{mesh.id}", m.name): (m.tensor_parallel, m.pipeline_parallel)
               for mesh in placement.meshes for m in mesh.models}

    def cost_for(device: SimDeviceSpec, specs: dict[str, ModelSpec]) -> JobCost:
        models = {m.name: MeshModel(specs[m.name], m.dtype, *degrees[device.name, m.name]) for m in device.models}
        return RooflineCost(models, hw, device.lane_shares)
    return cost_for
