"""What crosses the network between replicas, per token and per layer, from a model's spec.

    python -m coserve.distributed.traffic smollm2-135m-instruct llama3-8b qwen2.5-14b llama2-70b

prints the table docs/deployment.md quotes: hidden states per token per pipeline boundary, KV per
token (one layer, and all layers: what exchange, migration and regather copy), and a decoder
layer's weights (what a restore pulls from a peer).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from coserve.execution.models.spec import DTYPE_BYTES, ModelSpec, parse_dtype
from coserve.placement.shapes import model_spec


@dataclass(frozen=True)
class Traffic:
    hidden_per_token: int  # one pipeline boundary, one token
    kv_per_token_layer: int
    kv_per_token: int  # every layer
    layer_weights: int


def traffic(spec: ModelSpec, dtype: torch.dtype) -> Traffic:
    width = DTYPE_BYTES[dtype]
    return Traffic(spec.hidden_size * width, spec.kv_bytes_per_token(dtype, 1), spec.kv_bytes_per_token(dtype),
                   spec.layer_params() * width)


def _size(num_bytes: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes:.0f} B"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    dtype = parse_dtype(args.dtype)
    print(f"| model ({args.dtype}) | hidden / token / boundary | KV / token / layer | KV / token (all layers) "
          f"| one layer's weights |")
    print("|---|---|---|---|---|")
    for name in args.models:
        t = traffic(model_spec(name, name), dtype)
        print(f"| {name} | {_size(t.hidden_per_token)} | {_size(t.kv_per_token_layer)} | {_size(t.kv_per_token)} "
              f"| {_size(t.layer_weights)} |")


if __name__ == "__main__":
    main()
