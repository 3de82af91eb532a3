"""A load burst on two replicas of the real SmolLM2, one core each: recompute, swap, migrate, drop, auto.

The arrivals are a window of the Azure LLM inference 2023 code trace (KunServe's "AzureCode" offset),
or with --trace azure-conv of the conversation trace (the window burst_cluster.py uses), time-compressed
so the burst overflows the replicas' KV; prompt and output lengths are the trace's, scaled down to this
CPU. The code trace's short answers make its burst a queue for prefill compute on this CPU; the
conversation trace's longer answers hold their KV for many decode steps, the memory-bound case.
Each replica's budget is its weights plus KV room for a modest batch. Swap, migration and the drop's
exchange and restore cross links whose bandwidth is scaled with the memory:
moving a whole KV pool takes as long as moving an A100's 40 GB of KV over PCIe 4.0 (25 GB/s, 1.6 s).

Usage: python benchmarks/burst_cpu.py [--trace azure-code] [--requests 64] [--seconds 6]
       [--strategies recompute drop ...] [--describe] [--out results/burst_cpu.json]
Prints a table and ends with one line of JSON (the headline ratios).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coserve.elastic import ElasticCluster, ElasticConfig
from coserve.elastic.cluster import STRATEGIES
from coserve.engine.config import EngineConfig
from coserve.metrics.plots import plot_timelines
from coserve.sampling_params import SamplingParams
from coserve.workload.traces import load_trace

WEIGHT_BYTES = 538_164_480  # SmolLM2-135M in float32 (the engine logs it at load)
PAGE_BYTES = 30 * 2 * 16 * 192 * 4  # one 16-token page over all 30 layers
A100_KV_SECONDS = 40e9 / 25e9


@dataclass(frozen=True)
class TraceWindow:
    """Where a burst starts in a trace, and how its lengths shrink to this CPU."""

    first_row: int
    prompt_divisor: int
    output_divisor: int
    max_output: int


WINDOWS = {
    "azure-code": TraceWindow(5100, 16, 1, 32),  # KunServe's AzureCode offset
    # The first request at 1560 s, where burst_cluster.py's conversation window starts. Answers are
    # halved rather than clipped to 32 so that they keep the trace's decode-heavy shape.
    "azure-conv": TraceWindow(8267, 16, 2, 160),
}


def workload(count: int, seconds: float, trace_name: str = "azure-code",
             seed: int = 0) -> list[tuple[float, list[int], int]]:
    window, trace = WINDOWS[trace_name], load_trace(trace_name)
    rows = slice(window.first_row, window.first_row + count)
    times = trace.timestamps[rows] - trace.timestamps[window.first_row]
    times = times * (seconds / max(times[-1], 1e-9))
    rng = np.random.default_rng(seed)
    requests = []
    for t, prompt_len, output_len in zip(times, trace.input_lens[rows], trace.output_lens[rows]):
        prompt_len = int(np.clip(prompt_len // window.prompt_divisor, 16, 320))
        output_len = int(np.clip(output_len // window.output_divisor, 4, window.max_output))
        requests.append((float(t), rng.integers(100, 40000, prompt_len).tolist(), output_len))
    return requests


def run(strategy: str, requests, kv_pages: int, share_pages: bool = True) -> dict:
    kv_bytes = kv_pages * PAGE_BYTES
    link = kv_bytes / A100_KV_SECONDS
    config = ElasticConfig(strategy, memory_budget_bytes=WEIGHT_BYTES + kv_bytes, host_bytes_per_s=link,
                           peer_bytes_per_s=link, share_pages=share_pages)
    engine = EngineConfig(max_num_seqs=16, max_num_batched_tokens=512, num_threads=1)
    with ElasticCluster(engine, config, lane_cores=[[0], [1]]) as cluster:
        records, timeline = replay(cluster, requests)
        events = cluster.events
    ttft = np.array([r["ttft"] for r in records])
    tpot = np.array([r["tpot"] for r in records if r["tpot"] is not None])
    span = max(r["finished"] for r in records)
    return {
        "strategy": strategy, "requests": len(records),
        "p50_ttft_s": float(np.percentile(ttft, 50)), "p99_ttft_s": float(np.percentile(ttft, 99)),
        "p50_tpot_s": float(np.percentile(tpot, 50)), "p99_tpot_s": float(np.percentile(tpot, 99)),
        "throughput_req_s": len(records) / span,
        "mean_queued_s": float(np.mean([r["queued"] for r in records])),
        "errors": sum(r["error"] for r in records),
        "drops": len(events.drops), "restores": len(events.restores), "swaps_out": events.swaps_out,
        "migrations": events.migrations, "queue_moves": events.queue_moves,
        "spare_moves": events.spare_moves, "timeline": timeline,
    }


def replay(cluster: ElasticCluster, requests) -> tuple[list[dict], list[dict]]:
    start = time.monotonic()
    pending = list(enumerate(requests))
    arrival: dict[str, float] = {}
    records, timeline = [], []
    while pending or cluster.has_unfinished_requests():
        now = time.monotonic() - start
        while pending and pending[0][1][0] <= now:
            i, (t, prompt, max_tokens) = pending.pop(0)
            params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0)
            arrival[cluster.add_request(prompt, params, str(i))] = start + t
        if not cluster.has_unfinished_requests():
            time.sleep(max(0.0, pending[0][1][0] - now))
            continue
        for output in cluster.step():
            if output.finished:
                records.append(record(output, arrival[output.request_id], start))
        timeline.append(sample(cluster, time.monotonic() - start))
    deadline = time.monotonic() + 120
    while cluster.groups and time.monotonic() < deadline:  # idle until a restore's weights have crossed
        cluster.step()
        timeline.append(sample(cluster, time.monotonic() - start))
        time.sleep(0.05)
    return records, timeline


def record(output, arrived: float, start: float) -> dict:
    m = output.metrics
    tokens = len(output.outputs[0].token_ids)
    tpot = (m.last_token_time - m.first_token_time) / (tokens - 1) if tokens > 1 and m.first_token_time else None
    return {"ttft": (m.first_token_time or m.finished_time) - arrived, "tpot": tpot,
            "queued": (m.first_scheduled_time or m.finished_time) - arrived, "finished": m.finished_time - start,
            "error": output.outputs[0].finish_reason == "error"}


def sample(cluster: ElasticCluster, t: float) -> dict:
    replicas = cluster.replicas
    return {"t": round(t, 3), "queued": sum(r.scheduler.num_waiting for r in replicas),
            "used_pages": sum(r.kv.num_held_blocks for r in replicas),
            "grouped": bool(cluster.groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", choices=sorted(WINDOWS), default="azure-code")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=6.0, help="the window's arrivals compressed into this")
    parser.add_argument("--kv-pages", type=int, default=24, help="KV pages per replica serving alone")
    parser.add_argument("--out", default="results/burst_cpu.json")
    parser.add_argument("--plot", default="docs/img/burst_cpu.png", help="the timeline PNG")
    parser.add_argument("--plot-from", default=None, help="only draw the timeline of a saved run's JSON")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES),
                        help="a subset to run (recompute and drop are needed for the headline)")
    parser.add_argument("--describe", action="store_true", help="only print the burst's lengths and KV need")
    parser.add_argument("--share-pages", choices=("on", "off"), default="on",
                        help="ElasticConfig.share_pages for the grouped strategies (the ablation)")
    args = parser.parse_args()
    if args.plot_from:
        plot(json.loads(Path(args.plot_from).read_text())["results"], args.plot)
        return
    if not {"recompute", "drop"} <= set(args.strategies):
        parser.error("--strategies must include recompute and drop")
    burst = workload(args.requests, args.seconds, args.trace)
    if args.describe:
        describe(burst, args.seconds)
        return
    calm = workload(args.requests // 4, args.seconds * 4, args.trace)  # the window spread out: no overflow
    share = args.share_pages == "on"
    results = {s: run(s, burst, args.kv_pages, share) for s in STRATEGIES if s in args.strategies}
    no_burst = run("drop", calm, args.kv_pages, share)
    print(f"{'strategy':<10} {'p50 TTFT':>9} {'p99 TTFT':>9} {'p50 TPOT':>9} {'p99 TPOT':>9} {'req/s':>6} "
          f"{'queued':>7} {'errors':>6} events")
    for r in [*results.values(), {**no_burst, "strategy": "no burst"}]:
        events = (f"drops {r['drops']} restores {r['restores']} swaps {r['swaps_out']} migrations {r['migrations']} "
                  f"queue moves {r.get('queue_moves', 0)} spare moves {r.get('spare_moves', 0)}")
        print(f"{r['strategy']:<10} {r['p50_ttft_s']:9.3f} {r['p99_ttft_s']:9.3f} {r['p50_tpot_s']:9.4f} "
              f"{r['p99_tpot_s']:9.4f} {r['throughput_req_s']:6.2f} {r['mean_queued_s']:7.3f} {r['errors']:6d} "
              f"{events}")
    drop = results["drop"]["p99_ttft_s"]
    ratios = {s: results[s]["p99_ttft_s"] / drop for s in ("recompute", "swap", "migrate") if s in results}
    auto = (f"; auto's (coserve's per-request choice) {results['auto']['p99_ttft_s'] / drop:.2f}x"
            if "auto" in results else "")
    print("p99 TTFT over drop's: " + ", ".join(f"{s} {v:.2f}x" for s, v in ratios.items()) + auto)
    headline = {"recompute_over_drop_p99_ttft": round(ratios["recompute"], 3),
                "best_baseline_over_drop_p99_ttft": round(min(ratios.values()), 3),
                "drop_p99_tpot_over_no_burst": round(results["drop"]["p99_tpot_s"] / no_burst["p99_tpot_s"], 3)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results, "no_burst": no_burst,
                               "headline": headline}, indent=1))
    plot(results, args.plot)
    print(json.dumps(headline))


def describe(requests, seconds: float) -> None:
    prompts = np.array([len(prompt) for _, prompt, _ in requests])
    outputs = np.array([max_tokens for _, _, max_tokens in requests])
    pages = -(-(prompts + outputs) // 16)  # what each request holds at its last token
    print(f"{len(requests)} requests in {seconds:g} s: {prompts.sum()} prompt tokens (mean {prompts.mean():.1f}), "
          f"answers mean {outputs.mean():.1f} (p50 {np.percentile(outputs, 50):g}, "
          f"p90 {np.percentile(outputs, 90):g}), "
          f"pages at the last token mean {pages.mean():.2f}")


def plot(results: dict, path: str) -> None:
    plot_timelines({s: r["timeline"] for s, r in results.items()},
                   [("used_pages", "KV pages in use"), ("queued", "requests queued")], path,
                   "burst on 2 SmolLM2 replicas (real engine, 2-core CPU)")


if __name__ == "__main__":
    main()
