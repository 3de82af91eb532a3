"""The YAML config of `coserve serve`, validated with pydantic so a wrong field is named, not guessed."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from coserve.engine.config import DEFAULT_MODEL, EngineConfig
from coserve.engine.device_config import ColocatedModel, DeviceConfig
from coserve.errors import ConfigError
from coserve.metrics import SLO
from coserve.yaml_config import StrictConfig, read_yaml, validate


class ModelDeployment(StrictConfig):
    """One model served under `name`; the remaining fields are the engine's (see EngineConfig)."""


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
    # with a `device` section: expected load and latency targets, read by its policy
    rate: float = Field(1.0, gt=0)
    slo_ttft_ms: float | None = Field(None, gt=0)
    slo_tpot_ms: float | None = Field(None, gt=0)

    def engine_config(self, num_threads: int | None) -> EngineConfig:
        fields = self.model_dump(exclude={"default_max_tokens", "rate", "slo_ttft_ms", "slo_tpot_ms"})
        return EngineConfig(**fields, num_threads=num_threads)

    def colocated(self, num_threads: int | None) -> ColocatedModel:
        slo = None
        if self.slo_ttft_ms or self.slo_tpot_ms:
            slo = SLO(ttft_ms=self.slo_ttft_ms, tpot_ms=self.slo_tpot_ms)
        return ColocatedModel(self.engine_config(num_threads), self.rate, slo)


class DeviceSection(StrictConfig):
    """One device shared by every model of the config (see DeviceConfig)."""


    policy: Literal["mux", "spatial", "temporal"] = "mux"
    num_lanes: int = Field(2, ge=1)
    memory_budget_bytes: int | None = Field(None, gt=0)
    device: str = "cpu"
    kv_quotas: dict[str, float] = Field(default_factory=dict)
    lane_cores: list[list[int]] | None = None
    spread_batches: bool = True
    wide_lane: bool = True

    @model_validator(mode="after")
    def _checked_by_device_config(self) -> DeviceSection:
        try:
            self.device_config()  # one set of rules for YAML and Python callers
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def device_config(self) -> DeviceConfig:
        return DeviceConfig(**self.model_dump())


class ServerConfig(StrictConfig):

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_waiting_requests: int = Field(256, ge=1)
    num_threads: int | None = Field(None, ge=1)
    models: list[ModelDeployment] = Field(min_length=1)
    device: DeviceSection | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> ServerConfig:
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique; repeated: {duplicates}")
        return self

    @model_validator(mode="after")
    def _device_owns_memory(self) -> ServerConfig:
        if self.device is None:
            return self
        sized = [m.name for m in self.models if m.kv_cache_memory_bytes or m.num_kv_blocks]
        if sized:
            raise ValueError(f"models {sized} size their own KV cache, but under `device` the models share "
                             f"one pool sized by device.memory_budget_bytes; remove kv_cache_memory_bytes "
                             f"and num_kv_blocks")
        unknown = sorted(set(self.device.kv_quotas) - {m.name for m in self.models})
        if unknown:
            raise ValueError(f"device.kv_quotas names unknown models: {unknown}")
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
    return validate(ServerConfig, read_yaml(path), f"config {path}", separator="\n  ")
