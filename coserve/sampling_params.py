"""Per-request generation controls, validated when the request is made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from coserve.errors import InvalidRequestError
from coserve.validation import is_finite_number


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0) keeps the whole vocabulary
    seed: int | None = None
    max_tokens: int | None = 16  # None: until the model's context is full
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = _as_list("stop", self.stop)
        self.stop_token_ids = _as_list("stop_token_ids", self.stop_token_ids)
        self.validate()

    def for_copy(self, copy: int) -> SamplingParams:
        """The params of completion `copy` of `n`: one completion, its own seed. Seeds wrap around
        the signed 64-bit range, so any valid seed gives every copy a valid one."""
        if self.n == 1 and copy == 0:
            return self
        seed = None if self.seed is None else (self.seed + copy + 2**63) % 2**64 - 2**63
        return dataclasses.replace(self, n=1, seed=seed)

    @property
    def greedy(self) -> bool:
        # below this, dividing logits by the temperature overflows; the answer is the argmax anyway
        return self.temperature < 1e-5

    def validate(self) -> None:
        _check_int("n", self.n, minimum=1)
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}", "temperature")
        _check_number("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        _check_int("top_k", self.top_k, minimum=-1)
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=-(2**63))
            if self.seed >= 2**63:
                raise InvalidRequestError(f"seed must be < 2**63, got {self.seed}", "seed")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, minimum=1)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop must be a non-empty string or a list of them", "stop")
        for token in self.stop_token_ids:
            _check_int("stop_token_ids", token, minimum=0)


def _check_int(name: str, value: object, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}", name)
    if minimum is not None and value < minimum:
        raise InvalidRequestError(f"{name} must be >= {minimum}, got {value}", name)


def _check_number(name: str, value: object) -> None:
    if not is_finite_number(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}", name)


def _as_list(name: str, value: object) -> list:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise InvalidRequestError(f"{name} must be a list, got {value!r}", name)
    return list(value)
