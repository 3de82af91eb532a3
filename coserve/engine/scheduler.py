"""Token-budget scheduler for one model (vLLM v1 semantics).

There is no prefill or decode phase: each request has `num_computed_tokens` catching up to
`num_tokens`, and one step hands out at most `max_num_batched_tokens` of catching up, running
requests first. A long prompt therefore arrives in chunks, and decode tokens ride along with them.
When pages run out, the most recently admitted running request is preempted and recomputed later.

The scheduler never reads a clock and never touches a tensor: real and simulated executors share it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from coserve.engine.kv_cache_manager import KVCacheManager, cdiv
from coserve.engine.request import Request, RequestStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    # cap on one request's share of a step, so a long prompt cannot starve everyone's decode
    long_prefill_token_threshold: int | None = None


@dataclass(slots=True)  # one per request per step
class ScheduledRequest:
    request: Request
    num_new_tokens: int

    @property
    def completes_known_tokens(self) -> bool:
        """After this step every known token is computed, so the step samples the next one."""
        req = self.request
        return req.num_computed_tokens + self.num_new_tokens == req.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)  # ended by the scheduler (pool too small)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # pages the waiting requests need to be admitted (their tokens so far and the next one),
        # kept as the queue changes: routers read it per request, and the queue can be thousands long
        self.num_waiting_pages = 0
        self.num_preemptions = 0
        # the last step left a request out, or preempted one, for want of pages (not of token budget
        # or sequence slots): its queue is for memory, which more pages would shorten
        self.short_of_pages = False
        # called with a victim before its pages are freed; True means its KV was saved elsewhere
        # (swapped out) and the hook took the request over, so it is not requeued for recompute
        self.preempt_hook: Callable[[Request], bool] | None = None
        # pages the waiting requests may take in a step (None: as many as the pool gives); a pipeline
        # group sets it so that one member's micro-batch leaves its partners a share (elastic.pipeline)
        self.admission_pages: int | None = None

    # -- queue management ----------------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.append_waiting(request)

    def append_waiting(self, request: Request) -> None:
        """Queue a request as it is (new, or preempted and handed over by another scheduler)."""
        self.waiting.append(request)
        self.num_waiting_pages += self._pages_to_admit(request)

    def finish_request(self, request: Request, status: RequestStatus) -> None:
        """End a request from outside (abort, stop string, error) and release its pages."""
        if request.finished:
            self.kv.free(request)  # no-op unless something still holds pages
            return
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
            self.num_waiting_pages -= self._pages_to_admit(request)
        request.status = status
        self.kv.free(request)

    def remove_waiting(self, request: Request) -> None:
        """Take a waiting request out of the queue as it is (it moves to another scheduler)."""
        self.waiting.remove(request)
        self.num_waiting_pages -= self._pages_to_admit(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def _pages_to_admit(self, request: Request) -> int:
        return cdiv(request.num_tokens + 1, self.kv.block_size)

    def _pop_waiting(self) -> Request:
        request = self.waiting.popleft()
        self.num_waiting_pages -= self._pages_to_admit(request)
        return request

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # -- one step ------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        self.short_of_pages = False
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return out

    def _chunk(self, request: Request, budget: int) -> int:
        remaining = request.num_tokens - request.num_computed_tokens
        threshold = self.config.long_prefill_token_threshold
        if threshold:
            remaining = min(remaining, threshold)
        return min(remaining, budget)

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = self._chunk(request, budget)
            if not self.kv.allocate_slots(request, num_new) and not self._make_room(request, num_new, out):
                continue  # `request` itself was preempted or finished; the list shrank
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new
            index += 1
        return budget

    def _make_room(self, request: Request, num_new: int, out: SchedulerOutput) -> bool:
        """Allocate pages for `request`, preempting the newest running requests until they fit."""
        while not self.kv.allocate_slots(request, num_new):
            if not self._can_ever_fit(request, num_new):
                self._finish_oversized(request, out)
                return False
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is request:
                return False
        return True

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        pages_left = self.admission_pages
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            num_new = self._chunk(request, budget)
            if pages_left is not None:
                num_new = min(num_new, self.kv.tokens_within(request, pages_left))
                if num_new <= 0:  # held back for want of pages, as if the pool had refused them
                    self.short_of_pages = True
                    break
                pages_left -= self.kv.blocks_needed(request, num_new)
            if not self.kv.allocate_slots(request, num_new):
                if not self._can_ever_fit(request, num_new):
                    self._pop_waiting()
                    self._finish_oversized(request, out)
                    continue
                self.short_of_pages = True
                break
            self._pop_waiting()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.scheduled.append(ScheduledRequest(request, num_new))
            budget -= num_new

    def _preempt(self, victim: Request, out: SchedulerOutput) -> None:
        self.short_of_pages = True
        self._stop_running(victim)
        out.preempted.append(victim)
        if self.preempt_hook is not None and self.preempt_hook(victim):
            return
        self._requeue_for_recompute(victim)

    def recompute(self, request: Request) -> None:
        """Preempt a running request from outside a step (its KV is not worth keeping): its pages
        are freed and it waits at the head of the queue to be prefilled again."""
        self._stop_running(request)
        self._requeue_for_recompute(request)

    def _stop_running(self, victim: Request) -> None:
        self.running.remove(victim)
        victim.status = RequestStatus.PREEMPTED
        victim.num_preemptions += 1
        self.num_preemptions += 1

    def _requeue_for_recompute(self, victim: Request) -> None:
        self.kv.free(victim)
        victim.num_computed_tokens = 0
        self.waiting.appendleft(victim)
        self.num_waiting_pages += self._pages_to_admit(victim)

    def _can_ever_fit(self, request: Request, num_new: int) -> bool:
        capacity = self.kv.pool.capacity(self.kv.owner)
        return cdiv(request.num_computed_tokens + num_new, self.kv.block_size) <= capacity

    def _finish_oversized(self, request: Request, out: SchedulerOutput) -> None:
        if request in self.running:
            self.running.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.FINISHED_LENGTH
        out.finished.append(request)

    # -- after the step ------------------------------------------------------------------------

    def update_from_output(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Advance computed tokens, append sampled tokens, and retire finished requests."""
        finished = list(out.finished)
        for item in out.scheduled:
            request = item.request
            if request.finished:
                continue
            request.num_computed_tokens += item.num_new_tokens
            token = sampled.get(request.request_id)
            if token is None:
                continue
            request.append_token(token)
            if request.finished:
                self.running.remove(request)
                self.kv.free(request)
                finished.append(request)
        return finished
