"""coserve's Llama-family model against transformers' own models on the same weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from coserve import LLM, SamplingParams
from coserve.engine.request import Request
from coserve.engine.scheduler import ScheduledRequest, SchedulerOutput

from .conftest import PROMPTS


def full_logits(llm: LLM, token_ids: list[int], chunks: list[int] | None = None) -> torch.Tensor:
    """Logits at every position, computed through the engine's paged path in the given chunks."""
    engine = llm.engine
    request = Request("probe", list(token_ids), SamplingParams())
    chunks = chunks or [len(token_ids)]
    rows = []
    try:
        for size in chunks:
            assert engine.kv.allocate_slots(request, size)
            out = SchedulerOutput([ScheduledRequest(request, size)])
            inputs = engine.runner.prepare(out, engine.kv.block_tables)
            with torch.inference_mode():
                hidden = engine.model(inputs.positions, engine.kv_cache.layers, inputs.meta,
                                      engine.runner.attention, input_ids=inputs.input_ids)
                rows.append(engine.model.compute_logits(hidden))
            request.num_computed_tokens += size
    finally:
        engine.kv.free(request)
    return torch.cat(rows)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def test_smollm2_logits_match_transformers(smollm2_llm, hf_smollm2):
    ids = smollm2_llm.tokenizer.encode(PROMPTS[2])
    with torch.no_grad():
        reference = hf_smollm2(torch.tensor([ids])).logits[0]
    assert relative_error(full_logits(smollm2_llm, ids), reference) < 1e-4
    # the same through chunked prefill and single-token (decode) steps
    chunked = full_logits(smollm2_llm, ids, [5, 7, 1, 1, len(ids) - 14])
    assert relative_error(chunked, reference) < 1e-4


def _random_hf_model(tmp_path, arch: str, **overrides):
    base = dict(vocab_size=512, hidden_size=96, intermediate_size=192, num_hidden_layers=3,
                num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                rope_theta=10000.0, tie_word_embeddings=False)
    config = AutoConfig.for_model(arch, **{**base, **overrides})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    for name, param in model.named_parameters():
        if name.endswith("bias"):  # random biases, so a dropped qkv bias would show
            param.data.normal_(0, 0.5)
    model.save_pretrained(tmp_path)
    return model


CONFIGS = {
    "llama-gqa": ("llama", {}),
    "llama-tied-rope-llama3": ("llama", {"tie_word_embeddings": True, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 4.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    "qwen2-qkv-bias": ("qwen2", {}),
    "mistral-sliding-window": ("mistral", {"sliding_window": 7, "head_dim": 16}),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_random_configs_match_transformers(tmp_path, case):
    arch, overrides = CONFIGS[case]
    reference_model = _random_hf_model(tmp_path, arch, **overrides)
    llm = LLM(str(tmp_path), num_kv_blocks=64, block_size=4)
    ids = torch.randint(0, 512, (37,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.no_grad():
        reference = reference_model(torch.tensor([ids])).logits[0]
    assert relative_error(full_logits(llm, ids), reference) < 1e-4
    assert relative_error(full_logits(llm, ids, [10, 1, 13, 1, 12]), reference) < 1e-4


def _hf_greedy(model, ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=2)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def hf_greedy_outputs(smollm2_llm, hf_smollm2):
    prompts = [smollm2_llm.tokenizer.encode(p) for p in PROMPTS]
    return prompts, [_hf_greedy(hf_smollm2, ids, 20) for ids in prompts]


def test_greedy_matches_transformers_alone_and_batched(smollm2_llm, hf_greedy_outputs):
    prompts, expected = hf_greedy_outputs
    params = SamplingParams(temperature=0, max_tokens=20)
    alone = [smollm2_llm.generate([ids], params)[0].outputs[0].token_ids for ids in prompts]
    batched = [o.outputs[0].token_ids for o in smollm2_llm.generate(prompts, params)]
    assert alone == expected
    assert batched == expected
    assert smollm2_llm.engine.num_free_blocks == smollm2_llm.engine.num_blocks


def test_chunked_prefill_and_preemption_keep_greedy_tokens(hf_greedy_outputs):
    prompts, expected = hf_greedy_outputs
    # 12 blocks of 4 tokens cannot hold six prompts plus their outputs: preemption must happen
    llm = LLM("smollm2-135m-instruct", num_kv_blocks=24, block_size=4, max_num_batched_tokens=16, max_num_seqs=16)
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=20))
    assert [o.outputs[0].token_ids for o in outputs] == expected
    assert sum(o.num_preemptions for o in outputs) > 0
    assert llm.engine.num_free_blocks == llm.engine.num_blocks


def test_layer_range_stages_chain_to_the_full_model(tmp_path):
    """Two stages [0, k) and [k, L) passing hidden states give the full model's logits (pipeline parts)."""
    from coserve.execution.attention import get_attention_backend
    from coserve.execution.kv_cache import PagedKVCache
    from coserve.execution.models.llama import LlamaModel
    from coserve.execution.weights import load_model

    reference_model = _random_hf_model(tmp_path, "llama", tie_word_embeddings=True)
    ids = torch.randint(0, 512, (21,), generator=torch.Generator().manual_seed(3)).tolist()
    with torch.no_grad():
        reference = reference_model(torch.tensor([ids])).logits[0]
    llm = LLM(str(tmp_path), num_kv_blocks=16, block_size=4)
    request = Request("stage", ids, SamplingParams())
    assert llm.engine.kv.allocate_slots(request, len(ids))
    inputs = llm.engine.runner.prepare(SchedulerOutput([ScheduledRequest(request, len(ids))]),
                                       llm.engine.kv.block_tables)
    attention = get_attention_backend("sdpa_gather")
    spec, cut = llm.engine.spec, 2
    hidden = None
    for start, end in [(0, cut), (cut, spec.num_layers)]:
        stage_weights = load_model(str(tmp_path), layer_range=(start, end), tokenizer=False).state_dict
        stage = LlamaModel(spec, start, end)
        stage.load_hf_state_dict(stage_weights)
        cache = PagedKVCache(spec, 16, 4, end - start, torch.float32)
        with torch.no_grad():
            hidden = stage(inputs.positions, cache.layers, inputs.meta, attention,
                           input_ids=inputs.input_ids if start == 0 else None, hidden=hidden)
    with torch.no_grad():
        logits = stage.compute_logits(hidden)
    assert relative_error(logits, reference) < 1e-4
    assert "model.embed_tokens.weight" in stage_weights  # the tied head stage carries the embedding
