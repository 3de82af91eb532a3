"""A finished engine output as the metrics' RequestRecord (times relative to the run's start)."""

from __future__ import annotations

from coserve.engine.outputs import RequestOutput
from coserve.metrics import RequestRecord
from coserve.workload import WorkloadRequest


def new_record(request: WorkloadRequest, now: float) -> RequestRecord:
    return RequestRecord(request.request_id, request.model, request.arrival_time, now, request.input_len,
                         request.output_len)


def complete(record: RequestRecord, output: RequestOutput, start: float = 0.0) -> None:
    metrics = output.metrics
    record.success = output.error is None and metrics is not None and metrics.first_token_time is not None
    record.error = output.error or ""
    if metrics is not None:
        record.first_token_time = (metrics.first_token_time or start) - start
        record.end_time = (metrics.last_token_time or start) - start
        record.chunk_times = [t - start for t in metrics.token_times]
    record.prompt_tokens = len(output.prompt_token_ids)
    record.output_tokens = len(output.outputs[0].token_ids)
