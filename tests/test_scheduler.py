"""Scheduler decisions on hand-built requests (no model): budget, chunking, preemption, oversize."""

from __future__ import annotations

from coserve.engine.block_pool import BlockPool
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.request import Request, RequestStatus
from coserve.engine.scheduler import Scheduler, SchedulerConfig
from coserve.sampling_params import SamplingParams


def make(num_blocks=8, block_size=4, max_num_seqs=8, budget=16):
    kv = KVCacheManager(BlockPool(num_blocks), block_size)
    return Scheduler(SchedulerConfig(max_num_seqs, budget), kv)


def request(rid: str, prompt_len: int, max_tokens: int = 100) -> Request:
    return Request(rid, list(range(1, prompt_len + 1)), SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def run_step(scheduler: Scheduler) -> dict[str, int]:
    out = scheduler.schedule()
    sampled = {s.request.request_id: 7 for s in out.scheduled if s.completes_known_tokens}
    scheduler.update_from_output(out, sampled)
    return {s.request.request_id: s.num_new_tokens for s in out.scheduled}


def test_long_prompt_is_chunked_under_the_token_budget_beside_decodes():
    s = make(num_blocks=32, budget=10)
    s.add_request(request("short", 3))
    assert run_step(s) == {"short": 3}
    s.add_request(request("long", 25))
    assert run_step(s) == {"short": 1, "long": 9}  # running first, the prompt takes what is left
    assert run_step(s) == {"short": 1, "long": 9}
    assert run_step(s) == {"short": 1, "long": 7}
    assert run_step(s) == {"short": 1, "long": 1}  # now decoding


def test_admission_pages_cap_what_queued_requests_take_but_not_running_ones():
    """With 4 pages for admissions, a queued 10-token prompt takes 3 whole (pages are not shared)
    and the next gets the 4 tokens of the last; the step after, with no pages for admissions, the
    running prompt still gets the rest and the queue is short of pages (held back, not refused)."""
    s = make(num_blocks=32, block_size=4, budget=64)
    s.add_request(request("a", 10))
    s.add_request(request("b", 10))
    s.admission_pages = 4
    assert run_step(s) == {"a": 10, "b": 4}
    s.add_request(request("c", 4))
    s.admission_pages = 0
    assert run_step(s) == {"a": 1, "b": 6}
    assert s.short_of_pages and [r.request_id for r in s.waiting] == ["c"]
    s.admission_pages = None
    assert run_step(s) == {"a": 1, "b": 1, "c": 4}


def test_newest_running_request_is_preempted_and_recomputed():
    s = make(num_blocks=4, block_size=4, budget=32)
    old, new = request("old", 7), request("new", 7)
    s.add_request(old)
    s.add_request(new)
    assert run_step(s) == {"old": 7, "new": 7}  # 2 blocks each: the pool is full
    assert run_step(s) == {"old": 1, "new": 1}  # token 8 still fits the second block
    step = run_step(s)  # token 9 needs a third block: "new" gives its pages back
    assert step == {"old": 1}
    assert new.status is RequestStatus.PREEMPTED and new.num_computed_tokens == 0
    assert list(s.waiting) == [new] and new.num_preemptions == 1
    assert len(new.output_token_ids) == 2  # generated tokens survive; they are recomputed as prompt
    held = sum(len(t) for t in s.kv.block_tables.values())
    assert held + s.kv.pool.num_free_blocks == 4


def test_no_waiting_request_is_admitted_in_a_step_that_preempted():
    s = make(num_blocks=4, block_size=4, budget=64)
    for rid in ("a", "b"):
        s.add_request(request(rid, 8))
    run_step(s)
    s.add_request(request("c", 1))
    out = s.schedule()
    assert [p.request_id for p in out.preempted] == ["b"]
    assert "c" not in {x.request.request_id for x in out.scheduled}


def test_request_larger_than_the_pool_ends_with_length_instead_of_looping():
    s = make(num_blocks=2, block_size=4, budget=64)
    big = request("big", 6, max_tokens=50)
    s.add_request(big)
    for _ in range(10):
        run_step(s)
        if big.finished:
            break
    assert big.status is RequestStatus.FINISHED_LENGTH
    assert s.kv.pool.num_free_blocks == 2 and not s.has_unfinished_requests()


def test_max_num_seqs_caps_the_running_batch():
    s = make(num_blocks=64, max_num_seqs=2, budget=64)
    for rid in "abc":
        s.add_request(request(rid, 2))
    assert set(run_step(s)) == {"a", "b"}
    assert [r.request_id for r in s.waiting] == ["c"]


def test_finished_requests_return_every_page():
    s = make(num_blocks=16, budget=64)
    requests = [request(f"r{i}", 3 + i, max_tokens=4) for i in range(4)]
    for r in requests:
        s.add_request(r)
    while s.has_unfinished_requests():
        run_step(s)
    assert all(r.status is RequestStatus.FINISHED_LENGTH and len(r.output_token_ids) == 4 for r in requests)
    assert s.kv.pool.num_free_blocks == 16 and not s.kv.block_tables


def test_a_queue_is_short_of_pages_only_when_pages_stopped_it():
    s = make(num_blocks=6, block_size=4, budget=8)
    s.add_request(request("a", 8))
    s.add_request(request("b", 8))
    assert run_step(s) == {"a": 8}  # the whole token budget: "b" waits for compute, not pages
    assert list(s.waiting) and not s.short_of_pages
    assert run_step(s) == {"a": 1, "b": 7}
    assert run_step(s) == {"a": 1, "b": 1}  # 3 + 2 of 6 pages held
    s.add_request(request("c", 4))
    assert run_step(s) == {"a": 1, "b": 1}  # both grow to 3 pages: none left for "c", budget left
    assert [r.request_id for r in s.waiting] == ["c"] and s.short_of_pages
