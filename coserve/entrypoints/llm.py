"""Offline batch inference: `LLM(model=...).generate(prompts, params)` and `.chat(messages, params)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tqdm import tqdm

from coserve.engine.config import DEFAULT_MODEL, EngineConfig
from coserve.engine.llm_engine import LLMEngine
from coserve.engine.outputs import RequestOutput
from coserve.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM:
    def __init__(self, model: str = DEFAULT_MODEL, **engine_kwargs):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_kwargs))

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool | None = None) -> list[RequestOutput]:
        """Generate for every prompt; outputs come back in prompt order, `n` completions each."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = _broadcast(params, len(prompts))
        # validate everything first so a bad prompt rejects the call without queueing the rest
        token_ids = [self.engine.prompt_token_ids_of(prompt) for prompt in prompts]
        for ids, p in zip(token_ids, params_list):
            p.validate()
            self.engine.check_length(len(ids), p)
        ids = []
        for index, (prompt, p) in enumerate(zip(prompts, params_list)):
            for copy in range(p.n):
                child = p if p.n == 1 else _child_params(p, copy)
                ids.append(self.engine.add_request(prompt, child, request_id=f"llm-{index}-{copy}",
                                                   prompt_token_ids=token_ids[index]))
        finished = self._run(len(ids), use_tqdm if use_tqdm is not None else len(ids) > 8)
        return [_merge(prompt_index, p.n, finished) for prompt_index, p in enumerate(params_list)]

    def chat(self, messages: list[dict] | list[list[dict]],
             params: SamplingParams | Sequence[SamplingParams] | None = None,
             use_tqdm: bool | None = None) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        # the template places any BOS token itself, so no special tokens are added when encoding
        prompts = [self.engine.tokenize(self.engine.apply_chat_template(c), add_special_tokens=False)
                   for c in conversations]
        return self.generate(prompts, params, use_tqdm)

    def _run(self, total: int, show_progress: bool) -> dict[str, RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        with tqdm(total=total, desc="generate", disable=not show_progress) as bar:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        bar.update(1)
        return finished


def _broadcast(params, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(count)]
    if isinstance(params, SamplingParams):
        return [params] * count
    if len(params) != count:
        raise ValueError(f"got {len(params)} sampling params for {count} prompts")
    return list(params)


def _child_params(params: SamplingParams, index: int) -> SamplingParams:
    seed = None if params.seed is None else params.seed + index
    return dataclasses.replace(params, n=1, seed=seed)


def _merge(prompt_index: int, n: int, finished: dict[str, RequestOutput]) -> RequestOutput:
    children = [finished[f"llm-{prompt_index}-{copy}"] for copy in range(n)]
    first = children[0]
    outputs = [dataclasses.replace(c.outputs[0], index=i) for i, c in enumerate(children)]
    return dataclasses.replace(first, request_id=str(prompt_index), outputs=outputs)
