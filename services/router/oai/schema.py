"""Request bodies of the OpenAI completions and chat APIs (the fields HFX understands).

Unknown fields are accepted and ignored, as OpenAI clients send many optional ones; fields whose
non-default values HFX cannot honour are declared here and refused in oai.requests.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class HfxExtension(BaseModel):
    """The body extension `"hfx": {...}`: per-request SLOs and class (headers take precedence)."""

    model_config = ConfigDict(extra="forbid")
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    priority: int | None = None
    task_class: str | None = None
    tenant: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class CommonBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None   # unset: 1.0, OpenAI's default
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    repetition_penalty: float | None = 1.0       # vLLM extension
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False                      # vLLM extension
    return_token_ids: bool = False                # vLLM extension: output token ids per choice/chunk
    user: str | None = None                       # becomes the tenant
    hfx: HfxExtension | None = None


class CompletionBody(CommonBody):
    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatBody(CommonBody):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None
