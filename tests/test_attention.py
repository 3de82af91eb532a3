"""Attention backends against a dense reference: softmax(QK^T)V over each sequence's own keys."""

from __future__ import annotations

import pytest
import torch

from coserve.execution.attention import AttentionMetadata, PrefillChunk, get_attention_backend

NUM_BLOCKS, BLOCK, LAYERS, HKV, HQ, DIM = 40, 4, 2, 2, 6, 16


def _dense(q, keys, values, query_pos, window):
    """q: [H, D] at absolute position query_pos; keys/values: [S, Hkv, D] for positions 0..S-1."""
    group = q.shape[0] // keys.shape[1]
    k = keys.repeat_interleave(group, dim=1).transpose(0, 1)
    v = values.repeat_interleave(group, dim=1).transpose(0, 1)
    scores = (q.unsqueeze(1) @ k.transpose(1, 2)).squeeze(1) / DIM ** 0.5
    pos = torch.arange(keys.shape[0])
    visible = pos <= query_pos
    if window:
        visible &= pos > query_pos - window
    scores = scores.masked_fill(~visible, float("-inf"))
    return (scores.softmax(-1).unsqueeze(1) @ v).squeeze(1)


def _cache(dtype):
    buffer = torch.zeros(NUM_BLOCKS, LAYERS, 2, BLOCK, HKV, DIM, dtype=dtype)
    return buffer[:, 1, 0], buffer[:, 1, 1]


@pytest.mark.parametrize("backend", ["sdpa_gather", "cpu_paged"])
@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_batch_matches_dense_reference(backend, window, dtype):
    gen = torch.Generator().manual_seed(0)
    attention = get_attention_backend(backend)
    k_cache, v_cache = _cache(dtype)
    # request A: 9 cached tokens, decodes its 10th; request B: 6 cached, prefills a chunk of 5
    history = {"A": 9, "B": 6}
    new = {"A": 1, "B": 5}
    tables = {"A": torch.tensor([7, 3, 11]), "B": torch.tensor([20, 1, 30])}
    full_k = {r: torch.randn(history[r] + new[r], HKV, DIM, generator=gen).to(dtype) for r in history}
    full_v = {r: torch.randn(history[r] + new[r], HKV, DIM, generator=gen).to(dtype) for r in history}
    for r in history:  # earlier steps already wrote the cached part
        for pos in range(history[r]):
            block, offset = tables[r][pos // BLOCK], pos % BLOCK
            k_cache[block, offset], v_cache[block, offset] = full_k[r][pos], full_v[r][pos]
    slots = [int(tables[r][p // BLOCK]) * BLOCK + p % BLOCK for r in ("A", "B")
             for p in range(history[r], history[r] + new[r])]
    q = torch.randn(6, HQ, DIM, generator=gen).to(dtype)
    k = torch.cat([full_k[r][history[r]:] for r in ("A", "B")])
    v = torch.cat([full_v[r][history[r]:] for r in ("A", "B")])
    meta = AttentionMetadata(BLOCK, torch.tensor(slots), torch.tensor([0]), tables["A"][None],
                             torch.tensor([10]), [PrefillChunk(1, 6, 6, tables["B"][:3])])
    out = attention.forward(q, k, v, k_cache, v_cache, meta, DIM ** -0.5, window)
    expected = [_dense(q[0].float(), full_k["A"].float(), full_v["A"].float(), 9, window)]
    expected += [_dense(q[1 + i].float(), full_k["B"].float(), full_v["B"].float(), 6 + i, window)
                 for i in range(5)]
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(out.float(), torch.stack(expected), atol=tolerance, rtol=tolerance)


def test_unknown_backend_is_a_config_error():
    from coserve.errors import ConfigError

    with pytest.raises(ConfigError, match="attention_backend"):
        get_attention_backend("flash-magic")
