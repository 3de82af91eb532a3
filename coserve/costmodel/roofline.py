"""Roofline job durations: how long one prefill or decode job takes on a share of a device.

A job is (model, layer range, batch) run with tensor-parallel degree `tp` over `pp` pipeline
stages on a lane that owns `share` of each device's compute. Each stage costs

    max(flops / (peak x share), bytes / (bandwidth x min(1, share / saturation share)))

plus its communication: two ring all-reduces of the batch's hidden states per layer under tensor
parallelism, one send of them between consecutive stages. The stages run one after the other, so a
job's duration is the sum over stages (pipelining several batches is the caller's business).

Batch shapes:
- prefill: `num_tokens` new tokens (summed over the batch's prompts or chunks), each attending on
  average over `context` earlier tokens; a fresh prompt of L tokens has context (L - 1) / 2.
- decode: `batch` sequences producing one token each over a mean of `context` cached tokens.

Bytes moved: the weights the stage touches (embedding rows looked up, not the whole table), the KV
of the context that decode reads, and the KV every new token writes. Prefill does not count
attention's reads of earlier KV: with fused attention each is read once per block of queries and
prefill is compute bound. Activations stay on chip. This is an upper bound on speed; a fitted model
will sit behind the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from coserve.costmodel.hardware import HardwareSpec
from coserve.errors import ConfigError
from coserve.execution.models.spec import DTYPE_BYTES, ModelSpec, parse_dtype

LayerRange = tuple[int, int]


@dataclass(frozen=True)
class JobCost:
    """What one pipeline stage of a job asks of one of its devices."""

    flops: float
    bytes: float
    comm_seconds: float  # collectives and sends on the critical path, not overlapped with compute

    def seconds(self, hw: HardwareSpec, dtype: str, share: float = 1.0) -> float:
        compute = self.flops / (hw.flops(dtype) * share)
        memory = self.bytes / (hw.memory_bandwidth * bandwidth_fraction(hw, share))
        return max(compute, memory) + self.comm_seconds


def bandwidth_fraction(hw: HardwareSpec, share: float) -> float:
    """Fraction of the memory bandwidth a lane with `share` of the compute can draw."""
    return min(1.0, share / hw.bandwidth_saturation_share)


def prefill_seconds(spec: ModelSpec, dtype: str, hw: HardwareSpec, num_tokens: int, context: float = 0.0,
                    share: float = 1.0, tp: int = 1, pp: int = 1, layers: LayerRange | None = None) -> float:
    """Duration of a prefill job of `num_tokens` tokens, each over `context` earlier ones."""
    costs = stage_costs(spec, dtype, hw, num_tokens, context, 0.0, tp, pp, layers)
    return pipeline_seconds(costs, spec, dtype, hw, num_tokens, share)


def decode_seconds(spec: ModelSpec, dtype: str, hw: HardwareSpec, batch: int, context: float,
                   share: float = 1.0, tp: int = 1, pp: int = 1, layers: LayerRange | None = None) -> float:
    """Duration of one decode step of `batch` sequences with `context` cached tokens each."""
    costs = stage_costs(spec, dtype, hw, batch, context, batch * context, tp, pp, layers)
    return pipeline_seconds(costs, spec, dtype, hw, batch, share)


def prefill_cost(spec: ModelSpec, dtype: str, hw: HardwareSpec, num_tokens: int, context: float = 0.0,
                 tp: int = 1) -> JobCost:
    """The whole model's prefill on one of `tp` devices (one stage): the parts of prefill_seconds."""
    return stage_costs(spec, dtype, hw, num_tokens, context, 0.0, tp, 1, None)[0]


def decode_cost(spec: ModelSpec, dtype: str, hw: HardwareSpec, batch: int, context: float, tp: int = 1) -> JobCost:
    """The whole model's decode step on one of `tp` devices (one stage): the parts of decode_seconds."""
    return stage_costs(spec, dtype, hw, batch, context, batch * context, tp, 1, None)[0]


def stage_costs(spec: ModelSpec, dtype: str, hw: HardwareSpec, num_tokens: float, context: float,
                kv_tokens_read: float, tp: int, pp: int, layers: LayerRange | None) -> list[JobCost]:
    """One JobCost per pipeline stage, layers split as evenly as they go (earlier stages take the rest)."""
    _check(spec, num_tokens, context, tp, pp)
    return [_stage_cost(spec, dtype, hw, num_tokens, context, kv_tokens_read, tp, start, end)
            for start, end in split_layers(spec, layers, pp)]


