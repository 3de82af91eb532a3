"""Hugging Face tensor names and shapes a ModelSpec implies, for a whole model or a pipeline stage."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from coserve.errors import ConfigError, WeightLoadError
from coserve.execution.models.spec import ModelSpec

Shape = tuple[int, ...]


def check_layer_range(spec: ModelSpec, layer_range: tuple[int, int] | None) -> tuple[int, int]:
    if layer_range is None:
        return 0, spec.num_layers
    start, end = layer_range
    if not 0 <= start < end <= spec.num_layers:
        raise ConfigError(
            f"layer_range must satisfy 0 <= start < end <= {spec.num_layers}, got {layer_range}")
    return start, end


def layer_shapes(spec: ModelSpec, index: int) -> dict[str, Shape]:
    h, q, kv, ff = spec.hidden_size, spec.q_size, spec.kv_size, spec.intermediate_size
    prefix = f"model.layers.{index}"
    shapes = {
        f"{prefix}.input_layernorm.weight": (h,),
        f"{prefix}.self_attn.q_proj.weight": (q, h),
        f"{prefix}.self_attn.k_proj.weight": (kv, h),
        f"{prefix}.self_attn.v_proj.weight": (kv, h),
        f"{prefix}.self_attn.o_proj.weight": (h, q),
        f"{prefix}.post_attention_layernorm.weight": (h,),
        f"{prefix}.mlp.gate_proj.weight": (ff, h),
        f"{prefix}.mlp.up_proj.weight": (ff, h),
        f"{prefix}.mlp.down_proj.weight": (h, ff),
    }
    if spec.attention_bias:
        shapes[f"{prefix}.self_attn.q_proj.bias"] = (q,)
        shapes[f"{prefix}.self_attn.k_proj.bias"] = (kv,)
        shapes[f"{prefix}.self_attn.v_proj.bias"] = (kv,)
    return shapes


def expected_shapes(spec: ModelSpec, layer_range: tuple[int, int] | None = None) -> dict[str, Shape]:
    """Every tensor a stage running layers [start, end) holds.

    A tied model has no lm_head tensor: its head is the embedding, so the last stage keeps its own copy
    of model.embed_tokens.weight even when it does not start at layer 0 (as ModelSpec.num_params counts).
    """
    start, end = check_layer_range(spec, layer_range)
    last = end == spec.num_layers
    shapes: dict[str, Shape] = {}
    if start == 0 or (last and spec.tie_word_embeddings):
        shapes["model.embed_tokens.weight"] = (spec.vocab_size, spec.hidden_size)
    for index in range(start, end):
        shapes.update(layer_shapes(spec, index))
    if last:
        shapes["model.norm.weight"] = (spec.hidden_size,)
        if not spec.tie_word_embeddings:
            shapes["lm_head.weight"] = (spec.vocab_size, spec.hidden_size)
    return shapes


def check_shapes(tensors: Mapping[str, torch.Tensor], wanted: Mapping[str, Shape], origin: str) -> None:
    """Raise WeightLoadError (naming `origin`) unless every wanted tensor is present with its shape."""
    missing = [name for name in wanted if name not in tensors]
    if missing:
        raise WeightLoadError(f"{origin}: missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    for name, shape in wanted.items():
        if tuple(tensors[name].shape) != shape:
            raise WeightLoadError(
                f"{origin}: {name} has shape {tuple(tensors[name].shape)}, the config implies {shape}")
