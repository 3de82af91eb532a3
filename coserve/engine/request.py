"""A request as the scheduler sees it: tokens, how many are computed, and where its KV lives."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from coserve.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self._value_ in _FINISHED_VALUES  # by value: an Enum member hashes in Python, a str in C


FINISHED = {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
            RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR}
_FINISHED_VALUES = frozenset(status.value for status in FINISHED)


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    max_model_len: int = 1 << 30
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_preemptions: int = 0
    stop_reason: int | str | None = None
    # prompt plus output tokens; kept as a field because the scheduler reads it several times
    # per request per step (output tokens are only added through append_token)
    num_tokens: int = field(init=False)
    # what ends the request, fixed at creation and checked once per sampled token
    _stop_ids: frozenset[int] = field(init=False, repr=False)
    _length_limit: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.num_tokens = len(self.prompt_token_ids) + len(self.output_token_ids)
        params = self.params
        eos = frozenset() if params.ignore_eos else self.eos_token_ids
        self._stop_ids = eos | frozenset(params.stop_token_ids)
        self._length_limit = self.max_model_len
        if params.max_tokens is not None:
            self._length_limit = min(self.max_model_len, len(self.prompt_token_ids) + params.max_tokens)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def finished(self) -> bool:
        return self.status._value_ in _FINISHED_VALUES

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.finished else None

    def token_ids(self, start: int, end: int) -> list[int]:
        prompt_len = len(self.prompt_token_ids)
        if end <= prompt_len:
            return self.prompt_token_ids[start:end]
        return (self.prompt_token_ids + self.output_token_ids)[start:end]

    def append_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.num_tokens += 1
        self.status = self._stop_status(token_id) or self.status

    def _stop_status(self, token_id: int) -> RequestStatus | None:
        if token_id in self._stop_ids:
            # EOS first: its stop_reason is None, a listed stop token's is the token
            is_eos = not self.params.ignore_eos and token_id in self.eos_token_ids
            self.stop_reason = None if is_eos else token_id
            return RequestStatus.FINISHED_STOPPED
        if self.num_tokens >= self._length_limit:  # max_tokens generated, or the context is full
            return RequestStatus.FINISHED_LENGTH
        return None
