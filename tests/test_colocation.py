"""Several models on one configured device: the memory bill, start-up errors, `LLM` and the server."""

from __future__ import annotations

import time

import pytest
import yaml

from coserve import LLM, SamplingParams
from coserve.engine.config import EngineConfig
from coserve.engine.device_config import ColocatedModel, DeviceConfig, build_device
from coserve.engine.device_pool import PageLayout
from coserve.engine.llm_engine import LLMEngine
from coserve.entrypoints.serve_config import load_config
from coserve.errors import ConfigError, UnknownModelError
from coserve.execution.models.spec import parse_dtype
from coserve.execution.weights import load_model

REAL = "smollm2-135m-instruct"
SHAPES = {  # three shapes: 30 layers / 3 KV heads, 4 layers, 2 layers with other head counts
    "real": dict(model=REAL),
    "small": dict(model="random:llama-small-49k", tokenizer=REAL, seed=1),
    "tiny": dict(model="random:llama-tiny-49k", tokenizer=REAL, seed=2),
}
PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time", "List three colors:"]
PARAMS = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
MiB = 1 << 20


def configs(max_num_seqs: int = 8) -> list[EngineConfig]:
    return [EngineConfig(name=n, max_num_seqs=max_num_seqs, max_num_batched_tokens=64, **kw)
            for n, kw in SHAPES.items()]


def fixed_bytes(cfgs: list[EngineConfig]) -> tuple[int, int]:
    """(weights + activations the device must hold, bytes of one page): the budget's fixed part."""
    from coserve.engine.device_config import memory_bill

    specs = {c.name: load_model(c.model, tokenizer=False, layer_range=(0, 1)).spec for c in cfgs}
    bill = memory_bill([ColocatedModel(c) for c in cfgs], specs, 0)
    page = PageLayout.page_bytes_for([(specs[c.name], parse_dtype(c.dtype)) for c in cfgs])
    return -bill.kv_bytes, page


def test_the_weight_bill_matches_the_loaded_weights():
    from coserve.engine.device_config import memory_bill

    cfg = configs()[1]
    spec = load_model(cfg.model, tokenizer=False, layer_range=(0, 1)).spec
    bill = memory_bill([ColocatedModel(cfg)], {cfg.name: spec}, 1 << 40)
    engine = LLMEngine(EngineConfig(**{**cfg.__dict__, "num_kv_blocks": 1}))
    assert bill.weights[cfg.name] == engine.weight_bytes


@pytest.mark.parametrize("device,models_kw,message", [
    (dict(policy="fastest"), {}, "policy must be one of"),
    (dict(num_lanes=0), {}, "num_lanes must be a positive integer"),
    (dict(kv_quotas={"real": 0.7, "small": 0.5}), {}, "over 100%"),
    (dict(kv_quotas={"nobody": 0.5}), {}, "not on this device"),
    (dict(), dict(rate=0.0), "rate must be a positive finite number"),
    (dict(memory_budget_bytes=300 * MiB), {}, r"do not fit .* real weights 513\.\d MiB"),
])
def test_configs_that_cannot_work_fail_at_start_up(device, models_kw, message):
    with pytest.raises(ConfigError, match=message):
        models = [ColocatedModel(c, **models_kw) for c in configs()]
        build_device(models, DeviceConfig(**{"memory_budget_bytes": 2 << 30, **device}))


def test_three_shapes_under_mux_generate_what_each_generates_alone(smollm2_llm):
    """A pool of a few pages for 12 requests: quotas adapt, requests preempt, outputs stay exact."""
    cfgs = configs(max_num_seqs=4)
    fixed, page = fixed_bytes(cfgs)
    device = DeviceConfig(policy="mux", num_lanes=2, memory_budget_bytes=fixed + 6 * page)
    with LLM(models=cfgs, device=device) as llm:
        pool = llm.engine.kv.pool
        assert pool.num_blocks == 6
        names = [name for name in SHAPES for _ in PROMPTS]
        outputs = llm.generate(PROMPTS * len(SHAPES), PARAMS, model=names)  # all 12 side by side
        together = {name: outputs[i * len(PROMPTS):(i + 1) * len(PROMPTS)] for i, name in enumerate(SHAPES)}
        assert pool.num_free_blocks == pool.num_blocks
        assert sum(e.scheduler.num_preemptions for e in llm.engines.values()) > 0  # the pool was contended
    for name, kw in SHAPES.items():
        alone = smollm2_llm if name == "real" else LLM(**kw)
        expected = [o.outputs[0].token_ids for o in alone.generate(PROMPTS, PARAMS)]
        assert [o.outputs[0].token_ids for o in together[name]] == expected, name


