"""What a device's policies see of one model at a moment: its work, its pages, and its SLO slack.

The multiplexer (who runs on which lane) and the quota adapter (who may hold how many pages) read
these snapshots and nothing else, so both stay plain decisions that a simulator can replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from coserve.engine.kv_cache_manager import cdiv

if TYPE_CHECKING:  # the policies that read loads must not pull in the model code
    from coserve.engine.llm_engine import LLMEngine
    from coserve.metrics import SLO


@dataclass(frozen=True)
class ModelLoad:
    name: str
    has_prefill: bool  # some request still has prompt tokens to compute
    has_work: bool
    oldest_arrival: float  # arrival time of its oldest unfinished request (inf if none)
    used_pages: int = 0
    needed_pages: int = 0  # pages its queued and running requests need for their next step
    slo_pressure: float = 0.0  # >= 1: some request is already past its TTFT or TPOT target

    @property
    def missing_slo(self) -> bool:
        return self.slo_pressure >= 1.0


def observe(name: str, engine: LLMEngine, slo: SLO | None, now: float) -> ModelLoad:
    scheduler = engine.scheduler
    prefill = bool(scheduler.waiting) or any(r.num_computed_tokens < r.num_prompt_tokens for r in scheduler.running)
    # states are kept in order of arrival (one clock stamps them), so the first is the oldest
    oldest = next(iter(engine.states.values())).metrics.arrival_time if engine.states else float("inf")
    return ModelLoad(name, prefill, scheduler.has_unfinished_requests(), oldest,
                     used_pages=engine.kv.pool.used_by.get(engine.kv.owner, 0),
                     needed_pages=_needed_pages(engine),
                     slo_pressure=slo_pressure(engine, slo, now))


def _needed_pages(engine: LLMEngine) -> int:
    """Pages the next step would allocate if every queued request were admitted.

    Only what is certain counts (prompts, and one more token per running request), not the
    max_tokens a request may never reach: reserving for the worst case would idle pages that
    other models can use now.
    """
    kv = engine.kv
    size = kv.block_size
    needed = sum(cdiv(r.num_tokens, size) for r in engine.scheduler.waiting)
    for request in engine.scheduler.running:
        held = len(kv.block_tables.get(request.request_id, ()))
        needed += max(0, cdiv(request.num_tokens + 1, size) - held)
    return needed


def slo_pressure(engine: LLMEngine, slo: SLO | None, now: float) -> float:
    """How far the worst request of this model is through its latency budget (1.0 = at the limit).

    TTFT: time waited so far by requests without a first token, over the TTFT target. TPOT: the
    mean time per output token a decoding request would have if its next token came now, over the
    TPOT target (so a stalled request counts at once). Both read the live requests only, so the
    signal needs no averaging window and reacts within one step.
    """
    if slo is None:
        return 0.0
    pressure = 0.0
    for state in engine.states.values():
        metrics = state.metrics
        times = metrics.token_times
        if not times and slo.ttft_ms:
            pressure = max(pressure, (now - metrics.arrival_time) * 1000 / slo.ttft_ms)
        elif times and slo.tpot_ms:
            pressure = max(pressure, (max(now, times[-1]) - times[0]) / len(times) * 1000 / slo.tpot_ms)
    return pressure
