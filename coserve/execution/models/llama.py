"""The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM2) over any layer range [start, end).

A stage that starts at layer 0 embeds token ids; one that ends at the last layer applies the final
norm and can produce logits. Everything else passes hidden states in and out, which is what
pipeline stages and dropped layers are made of.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coserve.errors import WeightLoadError
from coserve.execution.attention import AttentionBackend, AttentionMetadata
from coserve.execution.cpu_kernels import linear
from coserve.execution.models.rotary import RotaryEmbedding, apply_rotary
from coserve.execution.models.spec import ModelSpec

PART_ATTRS = {"embedding": "embed_tokens", "head": "lm_head"}


class LlamaLayer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        qkv_rows = spec.q_size + 2 * spec.kv_size
        self.input_norm = nn.Parameter(torch.ones(spec.hidden_size), requires_grad=False)
        self.qkv_proj = nn.Linear(spec.hidden_size, qkv_rows, bias=spec.attention_bias)
        self.o_proj = nn.Linear(spec.q_size, spec.hidden_size, bias=False)
        self.post_attention_norm = nn.Parameter(torch.ones(spec.hidden_size), requires_grad=False)
        self.gate_up_proj = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)
        self.scale = spec.head_dim ** -0.5

    def forward(self, hidden: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                kv_cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                attention: AttentionBackend) -> torch.Tensor:
        spec = self.spec
        eps = spec.rms_norm_eps
        num_tokens = hidden.shape[0]
        x = F.rms_norm(hidden, (spec.hidden_size,), self.input_norm, eps)
        qk, v = linear(x, self.qkv_proj).split([spec.q_size + spec.kv_size, spec.kv_size], dim=-1)
        # q and k heads are rotated together: one set of elementwise ops instead of two
        qk = apply_rotary(qk.view(num_tokens, spec.num_heads + spec.num_kv_heads, spec.head_dim), *rope)
        q, k = qk.split([spec.num_heads, spec.num_kv_heads], dim=1)
        v = v.view(num_tokens, spec.num_kv_heads, spec.head_dim)
        attn = attention.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, spec.sliding_window)
        hidden = hidden + linear(attn.reshape(num_tokens, spec.q_size), self.o_proj)
        x = F.rms_norm(hidden, (spec.hidden_size,), self.post_attention_norm, eps)
        gate, up = linear(x, self.gate_up_proj).chunk(2, dim=-1)
        return hidden + linear(F.silu(gate) * up, self.down_proj)


class DroppedLayer(nn.Module):
    """Stands in for a layer whose weights this replica gave up (another pipeline member holds it)."""

    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, *args, **kwargs) -> torch.Tensor:
        raise RuntimeError(f"layer {self.index} was dropped from this replica")


class LlamaModel(nn.Module):
    """Holds layers [start, end) of a model; `kv_caches[i]` belongs to layer start + i."""

    def __init__(self, spec: ModelSpec, start: int = 0, end: int | None = None,
                 max_position: int | None = None, device: torch.device | str = "cpu"):
        super().__init__()
        self.spec = spec
        self.start, self.end = start, spec.num_layers if end is None else end
        if not 0 <= self.start < self.end <= spec.num_layers:
            raise ValueError(f"layer range [{start}, {end}) is outside [0, {spec.num_layers})")
        self.has_embedding = self.start == 0
        self.has_head = self.end == spec.num_layers
        if self.has_embedding or (self.has_head and spec.tie_word_embeddings):
            self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(LlamaLayer(spec) for _ in range(self.start, self.end))
        if self.has_head:
            self.norm = nn.Parameter(torch.ones(spec.hidden_size), requires_grad=False)
            if not spec.tie_word_embeddings:
                self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(spec.head_dim, spec.rope_theta, spec.rope_scaling,
                                      max_position or spec.max_position_embeddings, device=device)
        self.requires_grad_(False)

    def forward(self, positions: torch.Tensor, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                meta: AttentionMetadata, attention: AttentionBackend,
                input_ids: torch.Tensor | None = None, hidden: torch.Tensor | None = None,
                start: int | None = None, end: int | None = None) -> torch.Tensor:
        """Run layers [start, end) (default: all held) and return hidden states [T, hidden]."""
        start = self.start if start is None else start
        end = self.end if end is None else end
        if start == 0:
            hidden = self.embed_tokens(input_ids)
        elif hidden is None:
            raise ValueError(f"a stage starting at layer {start} needs hidden states")
        rope = self.rotary.lookup(positions)  # shared by every layer of the step
        for index in range(start - self.start, end - self.start):
            hidden = self.layers[index](hidden, rope, kv_caches[index], meta, attention)
        return hidden

    def set_layer(self, index: int, layer: LlamaLayer | None) -> None:
        """Swap in a layer's weights, or drop them (None): what elastic memory does to a replica."""
        self.layers[index - self.start] = layer if layer is not None else DroppedLayer(index)

    def held_layers(self) -> list[int]:
        return [self.start + i for i, layer in enumerate(self.layers) if isinstance(layer, LlamaLayer)]

    # -- end parts (see ModelSpec.end_parts): a pipeline member frees the ones its stage never uses

    def held_parts(self) -> set[str]:
        return {part for part, attr in PART_ATTRS.items() if getattr(self, attr, None) is not None}

    def part(self, name: str) -> nn.Module:
        module = getattr(self, PART_ATTRS[name], None)
        if module is None:
            raise RuntimeError(f"this model does not hold its {name}")
        return module

    def set_part(self, name: str, module: nn.Module | None) -> None:
        setattr(self, PART_ATTRS[name], module)

    def new_part(self, name: str) -> nn.Module:
        """An empty module of the part's shape, to receive its weights into."""
        spec = self.spec
        module = (nn.Embedding(spec.vocab_size, spec.hidden_size) if name == "embedding"
                  else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False))
        return module.requires_grad_(False)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.rms_norm(hidden, (self.spec.hidden_size,), self.norm, self.spec.rms_norm_eps)
        head = self.embed_tokens if self.spec.tie_word_embeddings else self.lm_head
        return linear(hidden, head).float()

    # -- weights -------------------------------------------------------------------------------

    @torch.no_grad()
    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy Hugging Face-named weights in, fusing q/k/v and gate/up; checks nothing is missing."""
        for name, target in self._targets().items():
            parts = [_take(state_dict, n) for n in name]
            target.copy_(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))

    def _targets(self) -> dict[tuple[str, ...], torch.Tensor]:
        targets: dict[tuple[str, ...], torch.Tensor] = {}
        if hasattr(self, "embed_tokens"):
            targets[("model.embed_tokens.weight",)] = self.embed_tokens.weight
        for offset, layer in enumerate(self.layers):
            prefix = f"model.layers.{self.start + offset}."
            attn, mlp = prefix + "self_attn.", prefix + "mlp."
            targets[(prefix + "input_layernorm.weight",)] = layer.input_norm
            targets[(prefix + "post_attention_layernorm.weight",)] = layer.post_attention_norm
            targets[tuple(attn + p + ".weight" for p in ("q_proj", "k_proj", "v_proj"))] = layer.qkv_proj.weight
            if self.spec.attention_bias:
                targets[tuple(attn + p + ".bias" for p in ("q_proj", "k_proj", "v_proj"))] = layer.qkv_proj.bias
            targets[(attn + "o_proj.weight",)] = layer.o_proj.weight
            targets[(mlp + "gate_proj.weight", mlp + "up_proj.weight")] = layer.gate_up_proj.weight
            targets[(mlp + "down_proj.weight",)] = layer.down_proj.weight
        if self.has_head:
            targets[("model.norm.weight",)] = self.norm
            if not self.spec.tie_word_embeddings:
                targets[("lm_head.weight",)] = self.lm_head.weight
        return targets


def _take(state_dict: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in state_dict:
        raise WeightLoadError(f"weight {name!r} is missing from the checkpoint")
    return state_dict[name]
