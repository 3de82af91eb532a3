"""Dispatch to the least-loaded replica by Llumnix's freeness: free pages per running request,
with the queue's demand counted as already used."""

from __future__ import annotations

from coserve.engine.kv_cache_manager import cdiv
from coserve.engine.llm_engine import LLMEngine


def queued_pages(engine: LLMEngine) -> int:
    """Pages the waiting requests need to be admitted (their tokens so far plus the next one)."""
    return engine.scheduler.num_waiting_pages


def freeness(engine: LLMEngine) -> float:
    kv = engine.kv
    free = kv.pool.headroom(kv.owner) - queued_pages(engine)
    return free / max(1, engine.scheduler.num_running)


def pick_replica(engines: list[LLMEngine], prompt_len: int) -> LLMEngine:
    """The freest replica that could ever hold the prompt (the first one when none could: its
    length check then names the limit)."""
    fitting = [e for e in engines if cdiv(prompt_len + 1, e.kv.block_size) <= e.kv.pool.capacity(e.kv.owner)]
    if not fitting:
        return engines[0]
    return max(fitting, key=lambda e: (freeness(e), -e.scheduler.num_running - e.scheduler.num_waiting))
