"""What the Ray backend costs: the same requests on two SmolLM2 replicas, process backend vs Ray actors.

Both backends serve one batch of requests that all arrive at once, on the same `ElasticCluster`. The
first run has room for every request (`recompute`, nothing is preempted). The second has a budget
small enough that `drop` forms a pipeline across the two replicas. So the comparison covers
independent serving and pipelined serving, where hidden states cross between workers: between lane
processes on one side, between Ray actors over gloo on the other. The script checks that the greedy
outputs are identical and reports throughput, TTFT and TPOT, with the ratios of Ray to process.

Usage: python benchmarks/ray_backend.py [--requests 16] [--max-tokens 32] [--out results/ray_backend.json]
Prints a table and ends with one line of JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from coserve.elastic import ElasticCluster, ElasticConfig
from coserve.engine.config import EngineConfig
from coserve.sampling_params import SamplingParams

MODEL = "smollm2-135m-instruct"
WEIGHT_BYTES = 538_164_480  # SmolLM2-135M in float32 (the engine logs it at load)
PAGE_BYTES = 30 * 2 * 16 * 192 * 4  # one 16-token page over all 30 layers
ROOMY_PAGES, TIGHT_PAGES = 256, 12


def prompts(count: int, length: int = 48, vocab: int = 49152) -> list[list[int]]:
    return [[(31 * i + 17 * j + 5) % vocab for j in range(length)] for i in range(count)]


def run(backend: str, strategy: str, pages: int, requests: list[list[int]], params: SamplingParams) -> dict:
    config = EngineConfig(model=MODEL, max_num_seqs=16, max_num_batched_tokens=256)
    elastic = ElasticConfig(strategy, memory_budget_bytes=WEIGHT_BYTES + pages * PAGE_BYTES)
    replica_backend = None
    if backend == "ray":
        from coserve.distributed.ray_backend import RayBackend

        replica_backend = RayBackend(num_cpus=2)
    with ElasticCluster(config, elastic, backend=replica_backend) as cluster:
        start = time.monotonic()
        for i, prompt in enumerate(requests):
            cluster.add_request(prompt, params, str(i))
        done = {}
        while cluster.has_unfinished_requests():
            done.update({o.request_id: o for o in cluster.step() if o.finished})
        wall = time.monotonic() - start
        drops = len(cluster.events.drops)
    ttft = [o.metrics.first_token_time - o.metrics.arrival_time for o in done.values()]
    tpot = [(o.metrics.last_token_time - o.metrics.first_token_time) / max(1, len(o.outputs[0].token_ids) - 1)
            for o in done.values()]
    tokens = sum(len(o.outputs[0].token_ids) for o in done.values())
    return {"backend": backend, "strategy": strategy, "wall_s": wall, "tokens_per_s": tokens / wall,
            "p50_ttft_s": float(np.percentile(ttft, 50)), "p99_ttft_s": float(np.percentile(ttft, 99)),
            "mean_tpot_s": float(np.mean(tpot)), "drops": drops,
            "outputs": {rid: o.outputs[0].token_ids for rid, o in sorted(done.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="results/ray_backend.json")
    args = parser.parse_args()
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True, temperature=0)
    requests = prompts(args.requests)
    rows = []
    for strategy, pages in (("recompute", ROOMY_PAGES), ("drop", TIGHT_PAGES)):
        for backend in ("process", "ray"):
            rows.append(run(backend, strategy, pages, requests, params))
    print(f"{'strategy':<10} {'backend':<8} {'tok/s':>7} {'p50 TTFT':>9} {'p99 TTFT':>9} {'TPOT ms':>8} "
          f"{'drops':>5} {'wall s':>7}")
    for r in rows:
        print(f"{r['strategy']:<10} {r['backend']:<8} {r['tokens_per_s']:7.1f} {r['p50_ttft_s']:9.2f} "
              f"{r['p99_ttft_s']:9.2f} {1000 * r['mean_tpot_s']:8.1f} {r['drops']:5d} {r['wall_s']:7.1f}")
    headline = {}
    for process, ray in (rows[0:2], rows[2:4]):
        assert process["outputs"] == ray["outputs"], f"{process['strategy']}: Ray outputs differ"
        headline[f"{process['strategy']}_ray_over_process_throughput"] = round(
            ray["tokens_per_s"] / process["tokens_per_s"], 3)
    headline["outputs_identical"] = True
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": [{k: v for k, v in r.items() if k != "outputs"} for r in rows],
                                          "headline": headline}, indent=2))
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
