"""load_model: one call from a model string to a spec, a state dict in HF names, and a tokenizer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import PreTrainedTokenizerBase

from coserve.execution.models.spec import ModelSpec, parse_dtype
from coserve.execution.weights import cache
from coserve.execution.weights.gguf_file import read_gguf
from coserve.execution.weights.names import check_layer_range, expected_shapes
from coserve.execution.weights.random_weights import random_state_dict
from coserve.execution.weights.registry import ModelSource, resolve
from coserve.execution.weights.safetensors_dir import load_hf_dir
from coserve.execution.weights.tokenizer import dir_tokenizer, gguf_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]  # HF names, requested dtype, only the stage's layers
    tokenizer: PreTrainedTokenizerBase | None  # None for random weights, or when not asked for
    chat_template: str | None
    source: ModelSource
    layer_range: tuple[int, int]
    from_cache: bool = False  # GGUF weights came from the dequantised cache

    @property
    def description(self) -> str:
        start, end = self.layer_range
        return f"{self.source.describe()}, layers [{start}, {end}) of {self.spec.num_layers}"


def load_model(model: str, dtype: str | torch.dtype = torch.float32, seed: int = 0,
               layer_range: tuple[int, int] | None = None, *, tokenizer: bool = True,
               cache_dir: str | Path | None = None) -> LoadedModel:
    """Load `model` (see registry.resolve) for layers [start, end) of `layer_range` (default: all).

    `seed` only matters for random weights; `cache_dir` defaults to $COSERVE_CACHE_DIR or ~/.cache/coserve.
    """
    source = resolve(model)
    dtype = parse_dtype(dtype)
    if source.kind == "random":
        loaded = _load_random(source, seed, layer_range)
    elif source.kind == "hf_dir":
        loaded = _load_hf_dir(source, layer_range, tokenizer)
    else:
        loaded = _load_gguf(source, layer_range, tokenizer, cache.cache_root(cache_dir))
    loaded.state_dict = {name: t.to(dtype) for name, t in loaded.state_dict.items()}
    return loaded


def _load_random(source: ModelSource, seed: int, layer_range: tuple[int, int] | None) -> LoadedModel:
    spec = ModelSpec.from_hf_config(source.config)
    layer_range = check_layer_range(spec, layer_range)
    state_dict = random_state_dict(spec, seed, layer_range=layer_range)
    return LoadedModel(spec, state_dict, None, None, source, layer_range)


def _load_hf_dir(source: ModelSource, layer_range: tuple[int, int] | None, tokenizer: bool) -> LoadedModel:
    spec, state_dict = load_hf_dir(source.path, layer_range)
    tok = dir_tokenizer(source.path) if tokenizer else None
    template = getattr(tok, "chat_template", None)
    return LoadedModel(spec, state_dict, tok, template, source, check_layer_range(spec, layer_range))


def _load_gguf(source: ModelSource, layer_range: tuple[int, int] | None, tokenizer: bool,
               root: Path) -> LoadedModel:
    entry = cache.CacheEntry.for_source(source.path, root)
    info = cache.read_info(entry)
    decoded = None
    if info is None:
        contents = read_gguf(source.path)
        info = cache.CachedWeights(contents.spec, contents.chat_template, contents.has_tokenizer)
        decoded = contents.state_dict
        _write_cache(entry, decoded, info)
    layer_range = check_layer_range(info.spec, layer_range)
    names = expected_shapes(info.spec, layer_range)
    if decoded is None:
        try:
            state_dict = cache.read_tensors(entry, names)
        except Exception:  # the entry vanished or broke after its metadata was read: decode again
            logger.warning("cache entry %s unreadable; decoding %s again", entry.folder, source.path)
            decoded = read_gguf(source.path).state_dict
            _write_cache(entry, decoded, info)
            state_dict = {name: decoded[name] for name in names}
    else:
        state_dict = {name: decoded[name] for name in names}
    tok = gguf_tokenizer(source.path, entry.tokenizer) if tokenizer and info.has_tokenizer else None
    return LoadedModel(info.spec, state_dict, tok, info.chat_template, source, layer_range,
                       from_cache=decoded is None)


def _write_cache(entry: cache.CacheEntry, state_dict: dict[str, torch.Tensor],
                 info: cache.CachedWeights) -> None:
    # a read-only or full cache disk costs the next start its speed, not this one its model
    try:
        cache.write_weights(entry, state_dict, info)
        entry.drop_stale_versions()
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error type
        logger.warning("cannot cache dequantised weights in %s: %s", entry.folder, exc)
