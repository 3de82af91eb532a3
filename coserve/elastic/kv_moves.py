"""The KV-centric ways out of an overload: swap a victim's KV to host memory (vLLM swap, InferCept)
and migrate a running request to a freer replica (Llumnix). Recompute needs nothing here: it is the
scheduler's own preemption.

On this CPU host and device memory are the same, so a transfer's cost is modelled: the copy is real,
and its time at the configured link bandwidth is a stall the replica's next job absorbs, as the step
of a GPU engine would wait for its DMA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coserve.elastic.replica import Replica
from coserve.engine.kv_cache_manager import cdiv
from coserve.engine.request import Request, RequestStatus


@dataclass
class SwappedRequest:
    request: Request
    data: Any  # [layers, pages, 2, block, heads, dim] on the host (a tensor, or a byte count when simulated)


def swap_out(replica: Replica, victim: Request, host_bytes_per_s: float) -> SwappedRequest | None:
    table = replica.kv.block_tables.get(victim.request_id)
    if not table:
        return None
    data = replica.kv_cache.read(replica.held_layers(), table)
    replica.kv.free(victim)
    replica.stall_s += data.nbytes / host_bytes_per_s
    return SwappedRequest(victim, data)


def swap_in(replica: Replica, swapped: SwappedRequest, host_bytes_per_s: float) -> bool:
    """Bring a request's KV back into fresh pages and resume it; False when the pages are not free."""
    request = swapped.request
    if replica.kv.pool.headroom(replica.kv.owner) < cdiv(request.num_computed_tokens, replica.kv.block_size):
        return False
    replica.kv.allocate_slots(request, 0)
    try:
        replica.kv_cache.write(replica.held_layers(), replica.kv.block_tables[request.request_id], swapped.data)
    except BaseException:  # the pages hold nothing: give them back before the caller hears of it
        replica.kv.free(request)
        raise
    request.status = RequestStatus.RUNNING
    replica.scheduler.running.append(request)
    replica.stall_s += swapped.data.nbytes / host_bytes_per_s
    return True


def move_request(src: Replica, dst: Replica, request: Request) -> None:
    """Hand a request (state, place in the running batch, pages and sampler) from one replica to
    another; its KV must already be on `dst` at the same page ids."""
    rid = request.request_id
    state = src.release_state(rid)
    src.scheduler.running.remove(request)
    table = src.kv.block_tables.pop(rid)
    src.kv.pool.transfer(table, src.kv.owner, dst.kv.owner)
    dst.kv.block_tables[rid] = table
    dst.adopt_state(state)
    dst.scheduler.running.append(request)
    src.hand_over(rid, dst)


def holds_no_pages(holder: Replica, request: Request, pending_aborts: set[str]) -> bool:
    """Queued with no pages: new, or preempted for recompute (a swapped-out one is not queued), and
    not waiting for its abort. A request refused pages keeps an empty block table."""
    return not holder.kv.block_tables.get(request.request_id) and request.request_id not in pending_aborts


def move_waiting(src: Replica, dst: Replica, request: Request) -> None:
    """Hand a queued request that holds no pages to another replica's queue (its arrival time, and so
    its TTFT, stay as they were)."""
    rid = request.request_id
    if src.kv.block_tables.get(rid):
        raise RuntimeError(f"queued request {rid} holds pages: it cannot move without them")
    src.kv.block_tables.pop(rid, None)  # a request refused pages keeps an empty table
    src.scheduler.remove_waiting(request)
    dst.adopt_state(src.release_state(rid))
    dst.scheduler.append_waiting(request)
    src.hand_over(rid, dst)


@dataclass
class Migration:
    """Llumnix's live migration: pre-copy while the request keeps decoding on `src`, then a short
    stop-and-copy of the pages written meanwhile."""

    request: Request
    src: Replica
    dst: Replica
    ready_at: float  # when the pre-copy of the pages held at the start is over
    pages_at_start: int

    def commit(self, peer_bytes_per_s: float) -> bool:
        """Move the request now (its batch must not be in flight); False if `dst` has no room."""
        table = self.src.kv.block_tables[self.request.request_id]
        if self.dst.kv.pool.headroom(self.dst.kv.owner) < len(table):
            return False
        self.src.kv_cache.copy_to(self.dst.kv_cache, self.src.held_layers(), table)
        move_request(self.src, self.dst, self.request)
        page_bytes = self.src.page_bytes_per_layer * len(self.src.held_layers())
        self.dst.stall_s += max(0, len(table) - self.pages_at_start) * page_bytes / peer_bytes_per_s
        return True
