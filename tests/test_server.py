"""The OpenAI-compatible server, driven by the official `openai` client on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from coserve import SamplingParams
from coserve.entrypoints.openai.server import build_app, load_engines
from coserve.entrypoints.serve_config import ModelDeployment, ServerConfig
from coserve.errors import ContextLengthError, OutOfCapacityError

REAL = "smollm2-135m-instruct"
TINY = "tiny"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """`engines`: what the server steps (default: those `config` describes)."""

    def __init__(self, config: ServerConfig, engines=None):
        self.config = config
        self.app = build_app(load_engines(config) if engines is None else engines, config)
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def engine(self, name: str):
        return self.app.state.engine.engines[name]


def tiny_deployment(**overrides) -> ModelDeployment:
    fields = dict(name=TINY, model="random:llama-tiny-49k", tokenizer=REAL, num_kv_blocks=64, max_num_seqs=8)
    return ModelDeployment(**{**fields, **overrides})


@pytest.fixture(scope="module")
def server():
    config = ServerConfig(models=[
        ModelDeployment(name=REAL, model=REAL, kv_cache_memory_bytes=128 << 20, max_num_seqs=16),
        tiny_deployment(),
    ])
    with RunningServer(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_lists_every_model(client):
    assert sorted(m.id for m in client.models.list().data) == sorted([REAL, TINY])


def test_chat_completion_answers_and_counts_usage(client, server):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=REAL, messages=messages, max_tokens=12, temperature=0)
    engine = server.engine(REAL)
    prompt_ids = engine.tokenize(engine.apply_chat_template(messages))
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert reply.usage.prompt_tokens == len(prompt_ids)
    completion_ids = engine.tokenizer.encode(choice.message.content, add_special_tokens=False)
    assert reply.usage.completion_tokens >= len(completion_ids) - 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_greedy_completion_over_http_equals_offline_generate(client, smollm2_llm):
    prompt = "The three largest planets in the solar system are"
    reply = client.completions.create(model=REAL, prompt=prompt, max_tokens=16, temperature=0)
    offline = smollm2_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=16))[0].outputs[0]
    assert reply.choices[0].text == offline.text
    assert reply.usage.completion_tokens == len(offline.token_ids)
    assert reply.choices[0].finish_reason == "length"


def test_streaming_chunks_concatenate_to_the_full_answer(client):
    prompt = "Count from one to ten: one, two,"
    full = client.completions.create(model=REAL, prompt=prompt, max_tokens=20, temperature=0)
    stream = client.completions.create(model=REAL, prompt=prompt, max_tokens=20, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]


def test_chat_stream_starts_with_role_and_ends(client):
    stream = client.chat.completions.create(model=REAL, messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_n_choices_and_stop_strings(client):
    prompt = "Count from one to ten: one, two,"
    base = client.completions.create(model=REAL, prompt=prompt, max_tokens=20, temperature=0).choices[0].text
    stop = base.strip().split()[2]  # a word the greedy answer will reach
    stopped = client.completions.create(model=REAL, prompt=prompt, max_tokens=20, temperature=0, stop=[stop])
    assert stopped.choices[0].text == base[:base.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"
    many = client.completions.create(model=REAL, prompt=prompt, max_tokens=6, temperature=0.8, n=3, seed=5)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]
    assert many.usage.completion_tokens == 18


BAD_BODIES = [
    ({"model": REAL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": REAL, "prompt": "hi", "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": REAL, "prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"model": REAL, "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"model": REAL, "prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ({"model": REAL, "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"model": REAL, "prompt": "hi", "n": 0}, 400, "n"),
    ({"model": REAL, "prompt": "hi", "stop": 3}, 400, "stop"),
    ({"model": REAL, "prompt": ""}, 400, "prompt"),
    ({"model": REAL, "prompt": "word " * 9000, "max_tokens": 4}, 400, "prompt"),
    ({"model": REAL, "prompt": "hi", "max_tokens": 9000}, 400, "max_tokens"),
    ({"model": REAL}, 400, "prompt"),
    ({"model": "no-such-model", "prompt": "hi"}, 404, "model"),
    ({"model": REAL, "prompt": ["hi"] * 257}, 400, "n"),  # more than a model may ever queue: never 429
]
UNSUPPORTED = [{"logprobs": 5}, {"echo": True}, {"best_of": 3}, {"logit_bias": {"50": 10}}, {"suffix": "end"}]


@pytest.mark.parametrize("body,status,param", BAD_BODIES, ids=[b[2] + str(i) for i, b in enumerate(BAD_BODIES)])
def test_bad_input_gets_openai_error(server, body, status, param):
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]


@pytest.mark.parametrize("fields", UNSUPPORTED, ids=[next(iter(f)) for f in UNSUPPORTED])
def test_fields_this_server_does_not_implement_are_refused_not_ignored(server, fields):
    response = httpx.post(server.url + "/v1/completions", json={"model": TINY, "prompt": "hi", **fields}, timeout=30)
    assert response.status_code == 400
    assert next(iter(fields)) in response.json()["error"]["message"]


def test_defaults_of_unsupported_fields_are_accepted(client):
    reply = client.completions.create(model=TINY, prompt="hi", max_tokens=2, logprobs=None, echo=False, best_of=1)
    assert reply.usage.completion_tokens == 2


def test_seeds_of_n_copies_stay_valid_at_the_top_of_the_range(server):
    body = {"model": TINY, "prompt": "hi", "max_tokens": 3, "n": 2, "seed": 2**63 - 1, "ignore_eos": True}
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert sorted(c["index"] for c in response.json()["choices"]) == [0, 1]
    assert server.engine(TINY).kv.pool.num_used_blocks == 0


def test_a_default_max_tokens_is_cut_to_the_context_left():
    config = ServerConfig(models=[tiny_deployment(max_model_len=24)])
    with RunningServer(config) as running:
        prompt = list(range(100, 120))  # 20 tokens: 4 left, fewer than the completions default of 16
        reply = httpx.post(running.url + "/v1/completions", json={"model": TINY, "prompt": prompt}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] <= 4
        asked = httpx.post(running.url + "/v1/completions", timeout=60,
                           json={"model": TINY, "prompt": prompt, "max_tokens": 16})
        assert asked.status_code == 400 and asked.json()["error"]["param"] == "max_tokens"


def test_bodies_python_cannot_decode_or_tokenize_are_400s(server, client):
    def post(raw: bytes) -> httpx.Response:
        return httpx.post(server.url + "/v1/completions", content=raw, timeout=30,
                          headers={"content-type": "application/json"})

    lone_surrogate = post(b'{"model": "%s", "prompt": "\\ud800"}' % REAL.encode())
    assert lone_surrogate.status_code == 400 and lone_surrogate.json()["error"]["param"] == "prompt"
    nested = post(b"[" * 100_000 + b"]" * 100_000)
    assert nested.status_code == 400 and nested.json()["error"]["type"] == "invalid_request_error"
    unknown_path = httpx.get(server.url + "/v1/nothing-here", timeout=30)
    assert unknown_path.status_code == 404 and unknown_path.json()["error"]["message"]
    assert client.completions.create(model=TINY, prompt="hello", max_tokens=2).usage.completion_tokens == 2


def test_malformed_json_and_chat_errors(server, client):
    response = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(server.url + "/v1/chat/completions", json={"model": REAL, "messages": []}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    # still serving afterwards
    reply = client.completions.create(model=TINY, prompt="hello", max_tokens=3, temperature=0)
    assert reply.usage.completion_tokens == 3


def _metric(server, name: str, model: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model_name="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {model} not exported")


def test_client_disconnect_frees_kv_blocks(server):
    engine = server.engine(REAL)
    body = {"model": REAL, "prompt": "Tell me a very long story.", "max_tokens": 500, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(3))]
        assert received and engine.kv.pool.num_used_blocks > 0
    deadline = time.monotonic() + 30
    while engine.kv.pool.num_used_blocks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.kv.pool.num_used_blocks == 0
    assert _metric(server, "vllm:num_requests_running", REAL) == 0


def test_metrics_use_vllm_names(server, client):
    client.completions.create(model=TINY, prompt="hello there", max_tokens=4, temperature=0)
    text = httpx.get(server.url + "/metrics", timeout=30).text
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_bucket", "vllm:request_queue_time_seconds_bucket",
                 "vllm:num_preemptions_total"]:
        assert name in text, name
    assert _metric(server, "vllm:generation_tokens_total", TINY) >= 4


def test_full_queue_answers_429_and_recovers():
    config = ServerConfig(max_waiting_requests=1, models=[tiny_deployment(max_num_seqs=1)])
    with RunningServer(config) as running:
        body = {"model": TINY, "prompt": "hello", "max_tokens": 40, "ignore_eos": True}

        def post(results: list) -> None:
            results.append(httpx.post(running.url + "/v1/completions", json=body, timeout=60))

        results: list = []
        threads = [threading.Thread(target=post, args=(results,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results)
        assert 429 in codes and 200 in codes
        rejected = next(r for r in results if r.status_code == 429)
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        again = httpx.post(running.url + "/v1/completions", json={**body, "max_tokens": 2}, timeout=60)
        assert again.status_code == 200
        assert running.engine(TINY).kv.pool.num_used_blocks == 0


def test_bench_against_the_server_writes_complete_json(server, tmp_path):
    from coserve.entrypoints.cli import main as coserve_main

    out = tmp_path / "result.json"
    code = coserve_main(["bench", "--base-url", server.url, "--model", REAL, TINY, "--num-prompts", "6",
                       "--dataset", "random", "--random-input-len", "16", "--random-output-len", "8",
                       "--request-rate", "inf", "--seed", "0", "--save-result", str(out), "--disable-tqdm",
                       "--slo", "ttft:60000", "tpot:60000"])
    assert code == 0
    result = json.loads(out.read_text())
    assert len(result["requests"]) == 6
    assert all(r["success"] for r in result["requests"])


def test_chat_content_parts_and_bad_parts(server, client):
    parts = [{"type": "text", "text": "What is the capital of "}, {"type": "text", "text": "France?"}]
    reply = client.chat.completions.create(model=REAL, messages=[{"role": "user", "content": parts}],
                                           max_tokens=12, temperature=0)
    assert "Paris" in reply.choices[0].message.content
    bad = {"model": REAL, "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}
    response = httpx.post(server.url + "/v1/chat/completions", json=bad, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    image = {"model": REAL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    assert httpx.post(server.url + "/v1/chat/completions", json=image, timeout=30).status_code == 400


def test_errors_the_engine_finds_after_validation_are_4xx_or_503_not_500(server, monkeypatch):
    """The engine thread can refuse what the handler let through (a replica set changed between the
    check and the add: a shrunken context, every replica down): the client hears why, not a 500."""
    engine = server.engine(TINY)
    body = {"model": TINY, "prompt": "hello", "max_tokens": 4}
    cases = ((ContextLengthError("the prompt no longer fits any replica", "prompt"), 400, "invalid_request_error"),
             (OutOfCapacityError(f"every replica of {TINY!r} is down"), 503, "server_error"))
    for error, status, kind in cases:
        def refuse(*args, error=error, **kwargs):
            raise error
        monkeypatch.setattr(engine, "add_request", refuse)
        response = httpx.post(server.url + "/v1/completions", json=body, timeout=60)
        assert response.status_code == status and response.json()["error"]["message"] == str(error)
        with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["type"] == kind
    monkeypatch.undo()
    assert httpx.post(server.url + "/v1/completions", json=body, timeout=60).status_code == 200


def test_a_request_that_loses_every_replica_in_flight_is_a_503(server, monkeypatch):
    """Accepted, then no replica was left to run it (a cluster rerouting a dead replica's requests
    finds none): the service is unavailable, which is not an internal error."""
    engine = server.engine(TINY)
    real_step = engine.step
    down = OutOfCapacityError(f"every replica of {TINY!r} is down")

    def lose_everything():
        monkeypatch.setattr(engine, "step", real_step)
        return engine.fail_requests([state.request for state in list(engine.states.values())], down)
    monkeypatch.setattr(engine, "step", lose_everything)
    response = httpx.post(server.url + "/v1/completions", json={"model": TINY, "prompt": "hello", "max_tokens": 4},
                          timeout=60)
    assert response.status_code == 503 and str(down) in response.json()["error"]["message"]
    assert engine.kv.pool.num_used_blocks == 0


def test_engine_failure_is_a_server_error_not_a_completion(server, monkeypatch):
    engine = server.engine(TINY)
    real_execute = engine.runner.execute

    def broken(*args, **kwargs):
        monkeypatch.setattr(engine.runner, "execute", real_execute)
        raise RuntimeError("simulated device fault")

    monkeypatch.setattr(engine.runner, "execute", broken)
    response = httpx.post(server.url + "/v1/completions", timeout=60,
                          json={"model": TINY, "prompt": "hello", "max_tokens": 4})
    assert response.status_code == 500 and "simulated device fault" in response.json()["error"]["message"]
    assert engine.kv.pool.num_used_blocks == 0
    ok = httpx.post(server.url + "/v1/completions", timeout=60,
                    json={"model": TINY, "prompt": "hello", "ignore_eos": True})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 16  # the default max_tokens
