"""Which model's batch runs on which lane: the policies of one device, as plain decisions.

- `temporal`: one lane, the model whose oldest request arrived first goes next (first come, first
  served across models; the AlpaServe-like baseline).
- `spatial`: each model has its own lane(s) and never runs elsewhere (per-model engines on a
  slice of the device; the dedicated-GPU baseline).
- `mux`: any lane runs any model; models with prompt tokens to prefill go first, round-robin, and
  decode-only models fill the remaining lanes (MuxServe's ADBS order). Beyond MuxServe, a model
  already missing its TTFT/TPOT target goes before every model meeting its own, most pressed first.

Like the scheduler, it never reads a clock or touches a tensor.
"""

from __future__ import annotations

from coserve.engine.model_load import ModelLoad
from coserve.errors import ConfigError

POLICIES = ("temporal", "spatial", "mux")
__all__ = ["POLICIES", "ModelLoad", "Multiplexer"]


class Multiplexer:
    def __init__(self, policy: str, models: list[str], num_lanes: int):
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
        if num_lanes < 1:
            raise ConfigError(f"a device needs at least one lane, got {num_lanes}")
        if policy == "spatial" and num_lanes < len(models):
            raise ConfigError(f"spatial gives every model its own lane: {len(models)} models need "
                              f"{len(models)} lanes, got {num_lanes}")
        self.policy = policy
        self.models = list(models)
        self.num_lanes = 1 if policy == "temporal" else num_lanes
        self._next = 0  # round-robin cursor over models

    def lanes_of(self, model: str) -> list[int]:
        if self.policy != "spatial":
            return list(range(self.num_lanes))
        index = self.models.index(model)
        return [lane for lane in range(self.num_lanes) if lane % len(self.models) == index]

    def pick(self, lane: int, loads: list[ModelLoad]) -> str | None:
        """The model to run next on `lane`, among models with work and no batch in flight."""
        ready = [load for load in loads if load.has_work and lane in self.lanes_of(load.name)]
        if not ready:
            return None
        if len(self.models) == 1:  # every policy picks a lone model (and its round-robin cursor stays 0)
            return ready[0].name
        if self.policy == "temporal":
            return min(ready, key=lambda load: load.oldest_arrival).name
        if self.policy == "mux":
            missing = [load for load in ready if load.missing_slo]
            ready = missing or ready
            ready = [load for load in ready if load.has_prefill] or ready
            if missing:
                return max(ready, key=lambda load: load.slo_pressure).name
        return self._round_robin([load.name for load in ready])

    def _round_robin(self, names: list[str]) -> str:
        order = self.models[self._next:] + self.models[:self._next]
        chosen = next(name for name in order if name in names)
        self._next = (self.models.index(chosen) + 1) % len(self.models)
        return chosen
