"""Builds OpenAI response bodies and stream chunks from engine outputs, one choice per index."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from coserve.engine.outputs import RequestOutput


class EngineRequestError(RuntimeError):
    """The engine failed this request (for instance a failed step); the client gets a server error,
    a 503 when `unavailable` (no replica was left to take it)."""

    def __init__(self, message: str, unavailable: bool = False):
        super().__init__(message)
        self.unavailable = unavailable


@dataclass
class _Choice:
    text: str = ""
    sent: int = 0  # characters already streamed
    num_tokens: int = 0
    prompt_tokens: int = 0
    finish_reason: str | None = None
    done: bool = False


class ResponseBuilder:
    def __init__(self, model: str, chat: bool, num_prompts: int, n: int, include_usage: bool,
                 stop: list[str] | None = None):
        self.model = model
        self.chat = chat
        self.n = n
        self.include_usage = include_usage
        self.request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.choices = [_Choice() for _ in range(num_prompts * n)]
        # text that might still become part of a stop string is held back until it cannot
        self.holdback = max((len(s) for s in stop or ()), default=1) - 1

    def record(self, index: int, output: RequestOutput) -> None:
        if output.error:
            raise EngineRequestError(output.error, output.unavailable)
        choice = self.choices[index]
        completion = output.outputs[0]
        choice.text = completion.text
        choice.num_tokens = len(completion.token_ids)
        choice.prompt_tokens = len(output.prompt_token_ids)
        if output.finished:
            choice.done = True
            choice.finish_reason = _openai_finish_reason(completion.finish_reason)

    # -- whole responses -----------------------------------------------------------------------

    def usage(self) -> dict:
        prompt = sum(c.prompt_tokens for c in self.choices[::self.n])
        completion = sum(c.num_tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def final_body(self) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": c.text},
                        "finish_reason": c.finish_reason, "logprobs": None}
                       for i, c in enumerate(self.choices)]
            kind = "chat.completion"
        else:
            choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                       for i, c in enumerate(self.choices)]
            kind = "text_completion"
        return {"id": self.request_id, "object": kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    # -- streams -------------------------------------------------------------------------------

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        chunk = {"id": self.request_id, "object": kind, "created": self.created, "model": self.model,
                 "choices": choices}
        if self.include_usage:
            chunk["usage"] = usage
        return chunk

    def _choice_delta(self, index: int, text: str | None, finish_reason: str | None,
                      role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}

    def stream_start(self) -> list[dict]:
        if not self.chat:
            return []
        return [self._chunk([self._choice_delta(i, None, None, role=True)]) for i in range(len(self.choices))]

    def stream_delta(self, index: int, output: RequestOutput) -> list[dict]:
        self.record(index, output)
        choice = self.choices[index]
        end = len(choice.text) if choice.done else max(choice.sent, len(choice.text) - self.holdback)
        text = choice.text[choice.sent:end]
        choice.sent = end
        if not text and not choice.done:
            return []
        return [self._chunk([self._choice_delta(index, text, choice.finish_reason)])]

    def stream_end(self) -> list[dict]:
        if not self.include_usage:
            return []
        return [self._chunk([], self.usage())]


def _openai_finish_reason(reason: str | None) -> str | None:
    # aborted or failed choices have no OpenAI equivalent; "stop" is what clients handle best
    return {"stop": "stop", "length": "length"}.get(reason or "", "stop") if reason else None
