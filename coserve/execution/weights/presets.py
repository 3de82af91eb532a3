"""Model shapes a user can name as `random:<preset>` instead of pointing at a config.json.

These are configs, not weights: Hugging Face-style dicts fed to ModelSpec.from_hf_config, with the
published sizes of each model family.
"""

from __future__ import annotations

from typing import Any


def _config(arch: str, layers: int, hidden: int, heads: int, intermediate: int, vocab: int,
            context: int, kv_heads: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "architectures": [arch],
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "max_position_embeddings": context,
        **extra,
    }


def _llama(*args: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("bos_token_id", 1)
    kwargs.setdefault("eos_token_id", 2)
    return _config("LlamaForCausalLM", *args, **kwargs)


def _qwen2(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return _config("Qwen2ForCausalLM", *args, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                   bos_token_id=151643, eos_token_id=151643, **kwargs)


LLAMA2 = {"rms_norm_eps": 1e-5}

PRESETS: dict[str, dict[str, Any]] = {
    # small enough for unit tests: GQA, untied head, a few layers
    "llama-tiny": _llama(4, 64, 4, 128, 256, 512, kv_heads=2, rms_norm_eps=1e-5),
    # SmolLM2's vocabulary, so they can borrow its tokenizer (`tokenizer: smollm2-135m-instruct`)
    "llama-tiny-49k": _llama(2, 64, 4, 128, 49152, 2048, kv_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama-small-49k": _llama(8, 384, 6, 1024, 49152, 4096, kv_heads=2, rms_norm_eps=1e-5),
    "smollm2-135m": _llama(30, 576, 9, 1536, 49152, 8192, kv_heads=3, rope_theta=100_000.0,
                           rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama-7b": _llama(32, 4096, 32, 11008, 32000, 2048),
    "llama-13b": _llama(40, 5120, 40, 13824, 32000, 2048),
    "llama-30b": _llama(60, 6656, 52, 17920, 32000, 2048),
    "llama-65b": _llama(80, 8192, 64, 22016, 32000, 2048),
    "llama2-7b": _llama(32, 4096, 32, 11008, 32000, 4096, **LLAMA2),
    "llama2-13b": _llama(40, 5120, 40, 13824, 32000, 4096, **LLAMA2),
    "llama2-70b": _llama(80, 8192, 64, 28672, 32000, 4096, kv_heads=8, **LLAMA2),
    "llama3-8b": _llama(32, 4096, 32, 14336, 128256, 8192, kv_heads=8, rope_theta=500_000.0,
                        rms_norm_eps=1e-5, bos_token_id=128000, eos_token_id=128001),
    "mistral-7b": _config("MistralForCausalLM", 32, 4096, 32, 14336, 32000, 32768, kv_heads=8,
                          rms_norm_eps=1e-5, sliding_window=4096, bos_token_id=1, eos_token_id=2),
    "qwen2-0.5b": _qwen2(24, 896, 14, 4864, 151936, 32768, kv_heads=2, tie_word_embeddings=True),
    "qwen2-7b": _qwen2(28, 3584, 28, 18944, 152064, 32768, kv_heads=4),
    "qwen2.5-14b": _qwen2(48, 5120, 40, 13824, 152064, 32768, kv_heads=8),
}
