"""Portable paged attention: gather K/V through the block table, then torch's SDPA.

Runs eagerly on CPU and CUDA. Decode tokens of all requests go through one batched SDPA call;
each prefill chunk gets its own call (a fresh prompt needs no gather at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coserve.execution.attention.metadata import AttentionMetadata, PrefillChunk


class SdpaGatherBackend:
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                scale: float, sliding_window: int | None) -> torch.Tensor:
        blocks, offsets = meta.slot_blocks, meta.slot_offsets
        k_cache[blocks, offsets] = k
        v_cache[blocks, offsets] = v
        if meta.num_decodes == q.shape[0]:
            return self._decode(q, k_cache, v_cache, meta, scale, sliding_window)
        out = torch.empty_like(q)
        if meta.num_decodes:
            out[meta.decode_rows] = self._decode(q[meta.decode_rows], k_cache, v_cache, meta, scale,
                                                 sliding_window)
        for chunk in meta.prefills:
            out[chunk.start:chunk.end] = self._prefill(q, k, v, k_cache, v_cache, chunk, scale,
                                                       sliding_window)
        return out

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                meta: AttentionMetadata, scale: float, sliding_window: int | None) -> torch.Tensor:
        num_seqs, num_heads, head_dim = q.shape
        num_kv_heads = k_cache.shape[2]
        keys = _gather(k_cache, meta.decode_block_tables)  # [B, Hkv, S, D]
        values = _gather(v_cache, meta.decode_block_tables)
        # Grouped heads become extra query rows of their KV head: no K/V expansion needed.
        queries = q.reshape(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
        mask = _decode_mask(meta, keys.shape[2], sliding_window)
        out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale)
        return out.reshape(num_seqs, num_heads, head_dim)

    def _prefill(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, chunk: PrefillChunk, scale: float,
                 sliding_window: int | None) -> torch.Tensor:
        rows = slice(chunk.start, chunk.end)
        num_new = chunk.end - chunk.start
        total = chunk.num_computed_tokens + num_new
        queries = q[rows].transpose(0, 1).unsqueeze(0)
        if chunk.num_computed_tokens == 0 and (sliding_window is None or total <= sliding_window):
            keys = k[rows].transpose(0, 1).unsqueeze(0)
            values = v[rows].transpose(0, 1).unsqueeze(0)
            out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True, scale=scale,
                                                 enable_gqa=True)
        else:
            table = chunk.block_table.unsqueeze(0)
            keys = _gather(k_cache, table)[:, :, :total]
            values = _gather(v_cache, table)[:, :, :total]
            mask = _prefill_mask(chunk.num_computed_tokens, num_new, total, sliding_window, q.device)
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, scale=scale,
                                                 enable_gqa=True)
        return out.squeeze(0).transpose(0, 1)


def _gather(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """[num_blocks, block_size, Hkv, D] gathered by [B, nb] tables -> [B, Hkv, nb * block_size, D]."""
    gathered = cache[block_tables]
    batch, num_blocks, block_size, num_kv_heads, head_dim = gathered.shape
    return gathered.view(batch, num_blocks * block_size, num_kv_heads, head_dim).transpose(1, 2)


def _decode_mask(meta: AttentionMetadata, num_keys: int, sliding_window: int | None) -> torch.Tensor:
    key = ("decode", num_keys, sliding_window)
    if key not in meta.mask_cache:
        positions = torch.arange(num_keys, device=meta.decode_context_lens.device)
        lens = meta.decode_context_lens.unsqueeze(1)
        visible = positions < lens
        if sliding_window is not None:
            visible &= positions >= lens - sliding_window
        meta.mask_cache[key] = visible[:, None, None, :]
    return meta.mask_cache[key]


def _prefill_mask(num_computed: int, num_new: int, total: int, sliding_window: int | None,
                  device: torch.device) -> torch.Tensor:
    query_pos = torch.arange(num_computed, total, device=device).unsqueeze(1)
    key_pos = torch.arange(total, device=device).unsqueeze(0)
    visible = key_pos <= query_pos
    if sliding_window is not None:
        visible &= key_pos > query_pos - sliding_window
    return visible
