"""Estimated throughput and SLO attainment of an LLM unit: a mesh of n GPUs and the models on it.

Every model on a mesh runs with tensor degree n and has a prefill job and a decode job (MuxServe's
split). The unit is a fluid model of four resources, each with capacity 1 (a fraction of time):

- compute and memory bandwidth of the devices, shared by every job (prefill jobs are compute bound,
  decode jobs bandwidth bound, so colocated jobs overlap on them);
- the prefill lane: prefills of all colocated models take turns (MuxServe runs them one at a time);
- each model's decode lane: one batch in flight, stepping at the roofline duration of its batch.

Serving one request of model i costs, per device: its prefill (batched up to the token budget
under load) and output_len decode steps' worth of a full batch, whose size the model's KV quota
bounds. The unit serves a fraction theta_i of model i's rate: water-filling gives every model the
same fraction until a shared resource runs out (or its own decode lane caps it), then models may
go up to `fairness_bound` above the common level, cheapest first. Latency: TTFT is the prefill
time on the prefill lane's share plus an M/M/1 waiting tail; TPOT follows from Little's law on
the bandwidth the other jobs leave. The SLO attainment of a model is theta_i x P(TTFT within its
target) x [TPOT within its target]. It is an analytic estimate, not a simulation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from coserve.costmodel.hardware import HardwareSpec
from coserve.costmodel.roofline import JobCost, bandwidth_fraction, decode_cost, prefill_cost
from coserve.placement import memory
from coserve.placement.config import PlannerConfig
from coserve.placement.problem import Cluster, ModelDemand

# A lane kept busier than this queues its work; shares are sized so demand fills at most 80% of it.
LANE_TARGET_UTILISATION = 0.8
# Shares step in 5% (CUDA MPS takes whole percentages; coarser steps keep plans readable) and a lane
# keeps at least 10% so it always makes progress.
SHARE_STEP = 0.05
MIN_SHARE = 0.1
# Lanes may add up to 120% of a device: jobs rarely peak together (MuxServe's overload threshold of 20).
LANE_OVERLOAD = 0.2


@dataclass(frozen=True)
class ModelOnMesh:
    """Rate-independent, per-device costs of one model on a mesh of `tp` GPUs."""

    model: ModelDemand
    tp: int
    peak_flops: float
    weight_bytes: float
    reserve_bytes: float
    kv_bytes_per_token: float
    resident_tokens: float  # KV tokens a decoding request holds on average: prompt + half the output
    min_kv_tokens: float  # room for one whole mean request
    prefill: JobCost  # per request, prompts batched up to the token budget
    prefill_one: JobCost  # one prompt alone
    decode_flops_per_seq: float  # a decode step of batch b: b x this
    decode_fixed_bytes: float  # weights read once per step
    decode_bytes_per_seq: float  # KV read and written per sequence
    decode_comm_fixed: float  # seconds of all-reduce latency per step
    decode_comm_per_seq: float  # seconds of all-reduce transfer per sequence

    @classmethod
    def build(cls, model: ModelDemand, tp: int, cluster: Cluster, settings: PlannerConfig) -> ModelOnMesh:
        spec, dtype, hw = model.spec, model.dtype, cluster.hw
        prompt, context = model.prompt_len, model.prompt_len + model.output_len / 2
        per_job = max(1, int(settings.max_num_batched_tokens // prompt))
        batched = prefill_cost(spec, dtype, hw, max(1, round(per_job * prompt)), (prompt - 1) / 2, tp)
        one = decode_cost(spec, dtype, hw, 1, context, tp)
        two = decode_cost(spec, dtype, hw, 2, context, tp)  # costs are linear in batch: two points fix them
        return cls(
            model=model, tp=tp, peak_flops=hw.flops(dtype),
            weight_bytes=memory.weight_bytes(spec, dtype, tp),
            reserve_bytes=memory.reserve_bytes(spec, dtype, tp, hw, settings.max_num_batched_tokens,
                                               settings.max_num_seqs),
            kv_bytes_per_token=memory.kv_bytes_per_token(spec, dtype, tp),
            resident_tokens=context, min_kv_tokens=model.prompt_len + model.output_len,
            prefill=JobCost(batched.flops / per_job, batched.bytes / per_job, batched.comm_seconds / per_job),
            prefill_one=prefill_cost(spec, dtype, hw, max(1, round(prompt)), (prompt - 1) / 2, tp),
            decode_flops_per_seq=one.flops,
            decode_fixed_bytes=2 * one.bytes - two.bytes,
            decode_bytes_per_seq=two.bytes - one.bytes,
            decode_comm_fixed=2 * one.comm_seconds - two.comm_seconds,
            decode_comm_per_seq=two.comm_seconds - one.comm_seconds,
        )

    def step_seconds(self, batch: float, bandwidth: float, share: float) -> float:
        """One decode step of `batch` sequences drawing `bandwidth` bytes/s on `share` of the compute."""
        compute = batch * self.decode_flops_per_seq / (self.peak_flops * share)
        memory_time = (self.decode_fixed_bytes + batch * self.decode_bytes_per_seq) / bandwidth
        return max(compute, memory_time) + self.decode_comm_fixed + batch * self.decode_comm_per_seq


@dataclass(frozen=True)
class MemberEstimate:
    """One model (replica) on a unit."""

    model: ModelDemand
    rate: float  # requests/s sent to this replica
    served: float  # requests/s it can serve
    kv_quota_bytes: float  # per device
    kv_quota_tokens: int
    max_batch: int
    prefill_share: float
    decode_share: float
    ttft: float  # seconds, the prefill alone (waiting excluded)
    tpot: float  # seconds
    slo_attainment: float  # fraction of this replica's requests served within the SLO


@dataclass(frozen=True)
class UnitEstimate:
    size: int
    members: tuple[MemberEstimate, ...]
    load: float  # busiest resource's utilisation, shared or a decode lane: a tie-breaker between meshes

    @property
    def throughput(self) -> float:
        return sum(m.served for m in self.members)

    @property
    def goodput(self) -> float:
        return sum(m.rate * m.slo_attainment for m in self.members)

    def score(self, objective: str) -> float:
        return self.goodput if objective == "slo" else self.throughput


def estimate_unit(members: Sequence[tuple[ModelOnMesh, float]], cluster: Cluster,
                  settings: PlannerConfig) -> UnitEstimate | None:
    """The unit's estimate for (model on mesh, rate) pairs, or None when their memory does not fit."""
    quotas = kv_quotas(members, cluster.usable_bytes_per_gpu)
    if quotas is None:
        return None
    mms = [m for m, _ in members]
    rates = [r for _, r in members]
    batches = [min(settings.max_num_seqs, q / (m.kv_bytes_per_token * m.resident_tokens))
               for m, q in zip(mms, quotas)]
    hw = cluster.hw
    compute = [(m.prefill.flops + m.model.output_len * m.decode_flops_per_seq) / m.peak_flops for m in mms]
    bandwidth = [(m.prefill.bytes + m.model.output_len * (m.decode_fixed_bytes / b + m.decode_bytes_per_seq))
                 / hw.memory_bandwidth for m, b in zip(mms, batches)]
    prefill_lane = [m.prefill.seconds(hw, m.model.dtype) for m in mms]
    decode_lane = [m.model.output_len * m.step_seconds(b, hw.memory_bandwidth, 1.0) / b
                   for m, b in zip(mms, batches)]
    caps = [min(1.0, 1.0 / (r * d)) for r, d in zip(rates, decode_lane)]
    rows = [compute, bandwidth, prefill_lane]
    fractions = water_fill(rates, rows, caps)
    fractions = fairness_boost(rates, rows, caps, fractions, settings.fairness_bound)
    served = [r * f for r, f in zip(rates, fractions)]
    load = max([sum(x * a for x, a in zip(served, row)) for row in rows] + [x * d for x, d in zip(served, decode_lane)])
    members_out = tuple(_members(mms, rates, served, quotas, batches, bandwidth, cluster))
    return UnitEstimate(mms[0].tp, members_out, load)


