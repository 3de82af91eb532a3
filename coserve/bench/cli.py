"""`coserve bench`: command-line options, mapped onto BenchmarkConfig, then run and report."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from coserve.bench.client import COMPLETIONS_ENDPOINT, ENDPOINTS
from coserve.bench.config import BenchmarkConfig
from coserve.bench.runner import run_benchmark
from coserve.metrics import SLO, SLOSet, plot_results
from coserve.workload import DATASETS, LengthSpec, WorkloadSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--base-url", default="http://127.0.0.1:8000")
    server.add_argument("--endpoint", default=COMPLETIONS_ENDPOINT, choices=ENDPOINTS)
    server.add_argument("--model", nargs="+", required=True, metavar="NAME", help="one or more served model names")
    server.add_argument("--ignore-eos", action="store_true",
                        help="send ignore_eos: true (vLLM extension) so outputs reach max_tokens")
    server.add_argument("--timeout", type=float, default=3600.0, help="per-request timeout, seconds")

    traffic = parser.add_argument_group("traffic")
    traffic.add_argument("--num-prompts", type=int, default=1000)
    traffic.add_argument("--request-rate", type=float, default=math.inf,
                         help="total requests/s over all models (default inf: all at once)")
    popularity = traffic.add_mutually_exclusive_group()
    popularity.add_argument("--model-rates", type=float, nargs="+", metavar="RPS",
                            help="requests/s of each model, in --model order (overrides --request-rate)")
    popularity.add_argument("--alpha", type=float,
                            help="power-law popularity: model i gets a share proportional to (i+1)^-alpha")
    traffic.add_argument("--burstiness", type=float, default=1.0,
                         help="gamma shape of inter-arrival gaps: 1 = Poisson, <1 burstier")
    traffic.add_argument("--max-concurrency", type=int, help="cap on requests in flight")
    traffic.add_argument("--seed", type=int, default=0)

    data = parser.add_argument_group("dataset")
    data.add_argument("--dataset", default="random", choices=DATASETS)
    data.add_argument("--random-input-len", type=int, default=1024)
    data.add_argument("--random-output-len", type=int, default=128)
    data.add_argument("--random-range-ratio", type=float, default=0.0,
                      help="random lengths are uniform in len * [1 - r, 1 + r]")
    data.add_argument("--max-input-len", type=int, help="cap prompt lengths (fit a small context)")
    data.add_argument("--max-output-len", type=int, help="cap output lengths")
    data.add_argument("--time-scale", type=float, default=1.0,
                      help="replay azure-* traces this many times faster than recorded")

    slo = parser.add_argument_group("SLO (attainment and goodput)")
    slo.add_argument("--slo", nargs="+", metavar="NAME:MS", help="e.g. ttft:500 tpot:50 (e2e:MS too)")
    slo.add_argument("--slo-scale", type=float,
                     help="SLO = scale x single-request latency (MuxServe); needs the --slo-base-* values")
    slo.add_argument("--slo-base-ttft-ms", type=float, nargs="+", metavar="MS",
                     help="TTFT of a request served alone (e.g. from a --max-concurrency 1 run); one value "
                          "or one per model")
    slo.add_argument("--slo-base-tpot-ms", type=float, nargs="+", metavar="MS",
                     help="TPOT of a request served alone; one value or one per model")

    output = parser.add_argument_group("output")
    output.add_argument("--save-result", metavar="FILE.json", help="write config, metrics and records")
    output.add_argument("--plot", metavar="DIR", help="write latency CDFs and throughput bars (PNG)")
    output.add_argument("--disable-tqdm", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 when any request completed, 1 when none did, 2 for unusable options."""
    try:
        config = config_from_args(args)
        # Before the run, not after it: a result that cannot be saved wastes the whole benchmark.
        if args.save_result:  # saved with its folders made, as --plot's are
            if Path(args.save_result).is_dir():
                raise ValueError(f"--save-result {args.save_result}: that is a folder; name a file in it")
            _check_writable_folder(str(Path(args.save_result).parent), "--save-result")
        if args.plot:
            _check_writable_folder(args.plot, "--plot")
    except ValueError as exc:
        print(f"coserve bench: {exc}", file=sys.stderr)
        return 2
    if config.workload.lengths.is_replay and (math.isfinite(args.request_rate) or args.burstiness != 1.0):
        print(f"coserve bench: {args.dataset} replays its own timestamps; --request-rate and --burstiness "
              "are ignored (use --time-scale)", file=sys.stderr)
    result = run_benchmark(config)
    print(result.table())
    failures = [r.error for r in result.records if not r.success]
    if failures:
        print(f"{len(failures)} requests failed; first error: {failures[0]}", file=sys.stderr)
    if args.save_result:
        print(f"saved {result.save(args.save_result)}")
    if args.plot:
        for path in plot_results(result.metrics, result.records, args.plot):
            print(f"saved {path}")
    return 0 if result.metrics.overall.completed else 1


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    lengths = LengthSpec(args.dataset, args.random_input_len, args.random_output_len,
                         args.random_range_ratio, args.max_input_len, args.max_output_len)
    workload = WorkloadSpec(
        models=tuple(args.model), num_prompts=args.num_prompts, request_rate=args.request_rate,
        model_rates=tuple(args.model_rates) if args.model_rates else None, alpha=args.alpha,
        burstiness=args.burstiness, time_scale=args.time_scale, seed=args.seed, lengths=lengths)
    return BenchmarkConfig(workload, args.base_url, args.endpoint, args.max_concurrency, args.ignore_eos,
                           slos_from_args(args), args.timeout, args.disable_tqdm)


def _check_writable_folder(path: str, what: str) -> None:
    """The folder is made with its parents: the nearest existing one must take new files."""
    target = Path(path).resolve()
    existing = next(folder for folder in (target, *target.parents) if folder.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ValueError(f"{what} {path}: cannot make that folder ({existing} is read-only or a file)")


def slos_from_args(args: argparse.Namespace) -> SLOSet:
    if args.slo and args.slo_scale is not None:
        raise ValueError("give --slo or --slo-scale, not both")
    if args.slo:
        return SLO.parse(args.slo)
    if args.slo_scale is None:
        return None
    if not (args.slo_base_ttft_ms or args.slo_base_tpot_ms):
        raise ValueError("--slo-scale needs --slo-base-ttft-ms and/or --slo-base-tpot-ms")
    ttfts = _per_model(args.slo_base_ttft_ms, args.model, "--slo-base-ttft-ms")
    tpots = _per_model(args.slo_base_tpot_ms, args.model, "--slo-base-tpot-ms")
    return {m: SLO(ttft, tpot).scaled(args.slo_scale) for m, ttft, tpot in zip(args.model, ttfts, tpots)}


def _per_model(values: list[float] | None, models: list[str], flag: str) -> list[float | None]:
    if values is None:
        return [None] * len(models)
    if len(values) == 1:
        return values * len(models)
    if len(values) != len(models):
        raise ValueError(f"{flag} takes one value or one per model ({len(models)}), got {len(values)}")
    return values
