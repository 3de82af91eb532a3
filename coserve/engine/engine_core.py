"""A model deployment's request lifecycle, without the model: admit, schedule, apply tokens, retire.

`LLMEngine` adds the weights, the KV tensors and the runner; the simulator adds a cost model
instead. Both go through this code, so a simulated device schedules exactly as a real one does.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from dataclasses import dataclass

from coserve.engine.config import EngineConfig
from coserve.engine.detokenizer import IncrementalDetokenizer
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from coserve.engine.request import Request, RequestStatus
from coserve.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from coserve.errors import ContextLengthError, InvalidRequestError, OutOfCapacityError
from coserve.execution.models.spec import ModelSpec
from coserve.sampling_params import SamplingParams
from coserve.validation import is_finite_number

logger = logging.getLogger(__name__)


@dataclass
class RequestState:
    request: Request
    prompt: str | None
    detokenizer: IncrementalDetokenizer
    metrics: RequestMetrics


class EngineCore:
    def __init__(self, config: EngineConfig, spec: ModelSpec, kv: KVCacheManager, clock=time.monotonic,
                 tokenizer=None, chat_template: str | None = None):
        self.config = config
        self.spec = spec
        self.kv = kv
        self.clock = clock
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_model_len = config.max_model_len or min(spec.max_position_embeddings, 32768)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                   config.long_prefill_token_threshold), kv)
        self.states: dict[str, RequestState] = {}
        # what the SLO signal reads, kept as requests come and go so that reading it costs the
        # decoding batch, not the queue: states with a first token, and a heap of the others by
        # arrival (entries of requests that got a token or left are skipped when read)
        self.decoding: dict[str, RequestState] = {}
        self._without_token: list[tuple[float, int, RequestState]] = []
        self._ids = itertools.count()
        self._heap_seq = itertools.count()
        # False: a step reports finished requests only (offline batch runs, the simulator), which
        # spares copying every request's growing token list on every step
        self.stream_outputs = True

    def _forget(self, request_id: str) -> None:
        """Hook: drop per-request state kept outside the core (a sampler's generator)."""

    # -- requests ------------------------------------------------------------------------------

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise InvalidRequestError(f"model {self.config.name!r} has no tokenizer: pass token ids", "prompt")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate from a JSON "\ud800" escape
            raise InvalidRequestError(f"the prompt is not valid Unicode text: {exc.reason}", "prompt") from None
        return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, messages: list[dict]) -> str:
        if self.tokenizer is None:
            raise InvalidRequestError(f"model {self.config.name!r} has no tokenizer or chat template",
                                      "messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("messages must be a non-empty list", "messages")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                    or not isinstance(message.get("role"), str):
                raise InvalidRequestError("each message needs a string 'role' and 'content'", "messages")
        template = self.chat_template or getattr(self.tokenizer, "chat_template", None)
        if not template:
            raise InvalidRequestError(f"model {self.config.name!r} has no chat template: send a prompt to "
                                      "/v1/completions instead", "messages")
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, prompt_token_ids: list[int] | None = None,
                    arrival_time: float | None = None) -> str:
        """Queue a request; `prompt_token_ids`, when the caller already tokenised `prompt`, skips that.
        `arrival_time` (this engine's clock; default now): when the request reached the system. A
        server stamps it on receipt, so the wait for its engine thread, busy with a step, counts in
        the request's TTFT and in how long the scheduler and the multiplexer see it waiting."""
        params = params or SamplingParams()
        params.validate()
        if arrival_time is not None and not is_finite_number(arrival_time):
            raise InvalidRequestError(f"arrival_time must be a finite number, got {arrival_time!r}", "arrival_time")
        request_id = request_id if request_id is not None else str(next(self._ids))
        if request_id in self.states:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        text = prompt if isinstance(prompt, str) else None
        token_ids = prompt_token_ids if prompt_token_ids is not None else self.prompt_token_ids_of(prompt)
        self.check_length(len(token_ids), params)
        request = Request(request_id, token_ids, params, eos_token_ids=self.eos_token_ids,
                          max_model_len=self.max_model_len)
        detokenizer = IncrementalDetokenizer(self.tokenizer, params.stop, params.include_stop_str_in_output)
        arrived = self.clock() if arrival_time is None else arrival_time
        self.adopt_state(RequestState(request, text, detokenizer, RequestMetrics(arrived)))
        self.scheduler.add_request(request)
        return request_id

    def adopt_state(self, state: RequestState) -> None:
        """Track a request's state here (a new request, or one handed over by another replica)."""
        self.states[state.request.request_id] = state
        if state.metrics.token_times:
            self.decoding[state.request.request_id] = state
        else:
            heapq.heappush(self._without_token, (state.metrics.arrival_time, next(self._heap_seq), state))

    def release_state(self, request_id: str) -> RequestState:
        """Stop tracking a request that leaves (retired, aborted, or handed to another replica)."""
        self.decoding.pop(request_id, None)
        return self.states.pop(request_id)

    def oldest_without_token(self) -> float | None:
        """Arrival time of the earliest request here that has no output token yet."""
        heap = self._without_token
        while heap:
            state = heap[0][2]
            if not state.metrics.token_times and self.states.get(state.request.request_id) is state:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    def prompt_token_ids_of(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a text or id-list prompt, checked against the vocabulary (InvalidRequestError)."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt must not be empty", "prompt")
            token_ids = self.tokenize(prompt)
        elif isinstance(prompt, (list, tuple)):
            token_ids = list(prompt)
            if not set(map(type, token_ids)) <= {int}:  # bool is an int subclass: excluded too
                raise InvalidRequestError("prompt token ids must be integers", "prompt")
            if token_ids and not (min(token_ids) >= 0 and max(token_ids) < self.spec.vocab_size):
                bad = next(t for t in token_ids if not 0 <= t < self.spec.vocab_size)
                raise InvalidRequestError(
                    f"token id {bad} is outside the vocabulary [0, {self.spec.vocab_size})", "prompt")
        else:
            raise InvalidRequestError(f"prompt must be a string or a list of token ids, got "
                                      f"{type(prompt).__name__}", "prompt")
        if not token_ids:
            raise InvalidRequestError("prompt must not be empty", "prompt")
        return token_ids

    def check_length(self, prompt_len: int, params: SamplingParams) -> None:
        """ContextLengthError unless the prompt and max_tokens fit the context and the KV pool."""
        capacity = self.kv.pool.capacity(self.kv.owner) * self.kv.block_size
        if prompt_len >= capacity:
            raise ContextLengthError(f"the prompt has {prompt_len} tokens but this deployment's KV cache holds "
                                     f"only {capacity} tokens", "prompt")
        limit = self.max_model_len
        if prompt_len >= limit:
            raise ContextLengthError(
                f"the prompt has {prompt_len} tokens but this model's context is {limit} tokens "
                f"(at least one must be left for the output)", "prompt")
        if params.max_tokens is not None and prompt_len + params.max_tokens > limit:
            raise ContextLengthError(
                f"this model's maximum context length is {limit} tokens, but {prompt_len + params.max_tokens}"
                f" were requested ({prompt_len} in the prompt, {params.max_tokens} in max_tokens)",
                "max_tokens")

    @property
    def eos_token_ids(self) -> frozenset[int]:
        ids = {self.spec.eos_token_id, *self.spec.eos_token_ids}
        if self.tokenizer is not None:
            ids.add(self.tokenizer.eos_token_id)
        return frozenset(i for i in ids if i is not None)

    def abort_request(self, request_id: str) -> None:
        if request_id in self.states:
            state = self.release_state(request_id)
            self.scheduler.finish_request(state.request, RequestStatus.FINISHED_ABORTED)
            self._forget(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # -- one step ------------------------------------------------------------------------------

    # The two halves of a step, for executors that run the model elsewhere (a lane process).

    def begin_step(self) -> SchedulerOutput | None:
        """Schedule the next batch (None when there is nothing to do)."""
        out = self.scheduler.schedule()
        if out.is_empty and not out.finished:
            return None
        now = self.clock()
        for item in out.scheduled:
            metrics = self.states[item.request.request_id].metrics
            metrics.first_scheduled_time = metrics.first_scheduled_time or now
        return out

    def fail_step(self, out: SchedulerOutput, exc: BaseException) -> list[RequestOutput]:
        logger.error("step failed (%s); failing %d requests", exc, len(out.scheduled))
        return self._fail(out, exc)

    def finish_step(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[RequestOutput]:
        """Apply a batch's sampled tokens: advance, detokenise, retire finished requests."""
        finished = self.scheduler.update_from_output(out, sampled)
        now = self.clock()
        outputs = []
        for request_id, token in sampled.items():
            if request_id in self.states:
                state = self._on_token(request_id, token, now)
                if self.stream_outputs or state.request.finished:
                    outputs.append(self._output(state))
        emitted = {o.request_id for o in outputs}
        outputs += [self._output(self.states[r.request_id]) for r in finished
                    if r.request_id not in emitted and r.request_id in self.states]
        for output in outputs:
            if output.finished:
                self._retire(output.request_id, now)
        return outputs

    def _on_token(self, request_id: str, token: int, now: float) -> RequestState:
        state = self.states[request_id]
        metrics = state.metrics
        if not metrics.token_times:
            metrics.first_token_time = now
            self.decoding[request_id] = state
        metrics.last_token_time = now
        metrics.token_times.append(now)
        stop = state.detokenizer.add_tokens([token])
        if stop is not None:
            # a stop string wins over max_tokens reached by the same token
            self.scheduler.finish_request(state.request, RequestStatus.FINISHED_STOPPED)
            state.request.status = RequestStatus.FINISHED_STOPPED
            state.request.stop_reason = stop
        return state

    def _retire(self, request_id: str, now: float) -> None:
        state = self.release_state(request_id)
        state.metrics.finished_time = now
        self._forget(request_id)

    def _fail(self, out: SchedulerOutput, exc: BaseException) -> list[RequestOutput]:
        # requests the scheduler already ended this step must still be reported, or they wait forever
        return self.fail_requests([item.request for item in out.scheduled] + out.finished, exc)

    def fail_requests(self, requests: list[Request], exc: BaseException) -> list[RequestOutput]:
        """End these requests with `exc` as their error (those not already finished) and free their pages."""
        outputs = []
        now = self.clock()
        for request in requests:
            state = self.states.get(request.request_id)
            if state is None:
                continue
            self.scheduler.finish_request(request, RequestStatus.FINISHED_ERROR)
            output = self._output(state)
            if request.status is RequestStatus.FINISHED_ERROR:
                output.error = f"{type(exc).__name__}: {exc}"
                output.unavailable = isinstance(exc, OutOfCapacityError)
            outputs.append(output)
            self._retire(request.request_id, now)
        return outputs

    def _output(self, state: RequestState) -> RequestOutput:
        request = state.request
        completion = CompletionOutput(0, state.detokenizer.text, list(request.output_token_ids),
                                      request.finish_reason, request.stop_reason)
        return RequestOutput(request.request_id, state.prompt, request.prompt_token_ids, [completion],
                             request.finished, state.metrics, request.num_preemptions)

    @property
    def num_free_blocks(self) -> int:
        return self.kv.pool.num_free_blocks

    @property
    def num_blocks(self) -> int:
        return self.kv.pool.num_blocks
