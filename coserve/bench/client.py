"""One streaming request to an OpenAI-compatible server, timed chunk by chunk."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from coserve.metrics import RequestRecord

CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETIONS_ENDPOINT = "/v1/completions"
ENDPOINTS = (COMPLETIONS_ENDPOINT, CHAT_ENDPOINT)


def request_body(endpoint: str, model: str, prompt: str, max_tokens: int, ignore_eos: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0.0,  # greedy, so reruns generate the same text
        "stream": True,
        "stream_options": {"include_usage": True},  # the final chunk then carries exact token counts
    }
    if endpoint == CHAT_ENDPOINT:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM extension: generate exactly max_tokens
    return body


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text a completions or chat chunk carries ('' for role-only, usage-only or final chunks)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        delta = choice["delta"] or {}
        return delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
    return choice.get("text") or ""


async def stream_request(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                         record: RequestRecord, clock: Callable[[], float]) -> RequestRecord:
    """Send `body`, read its server-sent events, and fill `record` in place (errors included)."""
    stream = _Stream()
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                record.error = f"HTTP {response.status}: {(await response.text())[:500]}"
            else:
                await _read_events(response, record, stream, clock)
    except Exception as exc:  # a benchmark reports a broken request; it never aborts the run for one
        record.error = f"{type(exc).__name__}: {exc}".rstrip(": ")
    record.end_time = clock()
    _settle(record, stream)
    return record


@dataclass
class _Stream:
    """What the events said besides text: whether the stream closed properly, and how it ended."""

    done: bool = False  # the server sent `data: [DONE]`; a finished answer's last event
    finish_time: float | None = None  # arrival of the first chunk with a finish_reason
    usage: dict[str, Any] | None = None


async def _read_events(response: aiohttp.ClientResponse, record: RequestRecord, stream: _Stream,
                       clock: Callable[[], float]) -> None:
    async for raw_line in response.content:
        arrived = clock()  # before parsing, so JSON decoding does not count as latency
        line = raw_line.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, ': keep-alive' comments, event names
        data = line[len(b"data:"):].strip()
        if data == b"[DONE]":
            stream.done = True
            return
        chunk = json.loads(data)
        if "error" in chunk:
            record.error = f"stream error: {json.dumps(chunk['error'])[:500]}"
            return
        if chunk_text(chunk):
            record.chunk_times.append(arrived)
        if stream.finish_time is None and any(c.get("finish_reason") for c in chunk.get("choices") or []):
            stream.finish_time = arrived
        stream.usage = chunk.get("usage") or stream.usage


def _settle(record: RequestRecord, stream: _Stream) -> None:
    # A server that died mid-answer sends neither; some servers (transformers serve) end a finished
    # answer with its finish_reason and no [DONE], so either one counts.
    if not record.error and not stream.done and stream.finish_time is None:
        record.error = "the stream closed before a finish_reason or data: [DONE]"
    if not record.error and not record.chunk_times and stream.finish_time is None:
        record.error = "the stream ended without any text or finish_reason"  # nothing to time a token by
    record.success = not record.error
    # An empty answer (the first token was end-of-sequence) has its first token when it finished.
    record.first_token_time = record.chunk_times[0] if record.chunk_times else stream.finish_time
    usage = stream.usage or {}
    # Without usage the prompt length is the requested one and every text chunk counts as a token.
    record.prompt_tokens = usage.get("prompt_tokens") or record.input_len
    completion_tokens = usage.get("completion_tokens")
    record.output_tokens = len(record.chunk_times) if completion_tokens is None else completion_tokens
