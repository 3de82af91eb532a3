"""Prometheus metrics under vLLM's names, labelled by model_name, so existing dashboards work."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from coserve.engine.llm_engine import LLMEngine
from coserve.engine.outputs import RequestOutput

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
_TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)


class EngineMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        label = ["model_name"]
        r = self.registry
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch", label, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled", label, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "Fraction of KV pages in use (0-1)", label, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefilled prompt tokens", label, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Generated tokens", label, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Preemptions (recompute)", label, registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token", label,
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Gap between output tokens", label,
                             buckets=_TOKEN_GAP_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Arrival to finish", label,
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("vllm:request_queue_time_seconds", "Arrival to first scheduled", label,
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests", label + ["finished_reason"],
                               registry=r)
        self._preemptions_seen: dict[str, int] = {}
        self._tokens_seen: dict[str, dict[str, int]] = {}  # model -> request -> tokens counted

    def refresh_gauges(self, engines: dict[str, LLMEngine]) -> None:
        """Read the engines' current state at scrape time (an abort changes it without a step)."""
        pools = [id(engine.kv.pool) for engine in engines.values()]
        for name, engine in engines.items():
            self.running.labels(name).set(engine.scheduler.num_running)
            self.waiting.labels(name).set(engine.scheduler.num_waiting)
            pool = engine.kv.pool  # a device's pool is shared: each model reports the pages it holds
            self.kv_usage.labels(name).set(pool.usage(engine.kv.owner) if pools.count(id(pool)) > 1 else pool.usage())

    def on_step(self, name: str, engine: LLMEngine, outputs: list[RequestOutput]) -> None:
        """Called on the engine thread after every step."""
        seen = self._tokens_seen.setdefault(name, {})
        total = engine.scheduler.num_preemptions
        self.preemptions.labels(name).inc(total - self._preemptions_seen.get(name, 0))
        self._preemptions_seen[name] = total
        for output in outputs:
            self._observe_token(name, output, seen)
            if output.finished:
                self._observe_finished(name, output)
        # aborted requests never emit a finished output; forget them here
        for request_id in [r for r in seen if r not in engine.states]:
            del seen[request_id]

    def _observe_token(self, name: str, output: RequestOutput, tokens_seen: dict[str, int]) -> None:
        metrics = output.metrics
        count = len(output.outputs[0].token_ids)
        seen = tokens_seen.pop(output.request_id, 0) if output.finished else tokens_seen.get(output.request_id, 0)
        if not output.finished:
            tokens_seen[output.request_id] = count
        if metrics is None or count <= seen:
            return
        self.generation_tokens.labels(name).inc(count - seen)
        times = metrics.token_times
        if seen == 0:
            self.prompt_tokens.labels(name).inc(len(output.prompt_token_ids))
            self.ttft.labels(name).observe(times[0] - metrics.arrival_time)
        elif len(times) >= 2:
            self.itl.labels(name).observe(times[-1] - times[-2])

    def _observe_finished(self, name: str, output: RequestOutput) -> None:
        metrics = output.metrics
        reason = output.outputs[0].finish_reason or "abort"
        self.success.labels(name, reason).inc()
        if metrics is None:
            return
        end = metrics.last_token_time or metrics.arrival_time
        self.e2e.labels(name).observe(end - metrics.arrival_time)
        if metrics.first_scheduled_time is not None:
            self.queue_time.labels(name).observe(metrics.first_scheduled_time - metrics.arrival_time)
