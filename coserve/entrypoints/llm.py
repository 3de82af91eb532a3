"""Offline batch inference: `LLM(model=...).generate(prompts, params)` and `.chat(messages, params)`.

Several models on one device: `LLM(models=[...], device=DeviceConfig(policy="mux"))`, then
`generate(prompts, params, model=name)`; `close()` (or a `with` block) stops the device's lanes.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from tqdm import tqdm

from coserve.engine.config import DEFAULT_MODEL, EngineConfig
from coserve.engine.device_config import ColocatedModel, DeviceConfig, build_device
from coserve.engine.llm_engine import LLMEngine
from coserve.engine.outputs import RequestOutput
from coserve.errors import ConfigError, InvalidRequestError, UnknownModelError
from coserve.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM:
    _calls = itertools.count()

    def __init__(self, model: str = DEFAULT_MODEL, *, models: Sequence[ColocatedModel | EngineConfig] | None = None,
                 device: DeviceConfig | str | None = None, **engine_kwargs):
        """`device`: with one model, where it runs ("cpu", "cuda[:N]", as vLLM's `device=`); with
        `models=`, the DeviceConfig they share."""
        _check_arguments(models, device, engine_kwargs)
        if models is None:
            if isinstance(device, str):
                engine_kwargs["device"] = device
            self.engine = LLMEngine(EngineConfig(model=model, **engine_kwargs))
            self.engines = {self.engine.config.name: self.engine}
            self._driver = self.engine
            self._device = None
            self._report_finished_only()
            return
        colocated = [m if isinstance(m, ColocatedModel) else ColocatedModel(m) for m in models]
        self._device = build_device(colocated, device or DeviceConfig())
        self.engines = self._device.engines
        self.engine = next(iter(self.engines.values()))
        self._driver = self._device
        self._report_finished_only()

    def _report_finished_only(self) -> None:
        for engine in self.engines.values():  # generate() returns whole completions, never deltas
            engine.stream_outputs = False

    def close(self) -> None:
        if self._device is not None:
            self._device.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def _engine_of(self, model: str | None) -> LLMEngine:
        if model is None:
            if len(self.engines) > 1:
                raise UnknownModelError(f"several models are loaded; name one of {sorted(self.engines)}")
            return self.engine
        if model not in self.engines:
            raise UnknownModelError(f"the model {model!r} is not loaded; available: {sorted(self.engines)}")
        return self.engines[model]

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool | None = None, model: str | Sequence[str] | None = None) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in prompt order, `n` completions each.

        `model`: one name for every prompt, or one per prompt (they then run side by side).
        """
        prompts = _prompt_list(prompts)
        params_list = _broadcast(params, len(prompts))
        names = [model] * len(prompts) if model is None or isinstance(model, str) else _names(model)
        if len(names) != len(prompts):
            raise InvalidRequestError(f"got {len(names)} model names for {len(prompts)} prompts", "model")
        engines = [self._engine_of(name) for name in names]
        # validate everything first so a bad prompt rejects the call without queueing the rest
        token_ids = [engine.prompt_token_ids_of(prompt) for engine, prompt in zip(engines, prompts)]
        for engine, ids, p in zip(engines, token_ids, params_list):
            p.validate()
            engine.check_length(len(ids), p)
        call = next(self._calls)  # ids unique per call: an interrupted call leaves none to collide with
        added: list[tuple[LLMEngine, str]] = []
        try:
            for index, (engine, prompt, p) in enumerate(zip(engines, prompts, params_list)):
                for copy in range(p.n):
                    request_id = engine.add_request(prompt, p.for_copy(copy), request_id=f"llm-{call}-{index}-{copy}",
                                                    prompt_token_ids=token_ids[index])
                    added.append((engine, request_id))
            finished = self._run(len(added), use_tqdm if use_tqdm is not None else len(added) > 8)
        except BaseException:  # Ctrl-C or a failed step: nothing of this call may stay queued
            for engine, request_id in added:
                self._abort(engine, request_id)
            raise
        return [_merge(f"llm-{call}-{prompt_index}", prompt_index, p.n, finished)
                for prompt_index, p in enumerate(params_list)]

    def _abort(self, engine: LLMEngine, request_id: str) -> None:
        if self._device is not None:
            name = next(n for n, e in self.engines.items() if e is engine)
            self._device.abort_request(name, request_id)
        else:
            engine.abort_request(request_id)

    def chat(self, messages: list[dict] | list[list[dict]],
             params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool | None = None, model: str | None = None) -> list[RequestOutput]:
        engine = self._engine_of(model)
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InvalidRequestError("messages must be a non-empty list of messages (or of conversations)", "messages")
        conversations = [messages] if isinstance(messages[0], dict) else messages
        # the template places any BOS token itself, so no special tokens are added when encoding
        prompts = [engine.tokenize(engine.apply_chat_template(c), add_special_tokens=False)
                   for c in conversations]
        return self.generate(prompts, params, use_tqdm, model)

    def _run(self, total: int, show_progress: bool) -> dict[str, RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=total, desc="generate", disable=not show_progress) as bar:
            while self._driver.has_unfinished_requests():
                for output in self._driver.step():
                    if output.finished:
                        finished[output.request_id] = output
                        bar.update(1)
        return finished


def _check_arguments(models, device, engine_kwargs: dict) -> None:
    if models is None:
        if device is not None and not isinstance(device, str):
            raise ConfigError("a DeviceConfig is for several models on one device: pass models=[...] with it "
                              "(one model takes device='cpu' or 'cuda[:N]')")
        return
    if isinstance(models, (str, EngineConfig, ColocatedModel)) or not isinstance(models, Sequence) or not models:
        raise ConfigError(f"models must be a non-empty list of EngineConfig or ColocatedModel, got {models!r}")
    if device is not None and not isinstance(device, DeviceConfig):
        raise ConfigError(f"with models=, device must be a DeviceConfig, got {device!r}")
    if engine_kwargs:  # they would be silently dropped: each model's EngineConfig carries its own
        raise ConfigError(f"with models=, set {sorted(engine_kwargs)} in each model's EngineConfig")


def _prompt_list(prompts) -> list[Prompt]:
    """One prompt (a string or a list of token ids) or a list of them, as a list of prompts."""
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InvalidRequestError(f"prompts must be a string, a list of token ids, or a non-empty list of those; "
                                  f"got {type(prompts).__name__}", "prompt")
    return list(prompts)


def _names(model) -> list[str]:
    names = list(model) if isinstance(model, (list, tuple)) else None
    if names is None or not all(isinstance(name, str) for name in names):
        raise InvalidRequestError(f"model must be a name or a list of names, got {model!r}", "model")
    return names


def _broadcast(params, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(count)]
    if isinstance(params, SamplingParams):
        return [params] * count
    if not isinstance(params, (list, tuple)) or not all(isinstance(p, SamplingParams) for p in params):
        raise InvalidRequestError(f"params must be a SamplingParams or a list of them, got {params!r}", "params")
    if len(params) != count:
        raise InvalidRequestError(f"got {len(params)} sampling params for {count} prompts", "params")
    return list(params)


def _merge(prefix: str, prompt_index: int, n: int, finished: dict[str, RequestOutput]) -> RequestOutput:
    children = [finished[f"{prefix}-{copy}"] for copy in range(n)]
    first = children[0]
    outputs = [dataclasses.replace(c.outputs[0], index=i) for i, c in enumerate(children)]
    return dataclasses.replace(first, request_id=str(prompt_index), outputs=outputs)
