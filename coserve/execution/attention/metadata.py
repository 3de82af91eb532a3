"""What attention needs to know about one step's flattened batch, built once per step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PrefillChunk:
    """A run of consecutive prompt tokens of one request, starting after `num_computed_tokens`."""

    start: int  # first row of this chunk in the flattened batch
    end: int
    num_computed_tokens: int  # tokens already in the KV cache before this chunk
    block_table: torch.Tensor  # [num_blocks] physical block ids covering the whole context


@dataclass
class AttentionMetadata:
    block_size: int
    slot_mapping: torch.Tensor  # [num_tokens] = block_id * block_size + offset, where K/V are written
    decode_rows: torch.Tensor  # [num_decodes] rows of the batch that are single decode tokens
    decode_block_tables: torch.Tensor  # [num_decodes, max_blocks], padded with block 0
    decode_context_lens: torch.Tensor  # [num_decodes] keys visible to each decode token (incl. itself)
    prefills: list[PrefillChunk] = field(default_factory=list)
    # derived once per step and shared by every layer
    slot_blocks: torch.Tensor = field(init=False)
    slot_offsets: torch.Tensor = field(init=False)
    num_decodes: int = field(init=False)
    mask_cache: dict = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.slot_blocks = self.slot_mapping // self.block_size
        self.slot_offsets = self.slot_mapping % self.block_size
        self.num_decodes = int(self.decode_rows.numel())
