"""Replay a workload on an in-process device, on the real clock: what the CPU benchmarks measure.

The loop is a server's engine thread without the HTTP: it adds every request that has arrived,
then steps the device, which blocks until a lane finishes a job. A request that arrives during
a step reaches its engine only when the step returns, and that wait is part of what its user
sees, so a record's send time is the request's arrival, not the moment the loop picked it up.
(The simulator's loop holds such a request in the device's inbox the same way.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from coserve.metrics import RequestRecord
from coserve.sampling_params import SamplingParams
from coserve.simulator.records import complete
from coserve.workload import WorkloadRequest

IDLE_POLL_S = 0.05  # an idle loop sleeps at most this long, so a late clock reading costs little


def prompt_ids(request_id: int, length: int) -> list[int]:
    """Random token ids, the same for the same request in every run."""
    rng = np.random.default_rng(request_id)
    return rng.integers(100, 40000, size=length).tolist()


def replay(device, requests: list[WorkloadRequest], label: str, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> list[RequestRecord]:
    """Release each request at its arrival time (seconds after the start) to `device` (a
    `DeviceEngine`: `engines`, `step`, `has_unfinished_requests`) and record what happened to it.
    Request ids are `{label}-{request_id}`. `clock` must be the clock the engines stamp token times
    with."""
    pending = sorted(requests, key=lambda r: r.arrival_time)
    records: dict[str, RequestRecord] = {}
    start = clock()
    while pending or device.has_unfinished_requests():
        now = clock() - start
        while pending and pending[0].arrival_time <= now:
            request = pending.pop(0)
            request_id = f"{label}-{request.request_id}"
            params = SamplingParams(temperature=0, max_tokens=request.output_len, ignore_eos=True)
            device.engines[request.model].add_request(prompt_ids(request.request_id, request.input_len), params,
                                                      request_id)
            records[request_id] = RequestRecord(request.request_id, request.model, request.arrival_time,
                                                request.arrival_time, request.input_len, request.output_len)
        if not device.has_unfinished_requests():
            if pending:
                sleep(max(0.0, min(IDLE_POLL_S, pending[0].arrival_time - now)))
            continue
        for output in device.step():
            if output.finished:
                complete(records[output.request_id], output, start)
    return list(records.values())
