"""Several models on one device's page pool: same outputs as alone, pages shared and returned."""

from __future__ import annotations

import pytest
import torch

from coserve import SamplingParams
from coserve.engine.config import EngineConfig
from coserve.engine.device_pool import DeviceKVPool, PageLayout, initial_quotas
from coserve.engine.llm_engine import LLMEngine
from coserve.errors import ConfigError

REAL = "smollm2-135m-instruct"
MODELS = {  # three shapes: 30 layers/3 KV heads/dim 64, 2 layers/2 heads/dim 16, 8 layers/2 heads/dim 64
    "real": EngineConfig(model=REAL, name="real"),
    "tiny": EngineConfig(model="random:llama-tiny-49k", name="tiny", tokenizer=REAL, seed=1),
    "small": EngineConfig(model="random:llama-small-49k", name="small", tokenizer=REAL, seed=2),
}
PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time", "Water boils at"]


def _drain(engines: dict[str, LLMEngine]) -> dict[tuple[str, str], list[int]]:
    done = {}
    while any(e.has_unfinished_requests() for e in engines.values()):
        for name, engine in engines.items():  # round-robin, as a one-lane temporal multiplexer would
            for output in engine.step():
                if output.finished:
                    done[(name, output.request_id)] = output.outputs[0].token_ids
    return done


def _submit(engines: dict[str, LLMEngine]) -> None:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    for name, engine in engines.items():
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(prompt, params, request_id=f"{name}-{i}")


@pytest.fixture(scope="module")
def alone() -> dict[tuple[str, str], list[int]]:
    engines = {n: LLMEngine(EngineConfig(**{**c.__dict__, "num_kv_blocks": 64})) for n, c in MODELS.items()}
    _submit(engines)
    return _drain(engines)


@pytest.mark.parametrize("budget_mb", [64, 3])
def test_colocated_models_on_one_pool_generate_what_they_generate_alone(alone, budget_mb):
    pool = DeviceKVPool(PageLayout.for_configs(list(MODELS.values()), budget_mb << 20))
    engines = {n: LLMEngine(c, pool=pool) for n, c in MODELS.items()}
    assert len({e.kv.block_size for e in engines.values()}) == 3  # one page, three token counts
    _submit(engines)
    shared = _drain(engines)
    assert shared == alone
    assert pool.blocks.num_free_blocks == pool.layout.num_pages
    if budget_mb == 3:  # 4 pages for 12 requests: models had to preempt and reuse each other's pages
        assert sum(e.scheduler.num_preemptions for e in engines.values()) > 0


def test_quotas_cap_a_model_and_are_checked():
    assert initial_quotas({"a": 3.0, "b": 1.0}, 8) == {"a": 6, "b": 2}
    assert sum(initial_quotas({"a": 5.0, "b": 0.0, "c": 0.01}, 7).values()) == 7
    with pytest.raises(ConfigError, match="quotas sum"):
        from coserve.execution.models.spec import ModelSpec
        from coserve.execution.weights.presets import PRESETS

        spec = ModelSpec.from_hf_config(PRESETS["llama-tiny"])
        pool = DeviceKVPool(PageLayout.for_models([(spec, torch.float32)], 1 << 20))
        pool.set_quotas({"a": pool.layout.num_pages, "b": 1})
    with pytest.raises(ConfigError, match="no page"):
        PageLayout.for_models([(spec, torch.float32)], 10)


def test_each_model_on_a_shared_pool_reports_its_own_kv_usage():
    """vLLM's `kv_cache_usage_perc` per model_name: on a device's shared pool, the pages the model
    holds, not the whole pool's use repeated under every model's label."""
    from coserve.entrypoints.openai.prometheus import EngineMetrics

    configs = [MODELS["tiny"], MODELS["small"]]
    pool = DeviceKVPool(PageLayout.for_configs(configs, 8 << 20))
    engines = {c.name: LLMEngine(c, pool=pool) for c in configs}
    engines["tiny"].add_request(PROMPTS[0] * 8, SamplingParams(temperature=0, max_tokens=4))
    engines["tiny"].step()
    used = pool.blocks.num_used_blocks
    assert used > 0
    metrics = EngineMetrics()
    metrics.refresh_gauges(engines)

    def usage(name):
        return metrics.registry.get_sample_value("vllm:kv_cache_usage_perc", {"model_name": name})

    assert usage("tiny") == pytest.approx(used / pool.blocks.num_blocks)
    assert usage("small") == 0
