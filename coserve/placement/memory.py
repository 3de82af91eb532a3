"""Per-device memory of a model served with tensor degree tp: weights, reserves, KV per token."""

from __future__ import annotations

from coserve.costmodel.hardware import HardwareSpec
from coserve.costmodel.roofline import kv_bytes_per_token_per_device
from coserve.execution.models.spec import DTYPE_BYTES, ModelSpec, parse_dtype

FLOAT32_BYTES = 4  # logits are kept in float32 for sampling whatever the model's dtype
PROCESSES_PER_MODEL = 2  # a prefill job and a decode job per model, each its own process (MuxServe)


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES[parse_dtype(dtype)]


def weight_bytes(spec: ModelSpec, dtype: str, tp: int) -> float:
    """Each device holds 1/tp of every matrix (vocab-parallel embedding and head included)."""
    return spec.param_bytes(parse_dtype(dtype)) / tp


def kv_bytes_per_token(spec: ModelSpec, dtype: str, tp: int) -> float:
    return kv_bytes_per_token_per_device(spec, dtype_bytes(dtype), spec.num_layers, tp)


def reserve_bytes(spec: ModelSpec, dtype: str, tp: int, hw: HardwareSpec, max_batched_tokens: int,
                  max_num_seqs: int) -> float:
    """Memory a model needs on each device besides weights and KV: its processes and activations.

    Activations of one prefill job at the token budget, one layer at a time: the residual stream
    and its normed copy, q/k/v, and the MLP's gate, up and their product; plus float32 logits for
    a full decode batch.
    """
    per_token = 2 * spec.hidden_size + (spec.q_size + 2 * spec.kv_size + 3 * spec.intermediate_size) / tp
    activations = max_batched_tokens * per_token * dtype_bytes(dtype)
    logits = max_num_seqs * spec.vocab_size / tp * FLOAT32_BYTES
    return PROCESSES_PER_MODEL * hw.process_overhead_bytes + activations + logits


def valid_tensor_degree(spec: ModelSpec, tp: int) -> bool:
    """Heads split evenly; KV heads split evenly or are replicated whole (tp a multiple of them)."""
    return spec.num_heads % tp == 0 and (spec.num_kv_heads % tp == 0 or tp % spec.num_kv_heads == 0)
