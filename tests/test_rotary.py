"""RoPE frequency variants equal transformers' own implementations."""

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from coserve.execution.models.rotary import rope_inv_freq

CASES = [
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048, "beta_fast": 16,
     "beta_slow": 2},
]


@pytest.mark.parametrize("scaling", CASES, ids=lambda c: c["rope_type"])
def test_inv_freq_matches_transformers(scaling):
    head_dim, theta, max_pos = 128, 500000.0, 32768
    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, max_position_embeddings=max_pos,
                         rope_parameters={**scaling, "rope_theta": theta})
    expected, expected_factor = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, "cpu")
    inv_freq, factor = rope_inv_freq(head_dim, theta, scaling, max_pos)
    assert torch.allclose(inv_freq, expected.float(), rtol=1e-5)
    assert factor == pytest.approx(expected_factor)
