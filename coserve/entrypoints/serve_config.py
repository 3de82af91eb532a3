"""The YAML config of `coserve serve`, validated with pydantic so a wrong field is named, not guessed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coserve.engine.config import DEFAULT_MODEL, EngineConfig
from coserve.errors import ConfigError


class ModelDeployment(BaseModel):
    """One model served under `name`; the remaining fields are the engine's (see EngineConfig)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    model: str
    tokenizer: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "cpu"
    seed: int = 0
    block_size: int = Field(16, ge=1)
    kv_cache_memory_bytes: int | None = Field(None, gt=0)
    num_kv_blocks: int | None = Field(None, ge=1)
    max_num_seqs: int = Field(64, ge=1)
    max_num_batched_tokens: int = Field(512, ge=1)
    long_prefill_token_threshold: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=2)
    default_max_tokens: int | None = Field(None, ge=1)

    def engine_config(self, num_threads: int | None) -> EngineConfig:
        fields = self.model_dump(exclude={"default_max_tokens"})
        return EngineConfig(**fields, num_threads=num_threads)


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_waiting_requests: int = Field(256, ge=1)
    num_threads: int | None = Field(None, ge=1)
    models: list[ModelDeployment] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ServerConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {duplicates}")
        return self


def default_config() -> ServerConfig:
    """Two colocated deployments: the real SmolLM2, and a random-weight Llama of another shape."""
    return ServerConfig(models=[
        ModelDeployment(name=DEFAULT_MODEL, model=DEFAULT_MODEL, max_num_seqs=64,
                        kv_cache_memory_bytes=512 << 20),
        ModelDeployment(name="llama-small-random", model="random:llama-small-49k", tokenizer=DEFAULT_MODEL,
                        max_num_seqs=64, kv_cache_memory_bytes=64 << 20),
    ])


def load_config(path: str | Path | None) -> ServerConfig:
    if path is None:
        return default_config()
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return ServerConfig.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(f"invalid config {path}:\n{_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)
