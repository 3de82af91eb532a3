"""OpenAI request bodies, validated strictly (a string where a number belongs is a 400, not a cast)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from coserve.sampling_params import SamplingParams

Number = StrictInt | StrictFloat


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    max_tokens: StrictInt | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None
    top_k: StrictInt | None = None
    n: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=8)] | None = None
    stop_token_ids: list[StrictInt] | None = None
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    presence_penalty: Annotated[Number, Field(ge=0, le=0)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=0, le=0)] | None = None
    user: StrictStr | None = None
    # OpenAI fields this server does not implement: a request that asks for them gets a 400 rather
    # than an answer that silently lacks them (an eval reading echoed logprobs would score garbage)
    logprobs: Any = None
    top_logprobs: Any = None
    echo: Any = None
    best_of: Any = None
    logit_bias: Any = None
    suffix: Any = None
    tools: Any = None
    tool_choice: Any = None
    response_format: Any = None

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        unused = {"logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
                  "best_of": (None, 1), "logit_bias": (None, {}), "suffix": (None, ""), "tools": (None, []),
                  "tool_choice": (None, "none"), "response_format": (None, {"type": "text"})}
        for name, harmless in unused.items():
            value = getattr(self, name)
            if not any(value is h or (type(value) is type(h) and value == h) for h in harmless):
                raise ValueError(f"{name} is not supported by this server")
        return self

    @property
    def max_tokens_given(self) -> bool:
        return self.max_tokens is not None

    def sampling_params(self, default_max_tokens: int | None) -> SamplingParams:
        max_tokens = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return SamplingParams(
            n=self.n,
            temperature=1.0 if self.temperature is None else float(self.temperature),
            top_p=1.0 if self.top_p is None else float(self.top_p),
            top_k=-1 if self.top_k is None else self.top_k,
            seed=self.seed,
            max_tokens=max_tokens,
            stop=[self.stop] if isinstance(self.stop, str) else list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[TextPart] | None = None  # these models read text only

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: StrictInt | None = None

    @property
    def max_tokens_given(self) -> bool:
        return self.max_tokens is not None or self.max_completion_tokens is not None

    def sampling_params(self, default_max_tokens: int | None) -> SamplingParams:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return super().sampling_params(default_max_tokens)
