"""A GGUF file as a ModelSpec plus a float32 state dict in Hugging Face names and layout.

gguf.GGUFReader parses the container (metadata and memory-mapped tensor bytes); the values are decoded by
our own dequant module.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader

from coserve.errors import ModelConfigError, WeightLoadError
from coserve.execution.models.spec import ModelSpec
from coserve.execution.weights.dequant import dequantize
from coserve.execution.weights.names import check_shapes, expected_shapes

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# llama.cpp's converter reorders q/k rows for its interleaved rotary layout; qwen2 uses the NeoX
# (half-split) layout that matches Hugging Face and is stored unpermuted
PERMUTED_ARCHITECTURES = {"llama"}

GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")

# Llama 3.1+ files carry their rope scaling as per-frequency divisors in this tensor rather than as
# metadata; it changes every position's rotation, so it becomes the spec's rope scaling.
ROPE_FREQS = "rope_freqs.weight"
IGNORED_TENSORS = {ROPE_FREQS}


@dataclass
class GGUFContents:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]  # float32, Hugging Face names and row order
    chat_template: str | None
    has_tokenizer: bool


def read_gguf(path: Path) -> GGUFContents:
    reader = open_gguf(path)
    spec = spec_from_reader(reader, path)
    return GGUFContents(
        spec=spec,
        state_dict=read_state_dict(reader, spec, path),
        chat_template=metadata(reader, "tokenizer.chat_template"),
        has_tokenizer=metadata(reader, "tokenizer.ggml.model") is not None,
    )


def open_gguf(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except Exception as exc:  # the reader signals bad or truncated input with assorted numpy errors
        raise WeightLoadError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from exc


def metadata(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def spec_from_reader(reader: GGUFReader, path: Path) -> ModelSpec:
    arch = metadata(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelConfigError(f"{path}: GGUF architecture {arch!r} is not supported; "
                               f"supported: {sorted(ARCHITECTURES)}")

    def key(name: str, default: Any = None) -> Any:
        return metadata(reader, f"{arch}.{name}", default)

    def required(name: str) -> Any:
        value = key(name)
        if value is None:
            raise WeightLoadError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    hidden, heads = int(required("embedding_length")), int(required("attention.head_count"))
    if heads <= 0:
        raise WeightLoadError(f"{path}: GGUF metadata gives {arch}.attention.head_count = {heads}")
    head_dim = int(key("attention.key_length") or hidden // heads)
    rotary_dims = key("rope.dimension_count")
    if rotary_dims is not None and rotary_dims != head_dim:
        raise ModelConfigError(f"{path}: partial rotary ({rotary_dims} of {head_dim} dims) is not supported")
    tensors = {t.name for t in reader.tensors}
    return ModelSpec(
        architecture=ARCHITECTURES[arch],
        num_layers=int(required("block_count")),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv") or heads),
        head_dim=head_dim,
        intermediate_size=int(required("feed_forward_length")),
        vocab_size=_vocab_size(reader, arch, path),
        max_position_embeddings=int(key("context_length", 4096)),
        rms_norm_eps=_decimal(key("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=_decimal(key("rope.freq_base", 10000.0)),
        rope_scaling=_rope_freq_factors(reader, path) or _rope_scaling(key),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        bos_token_id=metadata(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=metadata(reader, "tokenizer.ggml.eos_token_id"),
    )


def _rope_freq_factors(reader: GGUFReader, path: Path) -> dict[str, Any] | None:
    tensor = next((t for t in reader.tensors if t.name == ROPE_FREQS), None)
    if tensor is None:
        return None
    return {"rope_type": "freq_factors", "factors": [float(f) for f in _decode(tensor, path).reshape(-1)]}


def _decimal(value: float) -> float:
    """GGUF stores these as float32: 1e-5 reads back as 9.99999974e-06. The shortest decimal that
    rounds to the same float32 is the value the original config held."""
    return float(str(np.float32(value)))


def _vocab_size(reader: GGUFReader, arch: str, path: Path) -> int:
    if (size := metadata(reader, f"{arch}.vocab_size")) is not None:
        return int(size)
    if (tokens := reader.get_field("tokenizer.ggml.tokens")) is not None:
        return len(tokens.data)  # one entry per token; avoids decoding every string
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise WeightLoadError(f"{path}: no vocab_size, token list or token_embd to size the vocabulary")
    return int(embedding.shape[-1])  # ggml lists dimensions fastest-first


def _rope_scaling(key: Callable[..., Any]) -> dict[str, Any] | None:
    kind = key("rope.scaling.type")
    if not kind or kind == "none":
        return None
    scaling = {"rope_type": kind, "factor": float(key("rope.scaling.factor", 1.0))}
    if original := key("rope.scaling.original_context_length"):
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in GLOBAL_NAMES:
        return GLOBAL_NAMES[gguf_name]
    match = LAYER_TENSOR.fullmatch(gguf_name)
    if match and match[2] in LAYER_NAMES:
        return f"model.layers.{match[1]}.{LAYER_NAMES[match[2]]}.{match[3]}"
    return None


def unpermute_rotary(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of q/k (rows or bias entries) back to HF order.

    The converter views each head's rows as (2, head_dim/2) and transposes them, interleaving the two
    rotary halves; viewing them as (head_dim/2, 2) and transposing back restores them.
    """
    rows = weight.shape[0]
    per_head = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return np.ascontiguousarray(per_head.swapaxes(1, 2)).reshape(weight.shape)


def read_state_dict(reader: GGUFReader, spec: ModelSpec, path: Path) -> dict[str, torch.Tensor]:
    permuted = metadata(reader, "general.architecture") in PERMUTED_ARCHITECTURES
    state_dict = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        if name is None:
            if tensor.name in IGNORED_TENSORS:
                continue
            raise WeightLoadError(f"{path}: unexpected tensor {tensor.name!r}")
        values = _decode(tensor, path)
        if permuted and (heads := _rotary_heads(tensor.name, spec)):
            values = unpermute_rotary(values, heads)
        state_dict[name] = torch.from_numpy(values)
    check_shapes(state_dict, expected_shapes(spec), str(path))
    return state_dict


def _rotary_heads(gguf_name: str, spec: ModelSpec) -> int | None:
    match = LAYER_TENSOR.fullmatch(gguf_name)
    kind = match[2] if match else None
    return {"attn_q": spec.num_heads, "attn_k": spec.num_kv_heads}.get(kind)


def _decode(tensor, path: Path) -> np.ndarray:
    shape = tuple(int(d) for d in reversed(tensor.shape))  # ggml lists dimensions fastest-first
    try:
        return dequantize(tensor.data, int(tensor.tensor_type), shape)
    except ValueError as exc:
        raise WeightLoadError(f"{path}: tensor {tensor.name}: {exc}") from exc
