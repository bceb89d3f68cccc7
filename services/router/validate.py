"""Validation of client requests. Pure: a request and limits in, a ValidRequest or InvalidArgument out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from services.common.domain import Sampling, Slo
from services.common.errors import InvalidArgument, PermissionDenied
from services.common.pb.hfx.v1 import router_pb2
from services.router.config import TaskClass

MAX_CLIENT_ID_CHARS = 128
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    max_model_len: int
    default_max_tokens: int
    max_prompt_bytes: int
    max_stop_strings: int


@dataclass(frozen=True)
class ValidRequest:
    prompt_token_ids: tuple[int, ...]
    sampling: Sampling
    slo: Slo
    priority: int
    task_class: str
    tenant: str
    client_request_id: str
    on_miss: str


def _positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(name, f"must be a positive number of milliseconds, got {value}")
    return value


def _prompt_ids(req: router_pb2.GenerateRequest, tokenize: Callable[[str], Sequence[int]], limits: Limits) -> tuple[int, ...]:
    kind = req.WhichOneof("prompt")
    if kind is None:
        raise InvalidArgument("prompt", "set either prompt text or token_ids")
    if kind == "text":
        if not req.text.strip():
            raise InvalidArgument("prompt.text", "must not be empty")
        size = len(req.text.encode("utf-8"))
        if size > limits.max_prompt_bytes:
            raise InvalidArgument("prompt.text", f"{size} bytes exceeds the limit of {limits.max_prompt_bytes}")
        ids = tuple(tokenize(req.text))
    else:
        ids = tuple(req.token_ids.ids)
        if not ids:
            raise InvalidArgument("prompt.token_ids", "must not be empty")
        for pos, tok in enumerate(ids):
            if not 0 <= tok < limits.vocab_size:
                raise InvalidArgument(
                    "prompt.token_ids", f"id {tok} at position {pos} is outside the vocabulary [0, {limits.vocab_size})"
                )
    if len(ids) >= limits.max_model_len:
        raise InvalidArgument(
            "prompt", f"{len(ids)} tokens leaves no room to generate in the model's context of {limits.max_model_len}"
        )
    return ids


def _sampling(req: router_pb2.GenerateRequest, prompt_tokens: int, limits: Limits) -> Sampling:
    s = req.sampling
    max_tokens = s.max_tokens if req.HasField("sampling") and s.max_tokens != 0 else limits.default_max_tokens
    if max_tokens < 0:
        raise InvalidArgument("sampling.max_tokens", f"must be > 0, got {max_tokens}")
    if prompt_tokens + max_tokens > limits.max_model_len:
        raise InvalidArgument(
            "sampling.max_tokens",
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the model's context of "
            f"{limits.max_model_len} tokens",
        )
    if not math.isfinite(s.temperature) or not 0 <= s.temperature <= 2:
        raise InvalidArgument("sampling.temperature", f"must be in [0, 2], got {s.temperature}")
    if not math.isfinite(s.top_p) or not 0 <= s.top_p <= 1:
        raise InvalidArgument("sampling.top_p", f"must be in (0, 1] (0 means 1), got {s.top_p}")
    if len(s.stop) > limits.max_stop_strings:
        raise InvalidArgument("sampling.stop", f"at most {limits.max_stop_strings} stop strings, got {len(s.stop)}")
    if any(not x or len(x) > MAX_STOP_CHARS for x in s.stop):
        raise InvalidArgument("sampling.stop", f"each stop string must have 1..{MAX_STOP_CHARS} characters")
    return Sampling(
        max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p or 1.0,
        seed=s.seed if s.HasField("seed") else None, stop=tuple(s.stop), ignore_eos=s.ignore_eos,
    )


def validate(
    req: router_pb2.GenerateRequest,
    tokenize: Callable[[str], Sequence[int]],
    classes: dict[str, TaskClass],
    limits: Limits,
    max_priority: int | None = None,
) -> ValidRequest:
    """`max_priority`: the most the caller's API key allows; a class default above it is lowered
    to it, an explicit priority above it is refused."""
    name = req.task_class or "default"
    cls = classes.get(name)
    if cls is None:
        raise InvalidArgument("task_class", f"unknown class {name!r}; known: {', '.join(sorted(classes))}")
    if len(req.client_request_id) > MAX_CLIENT_ID_CHARS:
        raise InvalidArgument("client_request_id", f"at most {MAX_CLIENT_ID_CHARS} characters")
    ttft = _positive("slo.ttft_ms", req.slo.ttft_ms) if req.slo.HasField("ttft_ms") else cls.slo.ttft_ms
    tpot = _positive("slo.tpot_ms", req.slo.tpot_ms) if req.slo.HasField("tpot_ms") else cls.slo.tpot_ms
    priority = req.priority if req.HasField("priority") else cls.priority
    if priority < 0:
        raise InvalidArgument("priority", f"must be >= 0, got {priority}")
    if max_priority is not None and priority > max_priority:
        if req.HasField("priority"):
            raise PermissionDenied(f"priority: {priority} is above this API key's limit of {max_priority}")
        priority = max_priority
    ids = _prompt_ids(req, tokenize, limits)
    return ValidRequest(
        prompt_token_ids=ids, sampling=_sampling(req, len(ids), limits), slo=Slo(ttft, tpot),
        priority=priority, task_class=name, tenant=req.tenant, client_request_id=req.client_request_id,
        on_miss=cls.on_miss,
    )
