"""`coserve plan CONFIG.yaml -o placement.yaml`: place models on a cluster and print the table."""

from __future__ import annotations

import argparse
import sys

from coserve.errors import CoserveError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML: cluster, models, workload, slo, planner (see docs/placement.md)")
    parser.add_argument("-o", "--output", metavar="PLACEMENT.yaml", help="write the placement here")
    parser.add_argument("--strategy", choices=["greedy", "spatial", "memory-greedy", "exhaustive"],
                        help="default: the config's planner.strategy, else greedy; exhaustive is for tiny clusters")
    parser.add_argument("--objective", choices=["throughput", "slo"],
                        help="maximise served requests/s, or requests/s within their SLO (default: the config's)")
    parser.add_argument("--alpha", type=float, help="override workload.alpha (popularity exponent)")
    parser.add_argument("--no-replicas", action="store_true", help="at most one copy of each model")


def run(args: argparse.Namespace) -> int:
    """0 on success; 2 with a one-line error for input no placement can serve."""
    from coserve.placement import build_problem, format_table, load_plan_config, plan, write_placement

    try:
        config = load_plan_config(args.config)
        config = _with_overrides(config, args)
        placement = plan(build_problem(config), args.strategy)
        if args.output:
            write_placement(placement, args.output)
    except CoserveError as exc:
        print(f"coserve plan: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(format_table(placement))
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _with_overrides(config, args: argparse.Namespace):
    planner = {"objective": args.objective} if args.objective else {}
    if args.no_replicas:
        planner["replicas"] = False
    workload = {"alpha": args.alpha} if args.alpha is not None else {}
    from coserve.placement import parse_plan_config

    raw = config.model_dump(exclude_unset=True)
    raw["planner"] = {**raw.get("planner", {}), **planner}
    raw["workload"] = {**raw.get("workload", {}), **workload}
    return parse_plan_config(raw, args.config)
