"""A Hugging Face model directory: config.json plus one or more .safetensors shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from coserve.errors import ModelConfigError, WeightLoadError
from coserve.execution.models.spec import ModelSpec
from coserve.execution.weights.names import check_shapes, expected_shapes

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_config(path: Path) -> dict[str, Any]:
    return read_json(path / "config.json")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightLoadError(f"{path}: cannot read JSON ({exc})") from exc


def spec_from_dir(path: Path) -> ModelSpec:
    try:
        return ModelSpec.from_hf_config(read_config(path))
    except KeyError as exc:
        raise ModelConfigError(f"{path / 'config.json'}: missing key {exc}") from exc


def shard_files(path: Path) -> list[Path]:
    if (path / INDEX_FILE).is_file():
        weight_map = read_json(path / INDEX_FILE).get("weight_map", {})
        return [path / name for name in sorted(set(weight_map.values()))]
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise WeightLoadError(f"{path}: no {SINGLE_FILE}, {INDEX_FILE} or other .safetensors file")
    return shards


def load_hf_dir(path: Path, layer_range: tuple[int, int] | None = None
                ) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and the tensors of layers [start, end) (all layers by default), in stored dtype."""
    spec = spec_from_dir(path)
    wanted = expected_shapes(spec, layer_range)
    tensors: dict[str, torch.Tensor] = {}
    for shard in shard_files(path):
        tensors.update(_read_shard(shard, wanted))
    check_shapes(tensors, wanted, str(path))
    return spec, tensors


def _read_shard(shard: Path, wanted: dict) -> dict[str, torch.Tensor]:
    # only the wanted tensors are materialised, so a pipeline stage reads just its own layers
    try:
        with safe_open(shard, framework="pt") as f:
            stored = set(f.keys())
            return {name: f.get_tensor(name) for name in wanted if name in stored}
    except Exception as exc:  # safetensors reports missing and corrupt files with its own error types
        raise WeightLoadError(f"{shard}: cannot read safetensors ({exc})") from exc