def kv_quotas(members: Sequence[tuple[ModelOnMesh, float]], usable_bytes: float) -> list[float] | None:
    """KV bytes per device of each model: one whole request each, the rest by KV demand.

    Demand is the KV a model keeps busy, by Little's law proportional to rate x output length x
    resident tokens x KV bytes per token.
    """
    free = usable_bytes - sum(m.weight_bytes + m.reserve_bytes for m, _ in members)
    floors = [m.min_kv_tokens * m.kv_bytes_per_token for m, _ in members]
    spare = free - sum(floors)
    if spare < 0:
        return None
    demands = [r * m.model.output_len * m.resident_tokens * m.kv_bytes_per_token for m, r in members]
    total = sum(demands)
    return [f + spare * d / total for f, d in zip(floors, demands)]


def water_fill(rates: Sequence[float], rows: Sequence[Sequence[float]], caps: Sequence[float]) -> list[float]:
    """Largest common fraction theta (each model at min(cap, theta)) that keeps every row's load <= 1."""
    level = 1.0
    for row in rows:
        level = min(level, _row_level(rates, row, caps))
    return [min(c, level) for c in caps]


def _row_level(rates: Sequence[float], row: Sequence[float], caps: Sequence[float]) -> float:
    """Highest theta with sum_i rate_i x row_i x min(cap_i, theta) <= 1 (a piecewise-linear fill)."""
    weights = [r * a for r, a in zip(rates, row)]
    order = sorted(range(len(caps)), key=caps.__getitem__)
    fixed, slope = 0.0, sum(weights)
    for i in order:
        if slope <= 0:
            return 1.0
        level = (1.0 - fixed) / slope
        if level <= caps[i]:
            return level
        fixed += weights[i] * caps[i]
        slope -= weights[i]
    return 1.0


