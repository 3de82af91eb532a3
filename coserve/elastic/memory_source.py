"""The `auto` strategy's choices: where the pages a request needs come from, by predicted time.

Every source costs the replica's queue time. Moving a queued request (it holds no pages) to a replica
with pages to spare costs nothing. A running victim's pages come back either by swapping its KV out
and in (two transfers over the host link) or by recomputing it (re-prefilling every token it had);
the cheaper of the two wins, the prefill time read off the replica's own prefill-heavy steps so far
(so the same rule holds on this CPU, on a GPU and on the simulator's clock). What no replica has to
spare, dropping layers makes (KunServe), as in the `drop` strategy.

With `ElasticConfig.recompute_if_cheaper`, the same timed prefill speed decides at a drop (under
`drop` or `auto`) which running requests exchange their KV with the partner that keeps their layers
and which are cheaper to recompute.
"""

from __future__ import annotations

from dataclasses import dataclass

from coserve.elastic.kv_moves import holds_no_pages, move_waiting
from coserve.elastic.pipeline import exchange_seconds_per_page
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


def recompute_instead_of_exchange(member, kept_layers: int, link_bytes_per_s: float, speed: PrefillSpeed,
                                  queued_share: float) -> list[Request]:
    """At a drop, which of a member's running requests are recomputed rather than exchanged.

    Both ways are a line. Exchanged requests send their KV for the layers the member gives up over
    its link one after another; recomputed ones are prefilled again one after another at the head
    of the queue (their tokens at the member's timed prefill speed), ahead of the queued requests
    (`queued_share`: the group's queue over its members). In order, each request joins the line
    that adds the least waiting in all: its own wait there, plus its time for every request that
    may still join that line after it and, for a re-prefill, for every queued request. Until a
    prefill has been timed, every request is exchanged (KunServe's choice)."""
    if speed.tokens == 0:
        return []
    page_s = exchange_seconds_per_page(member, kept_layers, link_bytes_per_s)
    holding = [(r, len(member.kv.block_tables.get(r.request_id, ()))) for r in member.scheduler.running]
    holding = [(request, pages) for request, pages in holding if pages]
    recomputed, link_free_at, compute_free_at = [], 0.0, 0.0
    for position, (request, pages) in enumerate(holding):
        recompute_s = speed.seconds_for(request.num_computed_tokens)
        transfer = pages * page_s
        later = len(holding) - position - 1  # an upper bound on who joins either line after it
        exchange_cost = link_free_at + transfer * (1 + later)
        recompute_cost = compute_free_at + recompute_s * (1 + later + queued_share)
        if recompute_cost < exchange_cost:
            recomputed.append(request)
            compute_free_at += recompute_s
        else:
            link_free_at += transfer
    return recomputed


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
