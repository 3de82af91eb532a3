"""Drive a workload against a server: release each request at its arrival time, stream, record."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import datetime, timezone

import aiohttp
from tqdm import tqdm

from coserve.bench.client import request_body, stream_request
from coserve.bench.config import BenchmarkConfig
from coserve.bench.prompts import synthetic_prompt
from coserve.bench.result import BenchmarkResult
from coserve.metrics import RequestRecord, compute_metrics
from coserve.workload import WorkloadRequest, generate_workload


def run_benchmark(config: BenchmarkConfig) -> BenchmarkResult:
    """Blocking entry point for scripts; inside a running event loop, await `benchmark` instead."""
    return asyncio.run(benchmark(config))


async def benchmark(config: BenchmarkConfig) -> BenchmarkResult:
    requests = generate_workload(config.workload)
    # Build every body before the clock starts: prompt synthesis must not delay arrivals.
    bodies = [_body(config, request) for request in requests]
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records = await _send_all(config, requests, bodies)
    metrics = compute_metrics(records, config.slos, models=config.workload.models)
    return BenchmarkResult(config, metrics, records, started_at)


def _body(config: BenchmarkConfig, request: WorkloadRequest) -> dict:
    prompt = synthetic_prompt(request.input_len, seed=(config.workload.seed, request.request_id))
    return request_body(config.endpoint, request.model, prompt, request.output_len, config.ignore_eos)


async def _send_all(config: BenchmarkConfig, requests: list[WorkloadRequest],
                    bodies: list[dict]) -> list[RequestRecord]:
    gate = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else contextlib.nullcontext()
    limit = config.timeout_s
    timeout = aiohttp.ClientTimeout(total=None if limit is None or math.isinf(limit) else limit)
    # aiohttp's default pool holds 100 connections; a hidden cap would distort an open-loop run.
    connector = aiohttp.TCPConnector(limit=config.max_concurrency or 0)
    origin = time.perf_counter()
    clock = lambda: time.perf_counter() - origin

    with tqdm(total=len(requests), disable=config.disable_tqdm, desc="requests") as progress:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def send_at_arrival(request: WorkloadRequest, body: dict) -> RequestRecord:
                await asyncio.sleep(max(0.0, request.arrival_time - clock()))
                async with gate:
                    record = RequestRecord(request.request_id, request.model, request.arrival_time, clock(),
                                           input_len=request.input_len, output_len=request.output_len)
                    await stream_request(session, config.url, body, record, clock)
                progress.update(1)
                return record

            return list(await asyncio.gather(*(send_at_arrival(r, b) for r, b in zip(requests, bodies))))