def fairness_boost(rates: Sequence[float], rows: Sequence[Sequence[float]], caps: Sequence[float],
                   fractions: list[float], bound: float) -> list[float]:
    """Spend leftover capacity raising models up to `bound` above the common level, cheapest first."""
    level = max(fractions)
    loads = [sum(r * a * f for r, a, f in zip(rates, row, fractions)) for row in rows]
    if bound <= 0 or level >= 1.0 or max(loads) < 1.0 - 1e-9:
        return fractions
    out = list(fractions)
    for i in sorted(range(len(rates)), key=lambda i: max(rates[i] * row[i] for row in rows)):
        room = min(caps[i], level + bound) - out[i]
        for row, load in zip(rows, loads):
            cost = rates[i] * row[i]
            if cost > 0:
                room = min(room, (1.0 - load) / cost)
        if room > 0:
            out[i] += room
            loads = [load + rates[i] * row[i] * room for row, load in zip(rows, loads)]
    return out


def _members(mms: list[ModelOnMesh], rates: list[float], served: list[float], quotas: list[float],
             batches: list[float], bandwidth: list[float], cluster: Cluster) -> list[MemberEstimate]:
    hw = cluster.hw
    decode_shares = [_decode_share(m, x, b, hw) for m, x, b in zip(mms, served, batches)]
    prefill_share = _round_share(1.0 + LANE_OVERLOAD - sum(decode_shares))
    prefill_times = [m.prefill_one.seconds(hw, m.model.dtype, prefill_share) for m in mms]
    busy = sum(x * m.prefill.seconds(hw, m.model.dtype, prefill_share) for m, x in zip(mms, served))
    mean_prefill = sum(x * p for x, p in zip(served, prefill_times)) / max(sum(served), 1e-12)
    used_bandwidth = [x * b for x, b in zip(served, bandwidth)]
    out = []
    for i, m in enumerate(mms):
        others = sum(used_bandwidth) - used_bandwidth[i]
        tpot = _tpot(m, served[i], batches[i], decode_shares[i], others, cluster)
        within = _ttft_within(m.model.ttft_slo, prefill_times[i], busy, mean_prefill)
        within *= 1.0 if m.model.tpot_slo is None or tpot <= m.model.tpot_slo else 0.0
        out.append(MemberEstimate(
            m.model, rates[i], served[i], quotas[i], int(quotas[i] // m.kv_bytes_per_token), int(batches[i]),
            prefill_share, decode_shares[i], prefill_times[i], tpot, served[i] / rates[i] * within))
    return out


def _decode_share(m: ModelOnMesh, served: float, batch: float, hw: HardwareSpec) -> float:
    """Enough compute for the decode FLOPs and to draw the bandwidth its steps need, and, when the
    model has a TPOT target, enough that a step at the batch Little's law gives fits in it."""
    tokens = served * m.model.output_len
    flops_need = tokens * m.decode_flops_per_seq / m.peak_flops
    bytes_need = tokens * (m.decode_fixed_bytes / batch + m.decode_bytes_per_seq) / hw.memory_bandwidth
    share = max(flops_need, bytes_need * hw.bandwidth_saturation_share) / LANE_TARGET_UTILISATION
    target = m.model.tpot_slo
    if target is not None:
        steps_batch = min(batch, max(1.0, tokens * target))
        compute_time = target - m.decode_comm_fixed - steps_batch * m.decode_comm_per_seq
        if compute_time > 0:
            step_bytes = m.decode_fixed_bytes + steps_batch * m.decode_bytes_per_seq
            share = max(share, min(1.0, hw.bandwidth_saturation_share * step_bytes / (compute_time *
                                                                                        hw.memory_bandwidth)),
                        min(1.0, steps_batch * m.decode_flops_per_seq / (compute_time * m.peak_flops)))
    return _round_share(share)


def _round_share(share: float) -> float:
    steps = math.ceil(round(share / SHARE_STEP, 6))
    return min(1.0, max(MIN_SHARE, steps * SHARE_STEP))


def _tpot(m: ModelOnMesh, served: float, max_batch: float, share: float, others: float, cluster: Cluster) -> float:
    """Step time where the batch (Little: served x output_len x step time) meets the bandwidth left."""
    hw = cluster.hw
    available = hw.memory_bandwidth * max(0.0, min(bandwidth_fraction(hw, share), 1.0 - others))
    headroom = available - served * m.model.output_len * m.decode_bytes_per_seq
    if headroom <= 0:
        return math.inf
    batch = min(max_batch, max(1.0, served * m.model.output_len * m.decode_fixed_bytes / headroom))
    return m.step_seconds(batch, available, share)


def _ttft_within(target: float | None, prefill: float, busy: float, mean_prefill: float) -> float:
    """P(TTFT <= target): the prefill itself, after an M/M/1 wait on a lane `busy` of the time."""
    if target is None:
        return 1.0
    if busy >= 1.0 or target < prefill:
        return 0.0
    return max(0.0, 1.0 - busy * math.exp(-(1.0 - busy) * (target - prefill) / mean_prefill))
