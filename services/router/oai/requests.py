"""OpenAI request body + SLO headers -> the router's GenerateRequest. Pure functions.

Range checks that the gRPC path also needs (max_tokens, temperature, context length...) stay in
RouterCore's validation; here only what is specific to the OpenAI shape is checked.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, TypeGuard

from services.common.pb.hfx.v1 import common_pb2, router_pb2
from services.router.oai.errors import bad_request
from services.router.oai.schema import ChatBody, CompletionBody, HfxExtension, CommonBody

HEADER_TTFT = "x-slo-ttft-ms"      # the names llm-d uses
HEADER_TPOT = "x-slo-tpot-ms"
HEADER_PRIORITY = "x-priority"
HEADER_CLASS = "x-task-class"
HEADER_REQUEST_ID = "x-request-id"

OPENAI_DEFAULT_TEMPERATURE = 1.0

RenderChat = Callable[[list[dict]], Sequence[int]]  # messages -> prompt token ids (the chat template)


@dataclass(frozen=True)
class SloHints:
    """Per-request SLOs and class from headers or the body extension; None takes the class default."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    priority: int | None = None
    task_class: str | None = None
    tenant: str | None = None
    from_headers: frozenset[str] = frozenset()   # which of the above came from headers

    def header_fields(self) -> dict[str, str]:
        """GenerateRequest field -> the header that set it (so validation errors name the header)."""
        return {field: header for name, field, header in _HEADER_FIELDS if name in self.from_headers}


_HEADER_FIELDS = (("ttft_ms", "slo.ttft_ms", "x-slo-ttft-ms"), ("tpot_ms", "slo.tpot_ms", "x-slo-tpot-ms"),
                  ("priority", "priority", "x-priority"), ("task_class", "task_class", "x-task-class"))


def _header_ms(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise bad_request(name, f"must be a positive number of milliseconds, got {raw!r}")
    return value


def _header_priority(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(HEADER_PRIORITY)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise bad_request(HEADER_PRIORITY, f"must be an integer >= 0, got {raw!r}")
    return value


def parse_headers(headers: Mapping[str, str]) -> SloHints:
    """SLO hints from request headers (a case-insensitive mapping, as Starlette's Headers is)."""
    task_class = headers.get(HEADER_CLASS)
    if task_class is not None and not task_class.strip():
        raise bad_request(HEADER_CLASS, "must not be empty")
    hints = SloHints(
        ttft_ms=_header_ms(headers, HEADER_TTFT), tpot_ms=_header_ms(headers, HEADER_TPOT),
        priority=_header_priority(headers), task_class=task_class.strip() if task_class else None,
    )
    present = frozenset(name for name in ("ttft_ms", "tpot_ms", "priority", "task_class")
                        if getattr(hints, name) is not None)
    return dataclasses.replace(hints, from_headers=present)


def merge_hints(headers: SloHints, body: HfxExtension | None, user: str | None) -> SloHints:
    """Headers win over the body extension: a gateway in front may set them for the client."""
    ext = body or HfxExtension()

    def pick(name: str):
        value = getattr(headers, name)
        return value if value is not None else getattr(ext, name)

    return SloHints(pick("ttft_ms"), pick("tpot_ms"), pick("priority"), pick("task_class"),
                    ext.tenant if ext.tenant is not None else user, headers.from_headers)


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _refuse_unsupported(body: CommonBody) -> None:
    if body.n not in (None, 1):
        raise bad_request("n", "only 1 is supported")
    if body.presence_penalty not in (None, 0.0):
        raise bad_request("presence_penalty", "penalties are not supported; use 0")
    if body.frequency_penalty not in (None, 0.0):
        raise bad_request("frequency_penalty", "penalties are not supported; use 0")
    if body.repetition_penalty not in (None, 1.0):
        raise bad_request("repetition_penalty", "penalties are not supported; use 1")
    if body.logit_bias:
        raise bad_request("logit_bias", "not supported")
    if body.seed is not None and not -(2**63) <= body.seed < 2**63:
        raise bad_request("seed", "must fit in a signed 64-bit integer")


def _sampling(body: CommonBody, max_tokens: int | None) -> common_pb2.SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    temperature = OPENAI_DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
    if max_tokens is not None and max_tokens <= 0:
        raise bad_request("max_tokens", f"must be > 0, got {max_tokens}")
    if max_tokens is not None and max_tokens > _INT32_MAX:
        raise bad_request("max_tokens", f"must be at most {_INT32_MAX}, got {max_tokens}")
    sampling = common_pb2.SamplingParams(
        max_tokens=max_tokens or 0, temperature=temperature, top_p=1.0 if body.top_p is None else body.top_p,
        stop=stop, ignore_eos=body.ignore_eos,
    )
    if body.seed is not None:
        sampling.seed = body.seed
    return sampling


def _apply_hints(req: router_pb2.GenerateRequest, hints: SloHints, client_request_id: str) -> None:
    if hints.ttft_ms is not None:
        req.slo.ttft_ms = hints.ttft_ms
    if hints.tpot_ms is not None:
        req.slo.tpot_ms = hints.tpot_ms
    if hints.priority is not None:
        if not _INT32_MIN <= hints.priority <= _INT32_MAX:   # the proto's int32 (>= 0 is validate's rule)
            field = HEADER_PRIORITY if "priority" in hints.from_headers else "hfx.priority"
            raise bad_request(field, f"must be between {_INT32_MIN} and {_INT32_MAX}, got {hints.priority}")
        req.priority = hints.priority
    req.task_class = hints.task_class or ""
    req.tenant = hints.tenant or ""
    req.client_request_id = client_request_id


def _is_token_ids(prompt: object) -> TypeGuard[list[int]]:
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) for t in prompt)