def test_spatial_slices_the_pages_a_partial_kv_quota_leaves_among_the_other_models():
    """Spatial shares no page: with a quota for one model, the other two still get fixed slices,
    of the pages left, in proportion to rate x KV bytes per token; a quota that leaves them no
    page is refused."""
    from coserve.engine.device_config import plan_device

    cfgs = configs()
    specs = {c.name: load_model(c.model, tokenizer=False, layer_range=(0, 1)).spec for c in cfgs}
    rates = {"real": 1.0, "small": 3.0, "tiny": 1.0}
    models = [ColocatedModel(c, rates[c.name]) for c in cfgs]
    plan = plan_device(models, DeviceConfig(policy="spatial", memory_budget_bytes=2 << 30, kv_quotas={"real": 0.5}),
                       specs)
    pages, caps = plan.layout.num_pages, plan.page_caps
    assert caps["real"] == int(0.5 * pages)
    left = pages - caps["real"]
    demand = {m: rates[m] * specs[m].kv_bytes_per_token(parse_dtype("float32")) for m in ("small", "tiny")}
    assert caps["small"] + caps["tiny"] == left
    assert abs(caps["small"] - left * demand["small"] / sum(demand.values())) <= 1
    with pytest.raises(ConfigError, match="leave 0 of"):
        plan_device(models, DeviceConfig(policy="spatial", memory_budget_bytes=2 << 30, kv_quotas={"real": 1.0}),
                    specs)


def test_llm_names_the_model_when_several_are_loaded():
    cfgs = configs()[1:]
    with LLM(models=cfgs, device=DeviceConfig(policy="temporal", num_lanes=1, memory_budget_bytes=1 << 30)) as llm:
        with pytest.raises(UnknownModelError, match="name one of"):
            llm.generate("hi", PARAMS)
        with pytest.raises(UnknownModelError, match="not loaded"):
            llm.generate("hi", PARAMS, model="real")
        assert len(llm.generate("hi", PARAMS, model="tiny")[0].outputs[0].token_ids) == 24


@pytest.mark.parametrize("device,message", [
    ("{policy: mux, kv_quotas: {a: 0.6, b: 0.6}}", "over 100%"),
    ("{policy: lottery}", "device.policy"),
    ("{num_lanes: 0}", "device.num_lanes"),
    ("{kv_quotas: {ghost: 0.5}}", "unknown models"),
])
def test_server_yaml_device_errors_name_the_field(tmp_path, device, message):
    models = [{"name": "a", "model": "random:llama-tiny"}, {"name": "b", "model": "random:llama-tiny"}]
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": models}) + f"device: {device}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_server_yaml_under_a_device_may_not_size_kv_per_model(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "a", "model": "random:llama-tiny",
                                                "kv_cache_memory_bytes": 1 << 20}],
                                    "device": {"memory_budget_bytes": 1 << 30}}))
    with pytest.raises(ConfigError, match="share one pool"):
        load_config(path)


def test_server_with_a_mux_device_serves_both_models_side_by_side(smollm2_llm):
    import concurrent.futures

    import httpx
    import openai

    from coserve.entrypoints.serve_config import DeviceSection, ModelDeployment, ServerConfig
    from tests.test_server import RunningServer

    config = ServerConfig(
        models=[ModelDeployment(name="real", model=REAL, max_num_seqs=8, rate=2.0, slo_ttft_ms=2000),
                ModelDeployment(name="tiny", model="random:llama-tiny-49k", tokenizer=REAL, seed=2)],
        device=DeviceSection(policy="mux", num_lanes=2, memory_budget_bytes=1 << 30))
    tiny_alone = LLM(**SHAPES["tiny"])
    with RunningServer(config) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def complete(model: str, prompt: str) -> str:
            return client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0).choices[0].text

        jobs = [(m, p) for m in ("real", "tiny") for p in PROMPTS]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            texts = list(pool.map(lambda job: complete(*job), jobs))
        params = SamplingParams(temperature=0, max_tokens=12)
        expected = [o.outputs[0].text for o in smollm2_llm.generate(PROMPTS, params)]
        expected += [o.outputs[0].text for o in tiny_alone.generate(PROMPTS, params)]
        assert texts == expected
        # a client that walks away mid-stream: its pages come back, the device keeps serving
        with httpx.stream("POST", server.url + "/v1/completions", json={
                "model": "real", "prompt": "Tell me a story", "max_tokens": 200, "stream": True}) as response:
            next(response.iter_lines())
        assert complete("tiny", PROMPTS[0]) == expected[len(PROMPTS)]
        engine = server.engine("real")
        device = server.app.state.engine.device
        deadline = time.monotonic() + 60
        while device.has_unfinished_requests() and time.monotonic() < deadline:
            time.sleep(0.01)  # the abort lands once the engine thread reads it
        assert engine.kv.pool.num_free_blocks == engine.kv.pool.num_blocks
        listed = httpx.get(server.url + "/v1/models", timeout=30).json()
        assert sorted(m["id"] for m in listed["data"]) == ["real", "tiny"]
        assert 'vllm:num_requests_running{model_name="tiny"}' in httpx.get(server.url + "/metrics", timeout=30).text


def test_the_example_device_config_is_valid():
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parent.parent / "examples" / "serve_mux.yaml")
    assert config.device.policy == "mux" and [m.name for m in config.models] == ["smollm2", "small", "tiny"]
    assert config.models[0].colocated(None).slo.ttft_ms == 2000
