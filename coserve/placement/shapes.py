"""A model reference -> its ModelSpec, read from a config and never materialising weights."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from coserve.errors import ConfigError, CoserveError
from coserve.execution.models.spec import ModelSpec
from coserve.execution.weights.presets import PRESETS
from coserve.execution.weights.registry import RANDOM_PREFIX, resolve
from coserve.execution.weights.safetensors_dir import read_json


def model_spec(reference: str, model_name: str) -> ModelSpec:
    """Spec of a preset name (`llama-7b` or `random:llama-7b`), a config.json, a model folder or a GGUF.

    Errors are ConfigError naming `model_name`, the entry of the plan that asked.
    """
    try:
        return _spec(reference)
    except CoserveError as exc:
        raise ConfigError(f"model {model_name!r}: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:  # a config.json missing or mistyping a field
        raise ConfigError(f"model {model_name!r}: config of {reference!r} is unusable ({exc!r})") from exc


@cache
def _spec(reference: str) -> ModelSpec:
    name = reference.removeprefix(RANDOM_PREFIX)
    if name in PRESETS:
        return ModelSpec.from_hf_config(PRESETS[name])
    path = Path(name).expanduser()
    if path.suffix == ".json" and path.is_file():
        return ModelSpec.from_hf_config(read_json(path))
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSpec.from_hf_config(read_json(path / "config.json"))
    source = resolve(reference)  # bundled names and GGUF files: the spec is in the file's metadata
    if source.kind == "gguf":
        from coserve.execution.weights.gguf_file import open_gguf, spec_from_reader

        return spec_from_reader(open_gguf(source.path), source.path)
    raise ConfigError(f"cannot find a config for {reference!r}; presets: {', '.join(PRESETS)}")