def _prompt(body: CompletionBody, req: router_pb2.GenerateRequest) -> None:
    prompt: object = body.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        req.text = prompt
    elif _is_token_ids(prompt):
        if not all(_INT32_MIN <= t <= _INT32_MAX for t in prompt):
            raise bad_request("prompt", "token ids must be 32-bit integers")
        req.token_ids.ids.extend(prompt)
    elif not prompt:
        raise bad_request("prompt", "must not be empty")
    else:
        raise bad_request("prompt", "one prompt per request (a string or a list of token ids)")


def completion_request(body: CompletionBody, hints: SloHints, client_request_id: str = "") -> router_pb2.GenerateRequest:
    _refuse_unsupported(body)
    if body.echo:
        raise bad_request("echo", "not supported")
    if body.logprobs:
        raise bad_request("logprobs", "not supported")
    if body.best_of not in (None, 1):
        raise bad_request("best_of", "only 1 is supported")
    if body.suffix:
        raise bad_request("suffix", "not supported")
    req = router_pb2.GenerateRequest(sampling=_sampling(body, body.max_tokens))
    _prompt(body, req)
    _apply_hints(req, hints, client_request_id)
    return req


def chat_messages(body: ChatBody, max_prompt_bytes: int) -> list[dict]:
    """Messages as the chat template expects them: content as one string (text parts joined)."""
    if not body.messages:
        raise bad_request("messages", "must not be empty")
    out, size = [], 0
    for i, msg in enumerate(body.messages):
        content = msg.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(f"messages[{i}].content", "only text content parts are supported")
                parts.append(part["text"])
            content = "".join(parts)
        size += len((content or "").encode("utf-8"))
        if size > max_prompt_bytes:
            raise bad_request("messages", f"exceed the limit of {max_prompt_bytes} bytes in all")
        out.append({"role": msg.role, "content": content or ""})
    return out


def chat_request(body: ChatBody, hints: SloHints, render: RenderChat, max_prompt_bytes: int,
                 client_request_id: str = "") -> router_pb2.GenerateRequest:
    _refuse_unsupported(body)
    if body.logprobs or body.top_logprobs:
        raise bad_request("logprobs", "not supported")
    if body.tools:
        raise bad_request("tools", "not supported")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise bad_request("response_format", "only text responses are supported")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    req = router_pb2.GenerateRequest(sampling=_sampling(body, max_tokens))
    req.token_ids.ids.extend(render(chat_messages(body, max_prompt_bytes)))
    _apply_hints(req, hints, client_request_id)
    return req
