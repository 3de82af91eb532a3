"""Bad arguments to the library and the CLI are typed errors or a one-line CLI message, caught
before any weight is read where they can be: engine and device configs, `LLM`'s calls, model
configs, model names, lane cores and the `coserve` flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coserve import LLM, SamplingParams
from coserve.engine.config import EngineConfig
from coserve.engine.device_config import DeviceConfig
from coserve.entrypoints.cli import build_parser
from coserve.errors import ConfigError, InvalidRequestError, ModelConfigError, UnknownModelError
from coserve.execution.lane import Lane, available_cores
from coserve.execution.models.spec import ModelSpec
from coserve.execution.weights.registry import resolve

TINY = "random:llama-tiny"


@pytest.mark.parametrize("field, value", [
    ("long_prefill_token_threshold", -3), ("long_prefill_token_threshold", 0),  # -3 once hung the scheduler
    ("kv_cache_memory_bytes", float("nan")), ("kv_cache_memory_bytes", float("inf")),
    ("kv_cache_memory_bytes", 1.5), ("kv_cache_memory_bytes", "1GiB"), ("kv_cache_memory_bytes", True),
    ("num_kv_blocks", 2.5), ("num_kv_blocks", "5"), ("num_kv_blocks", True), ("block_size", True),
    ("max_num_seqs", 2.0), ("max_model_len", 0), ("max_model_len", -5), ("max_model_len", 100.5),
    ("num_threads", -2), ("seed", "x"), ("seed", 1.5), ("seed", -1),
    ("gpu_memory_utilization", "0.5"), ("gpu_memory_utilization", float("nan")), ("gpu_memory_utilization", True),
    ("device", None), ("device", "cuda:abc"), ("device", "cuda:-1"), ("device", "tpu"),
    ("dtype", "int8"), ("attention_backend", "flash"), ("model", None), ("model", ""), ("name", 5),
])
def test_engine_config_refuses_what_cannot_work(field, value):
    with pytest.raises(ConfigError, match=field):
        EngineConfig(**{field: value})


def test_engine_config_takes_numpy_counts_and_whole_float_budgets():
    config = EngineConfig(max_num_seqs=np.int64(4), kv_cache_memory_bytes=1e9, num_kv_blocks=np.int32(8))
    assert config.kv_cache_memory_bytes == 10**9 and isinstance(config.kv_cache_memory_bytes, int)
    assert config.max_num_seqs == 4 and config.num_kv_blocks == 8


def test_a_budget_below_one_page_and_a_context_past_the_models_are_refused():
    with pytest.raises(ConfigError, match="holds no page"):
        LLM(TINY, kv_cache_memory_bytes=100)
    with pytest.raises(ConfigError, match="exceeds the model's context"):
        LLM(TINY, max_model_len=10**6)


def test_a_tokenizer_with_more_tokens_than_the_model_embeds_is_refused_at_start_up():
    """SmolLM2's 49,152-token tokenizer on a 256-token random model would send text prompts' ids
    past the embedding table, failing every batch they join; the 49k shape of it is accepted."""
    with pytest.raises(ConfigError, match="49152 tokens but the model embeds only 256"):
        LLM(TINY, tokenizer="smollm2-135m-instruct")
    llm = LLM("random:llama-tiny-49k", tokenizer="smollm2-135m-instruct", num_kv_blocks=16)
    text = llm.generate(["hello there"], SamplingParams(max_tokens=2, temperature=0))[0]
    assert len(text.outputs[0].token_ids) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_a_config_error():
    with pytest.raises(ConfigError, match="not on this machine"):
        LLM(TINY, device="cuda")
    with pytest.raises(ConfigError, match="not on this machine"):
        LLM(models=[EngineConfig(model=TINY, device="cuda:1")],
            device=DeviceConfig(device="cuda:1", memory_budget_bytes=1 << 30))


@pytest.fixture(scope="module")
def tiny_llm():
    return LLM(TINY, device="cpu")  # a device string reaches the engine, as vLLM's device= does


@pytest.mark.parametrize("call, param", [
    (lambda llm: llm.generate(None), "prompt"), (lambda llm: llm.generate(5), "prompt"),
    (lambda llm: llm.generate({"a": 1}), "prompt"), (lambda llm: llm.generate(np.array([1, 2])), "prompt"),
    (lambda llm: llm.generate([]), "prompt"), (lambda llm: llm.generate([[1, 2], None]), "prompt"),
    (lambda llm: llm.generate([1, 2], {"max_tokens": 2}), "params"),
    (lambda llm: llm.generate([1, 2], [SamplingParams(), SamplingParams()]), "params"),
    (lambda llm: llm.generate([1, 2], "greedy"), "params"),
    (lambda llm: llm.generate([1, 2], model=5), "model"),
    (lambda llm: llm.generate([[1, 2], [3]], model=[TINY]), "model"),
    (lambda llm: llm.chat(None), "messages"), (lambda llm: llm.chat([]), "messages"),
])
def test_llm_calls_with_the_wrong_types_are_invalid_request_errors(tiny_llm, call, param):
    with pytest.raises(InvalidRequestError) as info:
        call(tiny_llm)
    assert info.value.param == param
    assert not tiny_llm.engine.has_unfinished_requests()
    assert tiny_llm.engine.kv.pool.num_free_blocks == tiny_llm.engine.kv.pool.num_blocks


def test_llm_still_answers_after_refusals(tiny_llm):
    out = tiny_llm.generate([[1, 2, 3]], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(device=DeviceConfig()), "models="),  # a DeviceConfig without models would be ignored
    (dict(models=TINY), "models must be"), (dict(models=[]), "models must be"),
    (dict(models=[EngineConfig(model=TINY)], device="cpu"), "DeviceConfig"),
    (dict(models=[EngineConfig(model=TINY)], max_num_seqs=4), "max_num_seqs"),  # would be dropped silently
])
def test_llm_constructor_refuses_arguments_it_would_ignore(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LLM(**kwargs)


TINY_HF = dict(architectures=["LlamaForCausalLM"], num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
               intermediate_size=128, vocab_size=256, max_position_embeddings=512)


@pytest.mark.parametrize("config, message", [
    ({k: v for k, v in TINY_HF.items() if k != "num_attention_heads"}, "num_attention_heads"),
    ({**TINY_HF, "num_hidden_layers": "2"}, "num_layers"),
    ({**TINY_HF, "num_attention_heads": 0}, "cannot be read|must be a positive"),
    ({**TINY_HF, "architectures": "LlamaForCausalLM"}, "architectures must be a list"),
    ([TINY_HF], "JSON object"),
])
def test_bad_model_configs_are_model_config_errors(config, message, tmp_path):
    with pytest.raises(ModelConfigError, match=message):
        ModelSpec.from_hf_config(config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ModelConfigError):
        LLM(f"random:{path}")


def test_the_tiny_config_itself_is_fine():
    assert ModelSpec.from_hf_config(TINY_HF).head_dim == 16


@pytest.mark.parametrize("name", [None, 5, "", "   "])
def test_a_model_name_that_is_not_a_name_is_unknown(name):
    with pytest.raises(UnknownModelError):
        resolve(name)


def test_lane_cores_this_process_cannot_use_are_refused_before_a_lane_starts():
    with pytest.raises(ConfigError, match="cores"):
        Lane(0, [max(available_cores()) + 1000], {})
    with pytest.raises(ConfigError, match="cores"):
        Lane(0, ["0"], {})


@pytest.mark.parametrize("argv", [["serve", "--port", "70000"], ["serve", "--port", "-1"],
                                  ["--log-level", "chatty", "serve"]])
def test_cli_flags_out_of_range_exit_2_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    flag = next(arg for arg in argv if arg.startswith("--"))
    assert info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err
