"""Bytes that cross the network per token, against SmolLM2's shape worked out by hand."""

from __future__ import annotations

import torch

from coserve.distributed.traffic import traffic
from coserve.placement.shapes import model_spec


def test_smollm2_traffic_matches_its_shape():
    spec = model_spec("smollm2-135m-instruct", "smollm2")
    # hidden 576, 3 KV heads of 64 dims, 30 layers, MLP 1536, 9 query heads of 64 dims
    t = traffic(spec, torch.bfloat16)
    assert t.hidden_per_token == 576 * 2
    assert t.kv_per_token_layer == 2 * 3 * 64 * 2
    assert t.kv_per_token == 30 * 2 * 3 * 64 * 2
    attention = 576 * (9 * 64 + 2 * 3 * 64) + 9 * 64 * 576
    assert t.layer_weights == (attention + 3 * 576 * 1536 + 2 * 576) * 2
