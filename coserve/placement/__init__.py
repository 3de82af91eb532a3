"""Placement: which GPUs serve which models, with what parallelism, lane shares and KV quotas.

`coserve plan CONFIG.yaml -o placement.yaml` reads a PlanConfig (config.py), validates it into a
Problem (problem.py), searches with a strategy (greedy.py: MuxServe's enumeration + greedy, with
replicas and local search; baselines.py: spatial and memory-greedy; exhaustive.py for small
instances), scores every unit with the analytic estimate of unit.py over the roofline cost model,
and writes a PlacementFile (placement_file.py).
"""

from coserve.placement.config import PlanConfig, load_plan_config, parse_plan_config
from coserve.placement.placement_file import PlacementFile, load_placement, write_placement
from coserve.placement.planner import STRATEGIES, plan
from coserve.placement.problem import Problem, build_problem
from coserve.placement.summary import format_table

__all__ = [
    "STRATEGIES", "PlacementFile", "PlanConfig", "Problem", "build_problem", "format_table", "load_placement",
    "load_plan_config", "parse_plan_config", "plan", "write_placement",
]
