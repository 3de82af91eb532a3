"""Runs one scheduled step on a model: flattens the batch, builds attention metadata, samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coserve.engine.scheduler import SchedulerOutput
from coserve.execution.attention import AttentionBackend, AttentionMetadata, PrefillChunk
from coserve.execution.kv_cache import PagedKVCache
from coserve.execution.models.llama import LlamaModel
from coserve.execution.sampler import Sampler


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    logits_rows: torch.Tensor  # last row of each request that samples this step
    sampling_requests: list  # the Requests those rows belong to


class ModelRunner:
    def __init__(self, model: LlamaModel, kv_cache: PagedKVCache, attention: AttentionBackend,
                 sampler: Sampler, device: torch.device | str = "cpu"):
        self.model = model
        self.kv_cache = kv_cache
        self.attention = attention
        self.sampler = sampler
        self.device = torch.device(device)

    def execute(self, out: SchedulerOutput, block_tables: dict[str, list[int]]) -> dict[str, int]:
        inputs = self.prepare(out, block_tables)
        return self.sample(inputs, forward_logits(self.model, self.kv_cache, self.attention, inputs))

    def sample(self, inputs: StepInputs, logits: torch.Tensor | None) -> dict[str, int]:
        if logits is None:
            return {}
        ids = [r.request_id for r in inputs.sampling_requests]
        tokens = self.sampler(logits, ids, [r.params for r in inputs.sampling_requests])
        return dict(zip(ids, tokens))

    def prepare(self, out: SchedulerOutput, block_tables: dict[str, list[int]]) -> StepInputs:
        block_size = self.kv_cache.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        decode_rows, decode_tables, decode_lens = [], [], []
        prefills: list[PrefillChunk] = []
        logits_rows, sampling = [], []
        for item in out.scheduled:
            req, num_new = item.request, item.num_new_tokens
            start, end = req.num_computed_tokens, req.num_computed_tokens + num_new
            table = block_tables[req.request_id]
            row = len(input_ids)
            input_ids.extend(req.token_ids(start, end))
            positions.extend(range(start, end))
            slots.extend(table[p // block_size] * block_size + p % block_size for p in range(start, end))
            if num_new == 1:
                decode_rows.append(row)
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                needed = -(-end // block_size)
                prefills.append(PrefillChunk(row, row + num_new, start, self._tensor(table[:needed])))
            if item.completes_known_tokens:
                logits_rows.append(row + num_new - 1)
                sampling.append(req)
        meta = AttentionMetadata(
            block_size=block_size,
            slot_mapping=self._tensor(slots),
            decode_rows=self._tensor(decode_rows),
            decode_block_tables=self._tensor(_pad(decode_tables, decode_lens, block_size)),
            decode_context_lens=self._tensor(decode_lens),
            prefills=prefills,
        )
        return StepInputs(self._tensor(input_ids), self._tensor(positions), meta,
                          self._tensor(logits_rows), sampling)

    def _tensor(self, values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


@torch.inference_mode()
def forward_logits(model: LlamaModel, kv_cache: PagedKVCache, attention: AttentionBackend,
                   inputs: StepInputs) -> torch.Tensor | None:
    """The device half of a step (what a lane runs): the model over the batch, logits of sampled rows."""
    logits = forward_stage(model, kv_cache, attention, inputs, 0, model.spec.num_layers, None)
    return logits if inputs.logits_rows.numel() else None


@torch.inference_mode()
def forward_stage(model: LlamaModel, kv_cache, attention: AttentionBackend, inputs: StepInputs, start: int,
                  end: int, hidden: torch.Tensor | None) -> torch.Tensor:
    """A pipeline stage: layers [start, end) over the batch. Returns hidden states, or the sampled
    rows' logits when the stage ends at the last layer."""
    hidden = model(inputs.positions, kv_cache.layers, inputs.meta, attention, input_ids=inputs.input_ids,
                   hidden=hidden, start=start, end=end)
    if end < model.spec.num_layers:
        return hidden
    return model.compute_logits(hidden[inputs.logits_rows])


def _pad(tables: list[list[int]], lens: list[int], block_size: int) -> list[list[int]]:
    """Cut each table to the blocks its context uses and pad to the longest with block 0 (masked)."""
    if not tables:
        return [[]]
    widths = [-(-n // block_size) for n in lens]
    width = max(widths)
    return [t[:w] + [0] * (width - w) for t, w in zip(tables, widths)]
