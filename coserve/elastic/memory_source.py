"""The `auto` strategy's choices: where the pages a request needs come from, by predicted time.

Every source costs the replica's queue time. Moving a queued request (it holds no pages) to a replica
with pages to spare costs nothing. A running victim's pages come back either by swapping its KV out
and in (two transfers over the host link) or by recomputing it (re-prefilling every token it had);
the cheaper of the two wins, the prefill time read off the replica's own prefill-heavy steps so far
(so the same rule holds on this CPU, on a GPU and on the simulator's clock). What no replica has to
spare, dropping layers makes (KunServe), as in the `drop` strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

from coserve.elastic.kv_moves import holds_no_pages, move_waiting
from coserve.elastic.router import queued_pages
from coserve.engine.kv_cache_manager import cdiv
from coserve.engine.request import Request
from coserve.engine.scheduler import SchedulerOutput


@dataclass
class PrefillSpeed:
    """Seconds per prefill token, from the replica's own steps that were mostly prefill."""

    tokens: int = 0
    seconds: float = 0.0

    def record(self, out: SchedulerOutput, seconds: float) -> None:
        prefill = sum(s.num_new_tokens for s in out.scheduled if s.num_new_tokens > 1)
        if prefill * 2 >= out.num_tokens > 0:  # mostly prefill: decode rows cost more per token
            self.tokens += out.num_tokens
            self.seconds += seconds

    def seconds_for(self, num_tokens: int) -> float | None:
        return None if self.tokens == 0 else num_tokens * self.seconds / self.tokens


def swap_beats_recompute(replica, victim: Request, speed: PrefillSpeed, host_bytes_per_s: float) -> bool:
    """Out and back in over the host link against re-prefilling every token it had (False until a
    prefill has been timed: recompute, vLLM's default, is then the choice)."""
    recompute_s = speed.seconds_for(victim.num_computed_tokens)
    if recompute_s is None:
        return False
    pages = len(replica.kv.block_tables.get(victim.request_id, ()))
    kv_bytes = pages * replica.page_bytes_per_layer * len(replica.held_layers())
    return 2 * kv_bytes / host_bytes_per_s < recompute_s


def spare_pages(replica) -> int:
    return replica.kv.pool.headroom(replica.kv.owner) - queued_pages(replica)


def move_queued_to_spare(sources: list, targets: list, pending_aborts: set[str]) -> int:
    """Queued requests of sources short of pages go, oldest first, to the target with the most pages
    to spare while they fit there; returns how many moved. Only requests holding no pages move, and
    only to a replica with no page-short queue of its own."""
    moved = 0
    for src in [r for r in sources if r.scheduler.waiting and r.scheduler.short_of_pages]:
        open_targets = [r for r in targets
                        if r is not src and not (r.scheduler.waiting and r.scheduler.short_of_pages)]
        for request in list(src.scheduler.waiting):
            if not holds_no_pages(src, request, pending_aborts):
                continue
            dst = max(open_targets, key=spare_pages, default=None)
            if dst is None or spare_pages(dst) < cdiv(request.num_tokens + 1, dst.kv.block_size):
                break
            move_waiting(src, dst, request)
            moved += 1
    return moved
