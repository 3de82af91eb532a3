"""A search's layout -> the PlacementFile with its estimates, and the table `coserve plan` prints."""

from __future__ import annotations

import math

from coserve.costmodel.hardware import overrides_of
from coserve.placement.placement_file import (
    ClusterSummary,
    ModelSummary,
    PlacedMesh,
    PlacedModel,
    PlacementFile,
    Totals,
)
from coserve.placement.problem import Problem
from coserve.placement.search import Evaluator, Layout
from coserve.placement.unit import MemberEstimate


def build_placement(problem: Problem, layout: Layout, evaluator: Evaluator, strategy: str,
                    seconds: float) -> PlacementFile:
    meshes = []
    for d, mesh in enumerate(layout.meshes):
        key = layout.key(d)
        estimate = evaluator.unit(key) if key[1] else None
        if estimate is None:
            continue
        placed = [_placed_model(member, mesh.size) for member in estimate.members]
        meshes.append(PlacedMesh(id=len(meshes), node=mesh.node, gpus=list(mesh.gpus),
                                 est_throughput=estimate.throughput, models=placed))
    models = _model_summaries(problem, meshes)
    used = {g for m in meshes for g in m.gpus}
    c = problem.cluster
    rate = sum(m.rate for m in problem.models)
    goodput = sum(s.rate * s.est_slo_attainment for s in models)
    totals = Totals(rate=rate, est_throughput=sum(s.est_throughput for s in models), est_goodput=goodput,
                    est_slo_attainment=goodput / rate, gpus_used=len(used), plan_seconds=seconds)
    return PlacementFile(
        strategy=strategy, objective=problem.settings.objective,
        cluster=ClusterSummary(nodes=c.nodes, gpus_per_node=c.gpus_per_node, gpu=c.hw.name,
                               interconnect=c.hw.interconnect, hardware=overrides_of(c.hw)),
        totals=totals, meshes=meshes, models=models,
        idle_gpus=sorted(set(range(c.num_gpus)) - used))


def _placed_model(member: MemberEstimate, size: int) -> PlacedModel:
    m = member.model
    return PlacedModel(
        name=m.name, model=m.reference, dtype=m.dtype, tensor_parallel=size, rate=member.rate,
        prefill_share=member.prefill_share, decode_share=member.decode_share,
        kv_quota_bytes=int(member.kv_quota_bytes), kv_quota_tokens=member.kv_quota_tokens,
        max_num_seqs=max(1, member.max_batch), est_throughput=member.served, est_ttft_ms=member.ttft * 1e3,
        est_tpot_ms=None if math.isinf(member.tpot) else member.tpot * 1e3,
        est_slo_attainment=min(1.0, member.slo_attainment))


def _model_summaries(problem: Problem, meshes: list[PlacedMesh]) -> list[ModelSummary]:
    out = []
    for m in problem.models:
        copies = [(mesh.id, p) for mesh in meshes for p in mesh.models if p.name == m.name]
        served = sum(p.est_throughput for _, p in copies)
        good = sum(p.rate * p.est_slo_attainment for _, p in copies)
        out.append(ModelSummary(
            name=m.name, rate=m.rate, replicas=[mesh_id for mesh_id, _ in copies], est_throughput=served,
            est_slo_attainment=good / m.rate,
            ttft_slo_ms=None if m.ttft_slo is None else m.ttft_slo * 1e3,
            tpot_slo_ms=None if m.tpot_slo is None else m.tpot_slo * 1e3, min_mesh=m.min_mesh))
    return out


def format_table(placement: PlacementFile) -> str:
    """Meshes with their models, then one totals line."""
    header = (f"{'mesh':>4} {'node':>4} {'gpus':<12} {'model':<20} {'tp':>2} {'rate':>8} {'served':>8} "
              f"{'prefill':>7} {'decode':>6} {'kv tok':>8} {'tpot ms':>8} {'slo':>5}")
    lines = [header, "-" * len(header)]
    for mesh in placement.meshes:
        gpus = f"{mesh.gpus[0]}-{mesh.gpus[-1]}" if len(mesh.gpus) > 1 else str(mesh.gpus[0])
        for i, p in enumerate(mesh.models):
            where = f"{mesh.id:>4} {mesh.node:>4} {gpus:<12}" if i == 0 else " " * 22
            tpot = "inf" if p.est_tpot_ms is None else f"{p.est_tpot_ms:.1f}"
            lines.append(f"{where} {p.name[:20]:<20} {p.tensor_parallel:>2} {p.rate:>8.2f} {p.est_throughput:>8.2f} "
                         f"{p.prefill_share:>7.2f} {p.decode_share:>6.2f} {p.kv_quota_tokens:>8} {tpot:>8} "
                         f"{p.est_slo_attainment:>5.2f}")
    t = placement.totals
    lines.append("-" * len(header))
    lines.append(f"{placement.strategy} ({placement.objective}): rate {t.rate:.2f} req/s, est. throughput "
                 f"{t.est_throughput:.2f} req/s, goodput {t.est_goodput:.2f} req/s, SLO attainment "
                 f"{t.est_slo_attainment:.1%}, {t.gpus_used} GPUs used, planned in {t.plan_seconds:.2f} s")
    if placement.idle_gpus:
        lines.append(f"idle GPUs: {placement.idle_gpus}")
    lines.append(f"estimates: {placement.estimates}")
    return "\n".join(lines)
