"""The engine for one model: validate and admit requests, then step (schedule, execute, update)."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import torch

from coserve.engine.block_pool import BlockPool
from coserve.engine.config import EngineConfig
from coserve.engine.detokenizer import IncrementalDetokenizer
from coserve.engine.device_pool import DeviceKVPool
from coserve.engine.kv_cache_manager import KVCacheManager
from coserve.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from coserve.engine.request import Request, RequestStatus
from coserve.engine.scheduler import Scheduler, SchedulerConfig, SchedulerOutput
from coserve.errors import ConfigError, ContextLengthError, InvalidRequestError
from coserve.execution.attention import get_attention_backend
from coserve.execution.kv_cache import PagedKVCache, page_bytes
from coserve.execution.memory import host_zeros
from coserve.execution.model_runner import ModelRunner
from coserve.execution.models.llama import LlamaModel
from coserve.execution.models.spec import parse_dtype
from coserve.execution.sampler import Sampler
from coserve.execution.weights import load_model
from coserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

CPU_DEFAULT_KV_BYTES = 1 << 30


@dataclass
class RequestState:
    request: Request
    prompt: str | None
    detokenizer: IncrementalDetokenizer
    metrics: RequestMetrics


def _move_to_huge_pages(model: torch.nn.Module) -> None:
    """Decode streams every weight each step; 2 MiB pages spare the TLB most of the misses."""
    for param in model.parameters():
        moved = host_zeros(tuple(param.shape), param.dtype)
        moved.copy_(param.data)
        param.data = moved


class LLMEngine:
    """`pool`: a device's shared page pool; without one the engine owns a pool of its own."""

    def __init__(self, config: EngineConfig, clock=time.monotonic, pool: DeviceKVPool | None = None):
        self.config = config
        self.clock = clock
        self.device = torch.device(config.device)
        self.dtype = parse_dtype(config.dtype)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        loaded = load_model(config.model, dtype=self.dtype, seed=config.seed)
        self.spec = loaded.spec
        self.tokenizer = loaded.tokenizer
        self.chat_template = loaded.chat_template
        if config.tokenizer:
            # only layer 0 is read: the cheapest way to reach another model's tokenizer
            donor = load_model(config.tokenizer, layer_range=(0, 1))
            self.tokenizer, self.chat_template = donor.tokenizer, donor.chat_template
        self.max_model_len = config.max_model_len or min(self.spec.max_position_embeddings, 32768)
        self.model = self._build_model(loaded.state_dict)
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        if pool is None:
            num_blocks = self._num_kv_blocks()
            self.kv_cache = PagedKVCache(self.spec, num_blocks, config.block_size, self.spec.num_layers,
                                         self.dtype, self.device)
            self.kv = KVCacheManager(BlockPool(num_blocks), config.block_size, owner=config.name)
        else:
            self.kv_cache = pool.cache_for(self.spec, self.dtype)
            self.kv = KVCacheManager(pool.blocks, self.kv_cache.block_size, owner=config.name)
        num_blocks = self.kv.pool.num_blocks
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                   config.long_prefill_token_threshold), self.kv)
        attention = get_attention_backend(config.attention_backend, self.device)
        self.runner = ModelRunner(self.model, self.kv_cache, attention, Sampler(config.seed, self.device), self.device)
        self.states: dict[str, RequestState] = {}
        self._ids = itertools.count()
        logger.info("%s: %.1f MB weights, %d KV blocks of %d tokens (%.1f MB), max_model_len %d",
                    config.name, self.weight_bytes / 1e6, num_blocks, self.kv.block_size,
                    self.kv_cache.nbytes / 1e6, self.max_model_len)

    def _build_model(self, state_dict: dict[str, torch.Tensor]) -> LlamaModel:
        model = LlamaModel(self.spec, max_position=self.max_model_len, device=self.device)
        model.to(device=self.device, dtype=self.dtype)
        model.rotary.cos, model.rotary.sin = model.rotary.cos.to(self.dtype), model.rotary.sin.to(self.dtype)
        model.load_hf_state_dict(state_dict)
        if self.device.type == "cpu":
            _move_to_huge_pages(model)
        return model.eval()

    def _num_kv_blocks(self) -> int:
        config = self.config
        if config.num_kv_blocks:
            return config.num_kv_blocks
        budget = config.kv_cache_memory_bytes
        if budget is None and self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = int(free * config.gpu_memory_utilization) - (1 << 30)  # headroom for activations
            if budget <= 0:
                raise ConfigError(f"no GPU memory left for the KV cache on {self.device} "
                                  f"({free / 2**30:.1f} GiB free); set kv_cache_memory_bytes or num_kv_blocks")
        budget = budget or CPU_DEFAULT_KV_BYTES
        return max(1, budget // page_bytes(self.spec, config.block_size, self.spec.num_layers, self.dtype))

    # -- requests ------------------------------------------------------------------------------

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise InvalidRequestError(f"model {self.config.name!r} has no tokenizer: pass token ids", "prompt")
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
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None, prompt_token_ids: list[int] | None = None) -> str:
        """Queue a request; `prompt_token_ids`, when the caller already tokenised `prompt`, skips that."""
        params = params or SamplingParams()
        params.validate()
        request_id = request_id if request_id is not None else str(next(self._ids))
        if request_id in self.states:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        text = prompt if isinstance(prompt, str) else None
        token_ids = prompt_token_ids if prompt_token_ids is not None else self.prompt_token_ids_of(prompt)
        self.check_length(len(token_ids), params)
        request = Request(request_id, token_ids, params, eos_token_ids=self.eos_token_ids,
                          max_model_len=self.max_model_len)
        detokenizer = IncrementalDetokenizer(self.tokenizer, params.stop, params.include_stop_str_in_output)
        self.states[request_id] = RequestState(request, text, detokenizer, RequestMetrics(self.clock()))
        self.scheduler.add_request(request)
        return request_id

    def prompt_token_ids_of(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a text or id-list prompt, checked against the vocabulary (InvalidRequestError)."""
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt must not be empty", "prompt")
            token_ids = self.tokenize(prompt)
        elif isinstance(prompt, (list, tuple)):
            token_ids = list(prompt)
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in token_ids):
                raise InvalidRequestError("prompt token ids must be integers", "prompt")
            bad = [t for t in token_ids if not 0 <= t < self.spec.vocab_size]
            if bad:
                raise InvalidRequestError(
                    f"token id {bad[0]} is outside the vocabulary [0, {self.spec.vocab_size})", "prompt")
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
        state = self.states.pop(request_id, None)
        if state is not None:
            self.scheduler.finish_request(state.request, RequestStatus.FINISHED_ABORTED)
            self.runner.sampler.forget(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    # -- one step ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        out = self.begin_step()
        if out is None:
            return []
        try:
            sampled = self.runner.execute(out, self.kv.block_tables) if out.scheduled else {}
        except Exception as exc:  # keep serving: fail this batch, free its pages
            return self.fail_step(out, exc)
        return self.finish_step(out, sampled)

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
        outputs = [self._on_token(rid, token, now) for rid, token in sampled.items() if rid in self.states]
        emitted = {o.request_id for o in outputs}
        outputs += [self._output(self.states[r.request_id]) for r in finished if r.request_id not in emitted]
        for output in outputs:
            if output.finished:
                self._retire(output.request_id, now)
        return outputs

    def _on_token(self, request_id: str, token: int, now: float) -> RequestOutput:
        state = self.states[request_id]
        metrics = state.metrics
        metrics.first_token_time = metrics.first_token_time or now
        metrics.last_token_time = now
        metrics.token_times.append(now)
        stop = state.detokenizer.add_tokens([token])
        if stop is not None:
            # a stop string wins over max_tokens reached by the same token
            self.scheduler.finish_request(state.request, RequestStatus.FINISHED_STOPPED)
            state.request.status = RequestStatus.FINISHED_STOPPED
            state.request.stop_reason = stop
        return self._output(state)

    def _retire(self, request_id: str, now: float) -> None:
        state = self.states.pop(request_id)
        state.metrics.finished_time = now
        self.runner.sampler.forget(request_id)

    def _fail(self, out: SchedulerOutput, exc: BaseException) -> list[RequestOutput]:
        outputs = []
        now = self.clock()
        # requests the scheduler already ended this step must still be reported, or they wait forever
        for request in [item.request for item in out.scheduled] + out.finished:
            state = self.states.get(request.request_id)
            if state is None:
                continue
            self.scheduler.finish_request(request, RequestStatus.FINISHED_ERROR)
            output = self._output(state)
            if request.status is RequestStatus.FINISHED_ERROR:
                output.error = f"{type(exc).__name__}: {exc}"
            outputs.append(output)
            self._retire(request.request_id, now)
        return outputs

    def _output(self, state: RequestState) -> RequestOutput:
        request = state.request
        completion = CompletionOutput(0, state.detokenizer.text, list(request.output_token_ids),
                                      request.finish_reason, request.stop_reason)
        return RequestOutput(request.request_id, state.prompt, request.prompt_token_ids, [completion],
                             request.finished, state.metrics, request.num_preemptions)

    # -- introspection -------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self.kv.pool.num_free_blocks

    @property
    def num_blocks(self) -> int:
        return self.kv.pool.num_blocks
