"""Turns the last-position logits of each request into its next token.

Greedy rows take the argmax. Sampled rows apply temperature, top-k and top-p, then draw with the
exponential-race trick (argmax of p / Exp(1)), which equals a categorical draw and lets every row
use its own seeded generator.
"""

from __future__ import annotations

import torch

from coserve.sampling_params import SamplingParams


class Sampler:
    def __init__(self, seed: int = 0, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.default_generator = torch.Generator(device=self.device).manual_seed(seed)
        self._generators: dict[str, torch.Generator] = {}

    def forget(self, request_id: str) -> None:
        self._generators.pop(request_id, None)

    def hand_over(self, request_id: str, other: Sampler) -> None:
        """Move a request's seeded generator to another sampler (the request moved replicas)."""
        generator = self._generators.pop(request_id, None)
        if generator is not None:
            other._generators[request_id] = generator

    def __call__(self, logits: torch.Tensor, request_ids: list[str],
                 params: list[SamplingParams]) -> list[int]:
        tokens = logits.argmax(dim=-1)
        sampled_rows = [i for i, p in enumerate(params) if not p.greedy]
        if sampled_rows:
            rows = torch.tensor(sampled_rows, device=logits.device)
            probs = self._probabilities(logits[rows], [params[i] for i in sampled_rows])
            for row, i in enumerate(sampled_rows):
                generator = self._generator(request_ids[i], params[i])
                noise = torch.empty_like(probs[row]).exponential_(generator=generator)
                tokens[i] = (probs[row] / noise).argmax()
        return tokens.tolist()

    def _generator(self, request_id: str, params: SamplingParams) -> torch.Generator:
        if params.seed is None:
            return self.default_generator
        if request_id not in self._generators:
            # fold negative and n-offset seeds into the generator's 64-bit range
            seed = params.seed % 2**64
            self._generators[request_id] = torch.Generator(device=self.device).manual_seed(seed)
        return self._generators[request_id]

    @staticmethod
    def _probabilities(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        temperature = torch.tensor([p.temperature for p in params], device=logits.device)
        logits = logits / temperature.unsqueeze(1)
        vocab = logits.shape[1]
        top_k = [min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params]
        top_p = [p.top_p for p in params]
        if min(top_k) < logits.shape[1] or min(top_p) < 1.0:
            logits = _apply_top_k_top_p(logits, top_k, top_p)
        return logits.softmax(dim=-1)


def _apply_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    k = torch.tensor(top_k, device=logits.device).unsqueeze(1)
    drop = ranks >= k
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(dim=-1)
    # keep the smallest prefix whose mass reaches top_p (the token crossing the line stays)
    mass_before = probs.cumsum(dim=-1) - probs
    p = torch.tensor(top_p, device=logits.device, dtype=probs.dtype).unsqueeze(1)
    drop |= mass_before >= p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