def split_layers(spec: ModelSpec, layers: LayerRange | None, pp: int) -> list[LayerRange]:
    start, end = layers or (0, spec.num_layers)
    if not 0 <= start < end <= spec.num_layers:
        raise ConfigError(f"layer range [{start}, {end}) is outside the model's {spec.num_layers} layers")
    if pp > end - start:
        raise ConfigError(f"pipeline degree {pp} exceeds the {end - start} layers to split")
    base, extra = divmod(end - start, pp)
    bounds = [start]
    for stage in range(pp):
        bounds.append(bounds[-1] + base + (stage < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def all_reduce_seconds(hw: HardwareSpec, num_bytes: float, tp: int) -> float:
    """A ring all-reduce: each device sends and receives 2 (tp - 1) / tp of the message."""
    if tp == 1:
        return 0.0
    return hw.collective_latency_s + 2 * (tp - 1) / tp * num_bytes / hw.link_bandwidth


def send_seconds(hw: HardwareSpec, num_bytes: float) -> float:
    return hw.collective_latency_s + num_bytes / hw.link_bandwidth


def matmul_flops_per_token(spec: ModelSpec, start: int, end: int) -> float:
    """2 FLOPs per weight of every linear layer in [start, end) (norm weights excluded), plus the head."""
    flops = 2.0 * (end - start) * (spec.layer_params() - 2 * spec.hidden_size)
    if end == spec.num_layers:
        flops += 2.0 * spec.vocab_size * spec.hidden_size
    return flops


def attention_flops_per_token(spec: ModelSpec, start: int, end: int, context: float) -> float:
    """QK^T and PV: 2 x 2 x q_size FLOPs per earlier token per layer."""
    return 4.0 * (end - start) * spec.q_size * context


def weight_bytes_read(spec: ModelSpec, dtype_bytes: int, start: int, end: int, num_tokens: float) -> float:
    """Weights a stage streams once per job: all but an untied embedding, of which only looked-up rows."""
    total = spec.num_params(start, end) * dtype_bytes
    if start == 0 and not spec.tie_word_embeddings:
        total -= spec.embedding_params() * dtype_bytes
        total += min(num_tokens, spec.vocab_size) * spec.hidden_size * dtype_bytes
    return float(total)


def kv_bytes_per_token_per_device(spec: ModelSpec, dtype_bytes: int, num_layers: int, tp: int) -> float:
    """KV heads are split across tp devices; with more devices than KV heads each keeps one copy."""
    heads_per_device = max(spec.num_kv_heads / tp, 1.0)
    return 2.0 * num_layers * heads_per_device * spec.head_dim * dtype_bytes


def _stage_cost(spec: ModelSpec, dtype: str, hw: HardwareSpec, num_tokens: float, context: float,
                kv_tokens_read: float, tp: int, start: int, end: int) -> JobCost:
    dtype_bytes = DTYPE_BYTES[parse_dtype(dtype)]
    flops = num_tokens * (matmul_flops_per_token(spec, start, end)
                          + attention_flops_per_token(spec, start, end, context)) / tp
    kv_per_token = kv_bytes_per_token_per_device(spec, dtype_bytes, end - start, tp)
    memory = (weight_bytes_read(spec, dtype_bytes, start, end, num_tokens) / tp
              + (kv_tokens_read + num_tokens) * kv_per_token)
    hidden_bytes = num_tokens * spec.hidden_size * dtype_bytes
    comm = 2 * (end - start) * all_reduce_seconds(hw, hidden_bytes, tp)  # after attention and after the MLP
    return JobCost(flops, memory, comm)


def pipeline_seconds(costs: list[JobCost], spec: ModelSpec, dtype: str, hw: HardwareSpec, num_tokens: float,
                     share: float) -> float:
    """A job through its stages one after the other, with one send of its hidden states between two."""
    if not 0 < share <= 1:
        raise ConfigError(f"lane share must be in (0, 1], got {share}")
    hidden_bytes = num_tokens * spec.hidden_size * DTYPE_BYTES[parse_dtype(dtype)]
    return sum(c.seconds(hw, dtype, share) for c in costs) + (len(costs) - 1) * send_seconds(hw, hidden_bytes)


def _check(spec: ModelSpec, num_tokens: float, context: float, tp: int, pp: int) -> None:
    if num_tokens < 1:
        raise ConfigError(f"a job needs at least one token, got {num_tokens}")
    if context < 0:
        raise ConfigError(f"context must be non-negative, got {context}")
    if tp < 1 or pp < 1:
        raise ConfigError(f"tensor and pipeline degrees must be at least 1, got tp={tp}, pp={pp}")
    if spec.num_heads % tp:
        raise ConfigError(f"tensor degree {tp} does not divide the model's {spec.num_heads} attention heads")
