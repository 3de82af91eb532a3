"""Dispatch to the least-loaded replica by Llumnix's freeness: free pages per running request,
with the queue's demand counted as already used."""

from __future__ import annotations

from collections import Counter

from coserve.engine.kv_cache_manager import cdiv
from coserve.engine.llm_engine import LLMEngine


def queued_pages(engine: LLMEngine) -> int:
    """Pages the waiting requests need to be admitted (their tokens so far plus the next one)."""
    return engine.scheduler.num_waiting_pages


def freeness(engine: LLMEngine, sharers: int = 1) -> float:
    """`sharers`: how many replicas allocate from the engine's pool owner (a pipeline group's
    members share the group's pages, so each counts its share of them)."""
    kv = engine.kv
    free = kv.pool.headroom(kv.owner) / sharers - queued_pages(engine)
    return free / max(1, engine.scheduler.num_running)


def pick_replica(engines: list[LLMEngine], prompt_len: int) -> LLMEngine:
    """The freest replica that could ever hold the prompt (the first one when none could: its
    length check then names the limit). Counted whole, the group's free pages would count once per
    member, and a group of g members would look g times freer than it is."""
    fitting = [e for e in engines if cdiv(prompt_len + 1, e.kv.block_size) <= e.kv.pool.capacity(e.kv.owner)]
    if not fitting:
        return engines[0]
    sharers = Counter(e.kv.owner for e in engines)
    return max(fitting, key=lambda e: (freeness(e, sharers[e.kv.owner]),
                                       -e.scheduler.num_running - e.scheduler.num_waiting))
