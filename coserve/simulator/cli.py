"""`coserve simulate PLACEMENT.yaml`: replay a workload on the placement's meshes on a virtual clock."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from coserve.errors import CoserveError
from coserve.yaml_config import check_writable

# The steady throughput leaves out the first third of the arrival window as warm-up: a window at least
# three request lifetimes long then measures the served rate with no ramp-up and no drain in it.
WARMUP_SHARE = 1 / 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("placement", help="a placement written by `coserve plan -o`")
    parser.add_argument("--policy", choices=["mux", "temporal", "spatial"], default="mux")
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds of arrivals")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="multiply every model's rate")
    parser.add_argument("--dataset", default="sharegpt-lengths", help="a length table or trace, or `random`")
    parser.add_argument("--input-len", type=int, default=1024, help="`random`: mean prompt length")
    parser.add_argument("--output-len", type=int, default=128, help="`random`: mean output length")
    parser.add_argument("--range-ratio", type=float, default=0.0, help="`random`: lengths uniform in len x [1-r, 1+r]")
    parser.add_argument("--max-input-len", type=int, default=1024)
    parser.add_argument("--max-output-len", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for devices that share no model (default: one per core)")
    parser.add_argument("--latency-slo-scale", type=float, default=8.0,
                        help="also report MuxServe's SLO attainment: end-to-end latency within this many times "
                             "the request's latency alone (MuxServe's ChatLMSYS figure uses 8)")
    parser.add_argument("--output", help="write the metrics as JSON here")


def simulate_args(placement: str, **overrides) -> argparse.Namespace:
    """The arguments of `coserve simulate PLACEMENT` with its defaults, some overridden (for scripts)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([placement])
    for name, value in overrides.items():
        if not hasattr(args, name):
            raise TypeError(f"coserve simulate has no option {name!r}")
        setattr(args, name, value)
    return args


def run(args: argparse.Namespace) -> int:
    try:
        result = simulate_placement(args)
    except (CoserveError, ValueError) as exc:
        print(f"coserve simulate: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(result["table"])
    print(f"simulated {result['simulated_seconds']:.1f} s of serving in {result['wall_seconds']:.1f} s "
          f"({result['num_requests']} requests, {result['num_devices']} devices); steady throughput "
          f"{result['steady_request_throughput']:.2f} req/s (finished in the last two thirds of the arrivals); "
          f"MuxServe's SLO (end-to-end within {result['latency_slo_scale']:g}x alone) attained by "
          f"{_percent(result['latency_slo_attainment'])}")
    if args.output:
        Path(args.output).write_text(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1))
    return 0


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{fraction:.1%}"


def simulate_placement(args: argparse.Namespace) -> dict:
    from coserve.metrics import compute_metrics, format_table, steady_throughput
    from coserve.placement.placement_file import load_placement
    from coserve.simulator.cluster import device_plan
    from coserve.simulator.from_placement import (
        devices_from_placement,
        placement_latency_slos,
        placement_slos,
        roofline_factory,
    )
    from coserve.simulator.partition import simulate_in_parallel
    from coserve.workload import LengthSpec, WorkloadSpec, generate_workload

    if not all(0 < value < math.inf for value in (args.duration, args.rate_scale, args.latency_slo_scale)):
        raise ValueError("--duration, --rate-scale and --latency-slo-scale must be positive and finite")
    if args.output:
        check_writable(args.output)
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    placement = load_placement(args.placement)
    devices = devices_from_placement(placement, args.policy)
    for device in devices:  # every device's shapes and memory, before any simulated second
        device_plan(device)
    latency_slos = placement_latency_slos(placement, args.latency_slo_scale)
    rates = {m.name: m.rate * args.rate_scale for m in placement.models if m.rate > 0 and m.replicas}
    lengths = LengthSpec(args.dataset, args.input_len, args.output_len, args.range_ratio,
                         max_input_len=args.max_input_len, max_output_len=args.max_output_len)
    spec = WorkloadSpec(tuple(rates), model_rates=tuple(rates.values()), seed=args.seed, lengths=lengths,
                        duration=args.duration)
    requests = generate_workload(spec)
    started = time.perf_counter()
    # each request to the least-loaded replica of its model
    records, end = simulate_in_parallel(devices, roofline_factory(placement), requests, args.workers)
    wall = time.perf_counter() - started
    slos = placement_slos(placement)
    metrics = compute_metrics(records, slos, models=tuple(rates))
    overall = metrics.overall
    latency_attainment = compute_metrics(records, latency_slos).overall.slo_attainment
    return {"table": format_table(metrics, "Simulated serving"), "simulated_seconds": end,
            "wall_seconds": wall, "num_requests": len(records), "num_devices": len(devices),
            "policy": args.policy, "request_throughput": overall.request_throughput,
            "steady_request_throughput": steady_throughput(records, args.duration * WARMUP_SHARE, args.duration),
            "offered_request_rate": sum(rates.values()),
            "output_throughput": overall.output_throughput, "slo_attainment": overall.slo_attainment,
            "latency_slo_attainment": latency_attainment, "latency_slo_scale": args.latency_slo_scale,
            "ttft_p99_ms": overall.ttft_ms.p99, "tpot_p99_ms": overall.tpot_ms.p99}
