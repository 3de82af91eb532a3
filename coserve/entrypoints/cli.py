"""The `coserve` command: generate, serve, bench, plan, simulate, profile."""

from __future__ import annotations

import argparse
import logging
import sys

from coserve.engine.config import DEFAULT_MODEL


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="print a completion from a model (offline engine)")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from coserve import LLM, SamplingParams

    llm = LLM(model=args.model, dtype=args.dtype, device=args.device)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            seed=args.seed, max_tokens=args.max_tokens, stop=args.stop)
    if args.chat:
        output = llm.chat([{"role": "user", "content": args.prompt}], params)[0]
    else:
        output = llm.generate(args.prompt, params)[0]
    print(output.outputs[0].text)
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server for the models in a config")
    p.add_argument("config", nargs="?", help="YAML server config (default: the embedded models)")
    p.add_argument("--host", default=None, help="default: the config's, else 127.0.0.1")
    p.add_argument("--port", type=_port, default=None, help="default: the config's, else 8000")
    p.add_argument("--backend", choices=("process", "ray"), default="process",
                   help="with a placement file: replicas as local processes, or as Ray actors (coserve[ray])")
    p.add_argument("--strategy", choices=("recompute", "swap", "migrate", "drop", "auto"), default="drop",
                   help="with a placement file: what a replica does when its KV runs out")
    p.add_argument("--address", default=None,
                   help="with --backend ray: the Ray cluster to join ('auto': the running one); default: a local one")
    p.set_defaults(func=_serve)


def _port(text: str) -> int:
    if not (text.isdigit() and 0 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {text!r}")
    return int(text)


def _serve(args: argparse.Namespace) -> int:
    from coserve.entrypoints.openai.server import serve

    return serve(args.config, args.host, args.port, args.backend, args.strategy, args.address)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from coserve.bench import cli as bench_cli

    p = sub.add_parser("bench", help="load-test an OpenAI-compatible server (like `vllm bench serve`)")
    bench_cli.add_arguments(p)
    p.set_defaults(func=bench_cli.run)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    from coserve.placement import cli as plan_cli

    p = sub.add_parser("plan", help="place models on a cluster (meshes, parallelism, lane shares, KV quotas)")
    plan_cli.add_arguments(p)
    p.set_defaults(func=plan_cli.run)


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    from coserve.simulator import cli as simulate_cli

    p = sub.add_parser("simulate", help="replay a workload on a placement's meshes on a virtual clock")
    simulate_cli.add_arguments(p)
    p.set_defaults(func=simulate_cli.run)


def _add_profile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="time a model's lane jobs on this machine and fit the simulator's cost model")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--name", help="the model's name in the cost file (default: --model)")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", help="a label for the machine the profile describes")
    p.add_argument("--lane-cores", type=int, nargs="+", default=[1, 2], help="lane sizes to profile (cores)")
    p.add_argument("--no-contention", action="store_true",
                   help="skip timing each lane beside a busy lane on the remaining cores")
    p.add_argument("--neighbour", default=None,
                   help="the model the busy lane runs (default: --model); e.g. the device's most popular model")
    p.add_argument("-o", "--output", required=True, help="cost file (JSON) to write")
    p.set_defaults(func=_profile)


def _profile(args: argparse.Namespace) -> int:
    import json

    from coserve.costmodel.profile import profile_and_fit
    from coserve.engine.config import EngineConfig
    from coserve.yaml_config import check_writable

    check_writable(args.output, "-o")
    config = EngineConfig(model=args.model, name=args.name, tokenizer=args.tokenizer, dtype=args.dtype,
                          max_num_batched_tokens=512)
    neighbour = None
    if args.neighbour:
        neighbour = EngineConfig(model=args.neighbour, dtype=args.dtype, max_num_batched_tokens=512)
    fitted, errors = profile_and_fit(config, args.lane_cores, args.device, contention=not args.no_contention,
                                     neighbour=neighbour)
    fitted.save(args.output)
    print(json.dumps({"coefficients": fitted.coefficients_json(), "fit": errors}, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coserve", description=__doc__)
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_serve(sub)
    _add_bench(sub)
    _add_plan(sub)
    _add_simulate(sub)
    _add_profile(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from coserve.errors import CoserveError

        if isinstance(exc, CoserveError):
            print(f"coserve: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
