"""What a device's policies see of one model at a moment: its work, its pages, and its SLO slack.

The multiplexer (who runs on which lane) and the quota adapter (who may hold how many pages) read
these snapshots and nothing else, so both stay plain decisions that a simulator can replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
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


class LiveLoad(ModelLoad):
    """`observe`'s answer: ModelLoad's fields, those that walk the model's requests computed when
    first read. A device holding one model never reads them (its quota and its lanes are its own
    whatever they say), so its per-step cost does not grow with its batch. Read it before the
    engine changes again: it is a view of the engine at `now`, not a copy."""

    def __init__(self, name: str, engine: LLMEngine, slo: SLO | None, now: float):
        scheduler = engine.scheduler
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "has_work", scheduler.has_unfinished_requests())
        object.__setattr__(self, "used_pages", engine.kv.pool.used_by.get(engine.kv.owner, 0))
        object.__setattr__(self, "_source", (engine, slo, now))

    @cached_property
    def _running(self) -> tuple[bool, int]:
        return _running_work(self._source[0])

    @cached_property
    def _latency(self) -> tuple[float, float]:
        return _latency(*self._source)

    @property
    def has_prefill(self) -> bool:
        return bool(self._source[0].scheduler.waiting) or self._running[0]

    @property
    def needed_pages(self) -> int:
        return self._source[0].scheduler.num_waiting_pages + self._running[1]

    @property
    def oldest_arrival(self) -> float:
        return self._latency[0]

    @property
    def slo_pressure(self) -> float:
        return self._latency[1]


def observe(name: str, engine: LLMEngine, slo: SLO | None, now: float) -> ModelLoad:
    """A snapshot of one model: one pass over its running batch and one over its decoding requests,
    when read (the queue enters through counts kept as it changes: it can be thousands long)."""
    return LiveLoad(name, engine, slo, now)


def _running_work(engine: LLMEngine) -> tuple[bool, int]:
    """Whether a running request still has prompt to compute, and the pages the running requests
    need for their next token.

    Only what is certain counts (prompts, and one more token per request), not the max_tokens a
    request may never reach: reserving for the worst case would idle pages that other models can
    use now. Queued requests count the same way, through the scheduler's `num_waiting_pages`.
    """
    size, tables = engine.kv.block_size, engine.kv.block_tables
    prefill, needed = False, 0
    for request in engine.scheduler.running:
        prefill = prefill or request.num_computed_tokens < len(request.prompt_token_ids)
        needed += max(0, cdiv(request.num_tokens + 1, size) - len(tables.get(request.request_id, ())))
    return prefill, needed


def _latency(engine: LLMEngine, slo: SLO | None, now: float) -> tuple[float, float]:
    """The arrival of the oldest unfinished request (inf if none), and the SLO pressure: how far the
    worst request is through its latency budget (1.0 = at the limit).

    TTFT: time waited so far by requests without a first token, over the TTFT target. TPOT: the
    mean time per output token a decoding request would have if its next token came now, over the
    TPOT target (so a stalled request counts at once). Both read the live requests only, so the
    signal needs no averaging window and reacts within one step.
    """
    waiting_since = engine.oldest_without_token()
    oldest = float("inf") if waiting_since is None else waiting_since
    tpot_ms = slo.tpot_ms if slo is not None else None
    worst_tpot = 0.0
    for state in engine.decoding.values():
        metrics = state.metrics
        oldest = min(oldest, metrics.arrival_time)
        if tpot_ms:
            times = metrics.token_times
            worst_tpot = max(worst_tpot, (max(now, times[-1]) - times[0]) / len(times))
    pressure = 0.0
    if slo is not None and slo.ttft_ms and waiting_since is not None:
        pressure = (now - waiting_since) * 1000 / slo.ttft_ms
    if tpot_ms:
        pressure = max(pressure, worst_tpot * 1000 / tpot_ms)
    return oldest, pressure
