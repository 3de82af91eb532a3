"""The load generator end to end against a fake streaming server, and the metrics it reports."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import threading

import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from coserve.bench import BenchmarkConfig, run_benchmark
from coserve.bench.cli import add_arguments, config_from_args, run
from coserve.bench.client import CHAT_ENDPOINT, chunk_text, request_body
from coserve.bench.prompts import WORDS, synthetic_prompt
from coserve.bench.result import BenchmarkResult
from coserve.metrics import (
    SLO,
    LatencySLO,
    LatencyStats,
    RequestRecord,
    compute_metrics,
    format_table,
    steady_throughput,
)
from coserve.workload import LengthSpec, WorkloadSpec

# -- a fake OpenAI-compatible server ---------------------------------------------------------------


class FakeServer:
    """Streams one chunk per requested token ("tok"), then usage if asked for it. Counts prompt
    tokens as whitespace-separated words, which is exactly what synthetic prompts are made of."""

    def __init__(self, send_usage: bool = True, reject_models: tuple[str, ...] = (),
                 empty_answers: bool = False, close_early: bool = False, send_done: bool = True,
                 only_done: bool = False):
        self.send_usage = send_usage
        self.reject_models = reject_models
        self.empty_answers = empty_answers  # the first token is end-of-sequence: no text, finish "stop"
        self.close_early = close_early  # the server dies mid-answer: no finish_reason, no [DONE]
        self.send_done = send_done  # transformers serve ends a stream with its finish_reason alone
        self.only_done = only_done  # a broken server: `data: [DONE]` and nothing before it
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        app.router.add_post("/v1/chat/completions", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)  # the OS picks a free port
        await site.start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if body["model"] in self.reject_models:
            return web.json_response({"error": {"message": "model not found"}}, status=404)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._stream(request, body)
        finally:
            self.in_flight -= 1

    async def _stream(self, request: web.Request, body: dict) -> web.StreamResponse:
        chat = "messages" in body
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        send = lambda chunk: response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if self.only_done:
            await response.write(b"data: [DONE]\n\n")
            return response
        if chat:  # real servers open a chat stream with a role-only chunk: not a token
            await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        tokens = 1 if self.empty_answers else body["max_tokens"]
        for _ in range(0 if self.empty_answers else tokens):
            await asyncio.sleep(0.001)
            choice = {"index": 0, "delta": {"content": " tok"}} if chat else {"index": 0, "text": " tok"}
            await send({"choices": [choice]})
        if self.close_early:
            return response
        await asyncio.sleep(0.001)
        reason = "stop" if self.empty_answers else "length"
        await send({"choices": [{"index": 0, "text": "", "finish_reason": reason}]})
        if self.send_usage and body.get("stream_options", {}).get("include_usage"):
            usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": tokens}
            await send({"choices": [], "usage": usage})
        if self.send_done:
            await response.write(b"data: [DONE]\n\n")
        return response


def bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


# -- end to end ------------------------------------------------------------------------------------


def test_cli_run_against_fake_server_saves_complete_json(tmp_path):
    out = tmp_path / "result.json"
    with FakeServer() as server:
        args = bench_args(
            "--base-url", server.base_url, "--model", "small", "large", "--alpha", "1.0",
            "--request-rate", "400", "--num-prompts", "24", "--random-input-len", "40",
            "--random-output-len", "6", "--random-range-ratio", "0.5", "--ignore-eos",
            "--slo", "ttft:60000", "tpot:60000", "--save-result", str(out), "--plot", str(tmp_path / "plots"),
            "--disable-tqdm", "--seed", "5")
        assert run(args) == 0
    saved = json.loads(out.read_text())
    records = saved["requests"]
    assert len(records) == 24 and len(server.bodies) == 24
    assert set(saved["metrics"]["per_model"]) == {"small", "large"}
    assert saved["config"]["workload"]["models"] == ["small", "large"]
    assert saved["model_rates"]["small"] == pytest.approx(2 * saved["model_rates"]["large"])
    for record in records:
        assert record["success"], record["error"]
        # Usage from the server: its prompt count is our word count, its output count our max_tokens.
        assert record["prompt_tokens"] == record["input_len"]
        assert record["output_tokens"] == record["output_len"] == len(record["chunk_times"])
        assert 20 <= record["input_len"] <= 60 and 3 <= record["output_len"] <= 9
        assert record["send_time"] <= record["first_token_time"] <= record["end_time"]
    overall = saved["metrics"]["overall"]
    assert overall["completed"] == 24 and overall["failed"] == 0
    assert overall["total_output_tokens"] == sum(r["output_len"] for r in records)
    assert overall["slo_attainment"] == 1.0
    per_model = saved["metrics"]["per_model"].values()
    assert sum(m["completed"] for m in per_model) == 24
    assert sum(m["request_throughput"] for m in per_model) == pytest.approx(overall["request_throughput"])
    for body in server.bodies:
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        assert body["ignore_eos"] is True
    assert (tmp_path / "plots" / "latency_cdf.png").stat().st_size > 0
    assert (tmp_path / "plots" / "throughput.png").stat().st_size > 0


def test_chat_without_usage_counts_text_chunks_only():
    workload = WorkloadSpec(models=("m",), num_prompts=5, lengths=LengthSpec(input_len=10, output_len=4))
    with FakeServer(send_usage=False) as server:
        config = BenchmarkConfig(workload, server.base_url, CHAT_ENDPOINT, disable_tqdm=True)
        result = run_benchmark(config)
    assert all("messages" in body and "ignore_eos" not in body for body in server.bodies)
    for record in result.records:
        assert record.success
        assert record.output_tokens == 4 and len(record.itls) == 3  # the role-only chunk is no token
        assert record.prompt_tokens == record.input_len == 10  # no usage: the requested length


def test_max_concurrency_caps_requests_in_flight():
    workload = WorkloadSpec(models=("a", "b"), num_prompts=12, lengths=LengthSpec(input_len=5, output_len=5))
    with FakeServer() as server:
        result = run_benchmark(BenchmarkConfig(workload, server.base_url, max_concurrency=2, disable_tqdm=True))
    assert result.metrics.overall.completed == 12
    assert server.max_in_flight <= 2


def test_rejected_requests_fail_and_miss_the_slo():
    workload = WorkloadSpec(models=("good", "gone"), num_prompts=10, lengths=LengthSpec(input_len=5, output_len=3))
    with FakeServer(reject_models=("gone",)) as server:
        config = BenchmarkConfig(workload, server.base_url, slos=SLO(ttft_ms=60_000), disable_tqdm=True)
        result = run_benchmark(config)
    metrics = result.metrics
    assert metrics.per_model["gone"].failed == 5 and metrics.per_model["gone"].completed == 0
    assert metrics.per_model["good"].completed == 5
    assert metrics.overall.slo_attainment == 0.5
    assert all("HTTP 404" in r.error for r in result.records if r.model == "gone")
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["config"]["workload"]["request_rate"] == "inf"


def test_an_empty_answer_succeeds_with_its_first_token_at_the_finish():
    workload = WorkloadSpec(models=("m",), num_prompts=3, lengths=LengthSpec(input_len=5, output_len=4))
    with FakeServer(empty_answers=True) as server:
        result = run_benchmark(BenchmarkConfig(workload, server.base_url, disable_tqdm=True))
    for record in result.records:
        assert record.success, record.error
        assert record.chunk_times == [] and record.output_tokens == 1
        assert record.send_time < record.first_token_time <= record.end_time
        assert record.tpot is None
    assert result.metrics.overall.ttft_ms.count == 3


def test_a_stream_of_nothing_but_done_is_a_failure():
    workload = WorkloadSpec(models=("m",), num_prompts=2, lengths=LengthSpec(input_len=5, output_len=3))
    with FakeServer(only_done=True) as server:
        result = run_benchmark(BenchmarkConfig(workload, server.base_url, slos=SLO(ttft_ms=1e6), disable_tqdm=True))
    assert result.metrics.overall.completed == 0 and result.metrics.overall.slo_attainment == 0.0
    assert all("without any text or finish_reason" in record.error for record in result.records)


def test_a_stream_cut_before_its_finish_is_a_failure():
    workload = WorkloadSpec(models=("m",), num_prompts=2, lengths=LengthSpec(input_len=5, output_len=3))
    with FakeServer(close_early=True) as server:
        result = run_benchmark(BenchmarkConfig(workload, server.base_url, disable_tqdm=True))
    assert result.metrics.overall.completed == 0 and result.metrics.overall.failed == 2
    assert all("closed before a finish_reason" in record.error for record in result.records)
    with FakeServer(send_done=False) as server:  # a finish_reason and no [DONE]: served
        result = run_benchmark(BenchmarkConfig(workload, server.base_url, disable_tqdm=True))
    assert result.metrics.overall.completed == 2 and all(r.output_tokens == 3 for r in result.records)


@pytest.mark.parametrize("argv", [
    ("--model-rates", "nan", "1"), ("--model-rates", "inf", "1"), ("--alpha", "nan"), ("--alpha", "inf"),
    ("--alpha", "-2000"), ("--burstiness", "inf"), ("--burstiness", "nan"), ("--time-scale", "inf"),
    ("--slo", "ttft:0"), ("--slo", "ttft:-5"), ("--slo", "tpot:nan"), ("--slo", "ttft:fast"),
    ("--slo-scale", "nan", "--slo-base-ttft-ms", "10"), ("--slo-scale", "0", "--slo-base-ttft-ms", "10"),
    ("--slo-scale", "2", "--slo-base-ttft-ms", "-1"), ("--timeout", "0"), ("--timeout", "-3"),
    ("--model", "a", "--request-rate", "nan"), ("--save-result", "/dev/null/result.json"), ("--save-result", "/"),
])
def test_unusable_options_exit_2_before_any_request(argv, capsys, tmp_path):
    with FakeServer() as server:
        models = () if "--model" in argv else ("--model", "a", "b")
        args = bench_args("--base-url", server.base_url, *models, *argv, "--num-prompts", "2", "--disable-tqdm")
        assert run(args) == 2
    assert server.bodies == []
    assert capsys.readouterr().err.startswith("coserve bench: ")


def test_results_may_go_into_folders_made_for_them(tmp_path):
    out = tmp_path / "runs" / "7" / "result.json"
    with FakeServer() as server:
        args = bench_args("--base-url", server.base_url, "--model", "m", "--num-prompts", "2", "--random-input-len",
                          "4", "--random-output-len", "2", "--save-result", str(out), "--disable-tqdm")
        assert run(args) == 0
    assert json.loads(out.read_text())["metrics"]["overall"]["completed"] == 2


def test_duplicate_models_and_an_unwritable_plot_folder_exit_2(tmp_path, capsys):
    assert run(bench_args("--model", "a", "a", "--num-prompts", "2")) == 2
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run(bench_args("--model", "a", "--plot", str(blocker / "plots"), "--num-prompts", "2")) == 2
    assert "--plot" in capsys.readouterr().err


def test_a_missing_trace_file_is_a_clear_error(tmp_path, monkeypatch):
    from coserve.workload import traces

    traces.load_trace.cache_clear()
    monkeypatch.setattr(traces, "TRACE_DIR", tmp_path)
    try:
        with pytest.raises(ValueError, match="sharegpt-lengths.*cannot be read"):
            LengthSpec("sharegpt-lengths")
        (tmp_path / traces.TRACES["azure-code"].filename).write_text("ContextTokens,TIMESTAMP\n5,x\n")
        with pytest.raises(ValueError, match="azure-code.*cannot be read"):
            LengthSpec("azure-code")
        for body in ("num_prefill_tokens,num_decode_tokens\ninf,3\n", "num_prefill_tokens,num_decode_tokens\n5\n"):
            (tmp_path / traces.TRACES["sharegpt-lengths"].filename).write_text(body)  # inf; a short row
            traces.load_trace.cache_clear()
            with pytest.raises(ValueError, match="sharegpt-lengths.*cannot be read"):
                LengthSpec("sharegpt-lengths")
    finally:
        traces.load_trace.cache_clear()


def test_unreachable_server_fails_every_request_and_run_returns_1(capsys):
    with FakeServer() as server:
        url = server.base_url  # the port is free again once the server stops
    args = bench_args("--base-url", url, "--model", "m", "--num-prompts", "3", "--random-input-len", "4",
                      "--random-output-len", "2", "--disable-tqdm")
    assert run(args) == 1
    assert "3 requests failed" in capsys.readouterr().err


# -- request and stream pieces -----------------------------------------------------------------------


def test_request_bodies():
    completion = request_body("/v1/completions", "m", "hi there", 7, ignore_eos=False)
    assert completion["prompt"] == "hi there" and completion["max_tokens"] == 7
    assert "ignore_eos" not in completion
    chat = request_body(CHAT_ENDPOINT, "m", "hi", 3, ignore_eos=True)
    assert chat["messages"] == [{"role": "user", "content": "hi"}] and chat["ignore_eos"] is True


def test_chunk_text_reads_completions_and_chat():
    assert chunk_text({"choices": [{"text": " a"}]}) == " a"
    assert chunk_text({"choices": [{"delta": {"content": "b"}}]}) == "b"
    assert chunk_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert chunk_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_synthetic_prompts_have_the_requested_word_count_and_differ_per_seed():
    for n in (0, 1, 50, len(WORDS), 3 * len(WORDS) + 7):
        assert len(synthetic_prompt(n, (0, n)).split()) == n
    assert synthetic_prompt(30, (0, 1)) != synthetic_prompt(30, (0, 2))
    assert synthetic_prompt(30, (0, 1)) == synthetic_prompt(30, (0, 1))


def test_slo_options():
    assert config_from_args(bench_args("--model", "a", "--slo", "ttft:200", "tpot:50")).slos == \
        SLO(ttft_ms=200, tpot_ms=50)
    scaled = config_from_args(bench_args("--model", "a", "b", "--slo-scale", "5",
                                         "--slo-base-ttft-ms", "10", "20", "--slo-base-tpot-ms", "2")).slos
    assert scaled == {"a": SLO(ttft_ms=50, tpot_ms=10), "b": SLO(ttft_ms=100, tpot_ms=10)}
    with pytest.raises(ValueError):
        config_from_args(bench_args("--model", "a", "--slo-scale", "5"))
    with pytest.raises(ValueError):
        SLO.parse(["latency:5"])
    assert run(bench_args("--model", "a", "b", "--slo-scale", "2", "--slo-base-ttft-ms", "1", "2", "3")) == 2


# -- metrics -----------------------------------------------------------------------------------------


def record(model="m", send=0.0, ttft=0.1, tpot=0.02, output=11, success=True, request_id=0) -> RequestRecord:
    """A finished request with exactly the given TTFT and TPOT (seconds), chunks evenly spaced."""
    chunks = [send + ttft + i * tpot for i in range(output)] if success else []
    return RequestRecord(request_id, model, arrival_time=send, send_time=send, input_len=8, output_len=output,
                         first_token_time=chunks[0] if chunks else None,
                         end_time=chunks[-1] if chunks else send + 0.5, chunk_times=chunks,
                         prompt_tokens=8, output_tokens=output if success else 0, success=success,
                         error="" if success else "boom")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.001, 100.0), min_size=1, max_size=200))
def test_latency_percentiles_equal_numpy(seconds):
    stats = LatencyStats.of(seconds)
    ms = np.array(seconds) * 1000
    assert stats.mean == pytest.approx(ms.mean())
    for key, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        assert getattr(stats, key) == pytest.approx(np.percentile(ms, q))
    assert stats.count == len(seconds)


def test_record_latencies():
    r = record(ttft=0.25, tpot=0.05, output=5, send=1.0)
    assert r.ttft == pytest.approx(0.25) and r.tpot == pytest.approx(0.05) and r.e2e == pytest.approx(0.45)
    assert r.itls == pytest.approx([0.05] * 4)
    assert record(output=1).tpot is None
    failed = record(success=False)
    assert failed.ttft is None and failed.e2e is None and failed.itls == []


def test_known_records_give_known_attainment_and_goodput():
    # Ten requests over a 10 s run: TTFT 0.1..1.0 s, TPOT 10..100 ms; two of them fail.
    records = [record(send=float(i), ttft=0.1 * (i + 1), tpot=0.01 * (i + 1), output=3, request_id=i)
               for i in range(8)]
    records += [record(send=8.0, success=False, request_id=8), record(send=9.5, success=False, request_id=9)]
    slo = SLO(ttft_ms=550, tpot_ms=45)  # TTFT passes for i <= 4, TPOT for i <= 3: four meet both
    metrics = compute_metrics(records, slo, duration_s=10.0)
    overall = metrics.overall
    assert overall.completed == 8 and overall.failed == 2
    assert overall.slo_attainment == pytest.approx(4 / 10)  # failed requests count as misses
    assert overall.goodput == pytest.approx(0.4)
    assert overall.request_throughput == pytest.approx(0.8)
    assert overall.total_output_tokens == 24 and overall.output_throughput == pytest.approx(2.4)
    assert overall.total_token_throughput == pytest.approx((24 + 64) / 10)
    assert overall.ttft_ms.mean == pytest.approx(450.0) and overall.ttft_ms.count == 8
    assert overall.tpot_ms.p50 == pytest.approx(np.percentile(np.arange(1, 9) * 10.0, 50))
    assert compute_metrics(records, SLO(e2e_ms=10_000), 10.0).overall.slo_attainment == pytest.approx(0.8)
    assert compute_metrics(records).overall.slo_attainment is None


def test_per_model_slos_and_groups():
    records = [record("a", ttft=0.1, request_id=0), record("a", ttft=0.3, request_id=1),
               record("b", ttft=0.3, request_id=2), record("b", success=False, request_id=3)]
    metrics = compute_metrics(records, {"a": SLO(ttft_ms=200), "b": SLO(ttft_ms=400)}, duration_s=2.0)
    assert metrics.per_model["a"].slo_attainment == 0.5 and metrics.per_model["b"].slo_attainment == 0.5
    assert metrics.overall.slo_attainment == 0.5 and metrics.overall.goodput == 1.0
    assert metrics.per_model["b"].failed == 1
    table = format_table(metrics)
    for text in ("overall", "SLO attainment (%)", "P99 TPOT (ms)", "Goodput (req/s)"):
        assert text in table


PREFILL = ((16, 10.0), (64, 40.0), (256, 130.0))


@settings(max_examples=50, deadline=None)
@given(st.integers(16, 256), st.integers(1, 500))
def test_latency_slo_base_interpolates_prefill_and_adds_a_decode_step_per_later_token(prompt, output):
    slo = LatencySLO(PREFILL, decode_ms=5.0)
    lengths, times = zip(*PREFILL)
    assert slo.base_ms(prompt, output) == pytest.approx(np.interp(prompt, lengths, times) + (output - 1) * 5.0)


def test_latency_slo_extrapolates_from_the_nearest_segment_and_scales():
    slo = LatencySLO(PREFILL, decode_ms=5.0)
    assert slo.base_ms(512, 1) == pytest.approx(130.0 + 256 * 90.0 / 192)  # the 64..256 slope
    assert slo.base_ms(8, 1) == pytest.approx(10.0 - 8 * 30.0 / 48)  # the 16..64 slope
    assert slo.scaled(4).scaled(2).scale == 8
    for bad in (dict(prefill_ms=((16, 10.0),)), dict(prefill_ms=((64, 1.0), (16, 2.0))),
                dict(prefill_ms=PREFILL, decode_ms=0.0), dict(prefill_ms=PREFILL, scale=-1.0)):
        with pytest.raises(ValueError):
            LatencySLO(**{"decode_ms": 5.0, **bad})


def test_latency_slo_attainment_counts_requests_within_scale_times_their_own_base():
    # prompt 8 tokens: prefill 10 - 8 * 30/48 = 5 ms; 11 tokens: base 5 + 10 * 5 = 55 ms; x4 = 220 ms.
    slo = LatencySLO(PREFILL, decode_ms=5.0, scale=4)
    records = [record(ttft=0.019, tpot=0.02, request_id=0),  # e2e 219 ms: meets
               record(ttft=0.021, tpot=0.02, request_id=1),  # 221 ms: misses
               record(ttft=0.2, tpot=0.001, request_id=2),  # long first token, short e2e: meets
               record(success=False, request_id=3)]
    assert [slo.met_by(r) for r in records] == [True, False, True, False]
    metrics = compute_metrics(records, {"m": slo}, duration_s=1.0)
    assert metrics.overall.slo_attainment == pytest.approx(0.5)
    config = BenchmarkConfig(WorkloadSpec(models=("m",)), "http://127.0.0.1:1", slos={"m": slo})
    saved = json.loads(json.dumps(BenchmarkResult(config, metrics, records, "now").to_dict(), allow_nan=False))
    assert saved["config"]["slos"]["m"] == {"prefill_ms": [list(p) for p in PREFILL], "decode_ms": 5.0, "scale": 4}


def test_groups_follow_the_given_model_order_and_keep_idle_models():
    records = [record("b", request_id=0), record("a", request_id=1)]
    metrics = compute_metrics(records, SLO(ttft_ms=1_000), models=("a", "idle", "b"))
    assert list(metrics.per_model) == ["a", "idle", "b"]
    idle = metrics.per_model["idle"]
    assert idle.completed == idle.failed == 0 and idle.slo_attainment is None and idle.ttft_ms.count == 0


def test_duration_spans_first_arrival_to_last_end():
    records = [record(send=2.0, ttft=0.5, tpot=0.1, output=6), record(send=4.0, ttft=0.5, tpot=0.1, output=6)]
    metrics = compute_metrics(records)
    assert metrics.overall.duration_s == pytest.approx(4.0 + 0.5 + 0.5 - 2.0)
    empty = compute_metrics([])
    assert empty.overall.completed == 0 and empty.overall.ttft_ms.mean is None
    assert not math.isnan(empty.overall.request_throughput)


def test_steady_throughput_is_the_offered_rate_of_a_server_that_keeps_up():
    # An infinite-server queue with a fixed 8 s service time (M/D/inf): after the first 8 s it
    # finishes requests at the arrival rate, so the steady window measures lambda, while the
    # whole-run throughput is diluted by the 8 s drain to N / (T + 8).
    rate, window, service = 50.0, 30.0, 8.0
    sends = np.random.default_rng(3).uniform(0.0, window, size=int(rate * window))
    records = [record(send=float(s), ttft=0.5, tpot=(service - 0.5) / 10, output=11, request_id=i)
               for i, s in enumerate(sends)]
    steady = steady_throughput(records, window / 3, window)
    assert steady == pytest.approx(rate, abs=4 * math.sqrt(rate / (window * 2 / 3)))
    whole = compute_metrics(records).overall.request_throughput
    assert whole == pytest.approx(len(records) / (window + service), rel=0.02)
    one = record(send=0.0, ttft=0.5, tpot=1.0, output=11)  # chunks at 0.5, 1.5, ..., 10.5 s
    assert steady_throughput([one], 5.0, 15.0) == pytest.approx(6 / 11 / 10.0)  # 6 of its 11 chunks inside
    failed = [record(send=12.0, success=False, request_id=len(records))]
    assert steady_throughput(records + failed, window / 3, window) == steady
    with pytest.raises(ValueError):
        steady_throughput(records, 5.0, 5.0)


class _OneAtATimeDevice:
    """Serves one request per step, first come first served; a step takes STEP seconds on the fake
    clock and ends with that request's only token."""

    STEP = 1.0

    def __init__(self, clock: list[float]):
        self.clock = clock
        self.queue: list[str] = []
        self.engines = {"m": self}

    def add_request(self, prompt, params, request_id):
        self.queue.append(request_id)

    def has_unfinished_requests(self):
        return bool(self.queue)

    def step(self):
        from coserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput

        self.clock[0] += self.STEP
        now = self.clock[0]
        request_id = self.queue.pop(0)
        metrics = RequestMetrics(arrival_time=now - self.STEP, first_token_time=now, last_token_time=now,
                                 token_times=[now])
        return [RequestOutput(request_id, None, [1], [CompletionOutput(0, "", [7], "length")], True, metrics)]


def test_in_process_replay_counts_the_wait_for_a_step_in_ttft():
    """A request that arrives while the device is in a step waits for the step to end before its
    engine sees it; its TTFT runs from its arrival (as a client would measure), not from then."""
    from coserve.bench.in_process import replay
    from coserve.workload import WorkloadRequest

    clock = [100.0]  # any origin: records are relative to the replay's start

    def sleep(seconds):
        clock[0] += seconds

    device = _OneAtATimeDevice(clock)
    requests = [WorkloadRequest(0, "m", 0.0, 8, 1), WorkloadRequest(1, "m", 0.25, 8, 1),
                WorkloadRequest(2, "m", 5.0, 8, 1)]
    records = {r.request_id: r for r in replay(device, requests, "x", clock=lambda: clock[0], sleep=sleep)}
    # request 0 runs in [0, 1]; request 1 is picked up at 1 and runs in [1, 2]; the device is idle
    # from 2 until request 2 arrives at 5 and runs in [5, 6]
    assert records[0].ttft == pytest.approx(1.0)
    assert records[1].ttft == pytest.approx(2.0 - 0.25)
    assert records[2].ttft == pytest.approx(1.0)
    assert all(r.success and r.output_tokens == 1 for r in records.values())
