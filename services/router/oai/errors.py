"""Errors in OpenAI's JSON shape, and the mapping from HFX domain errors to HTTP statuses."""

from __future__ import annotations

import math

from services.common.errors import HfxError, InvalidArgument, NotFound, PermissionDenied, Rejected, Unavailable

# GenerateRequest field names (what RouterCore's validation names) -> OpenAI body parameters.
_PARAMS = {
    "sampling.max_tokens": "max_tokens", "sampling.temperature": "temperature", "sampling.top_p": "top_p",
    "sampling.stop": "stop", "prompt.text": "prompt", "prompt.token_ids": "prompt", "prompt": "prompt",
    "slo.ttft_ms": "hfx.ttft_ms", "slo.tpot_ms": "hfx.tpot_ms", "priority": "hfx.priority",
    "task_class": "hfx.task_class", "client_request_id": "x-request-id",
}


class ApiError(Exception):
    """An HTTP error response: status, OpenAI error object fields, extra headers."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(param: str, problem: str) -> ApiError:
    """400 naming the offending parameter (or header) first, as RouterCore's messages do."""
    return ApiError(400, f"{param}: {problem}", "invalid_request_error", param, "invalid_value")


def retry_after_s(retry_after_ms: float) -> int:
    """HTTP Retry-After is whole seconds: round up, and never tell a client to retry at once."""
    if not math.isfinite(retry_after_ms) or retry_after_ms <= 0:
        return 1
    return max(1, math.ceil(retry_after_ms / 1000.0))


def from_domain(err: HfxError, chat: bool = False, header_fields: dict[str, str] | None = None) -> ApiError:
    """`header_fields` names the header a GenerateRequest field came from, so errors name it."""
    if isinstance(err, InvalidArgument):
        header = (header_fields or {}).get(err.field)
        if header is not None:
            return ApiError(400, f"{header}: {err.message}", "invalid_request_error", header, "invalid_value")
        param = _PARAMS.get(err.field, err.field)
        if chat and param == "prompt":
            param = "messages"
        return ApiError(400, err.message, "invalid_request_error", param, "invalid_value")
    if isinstance(err, Rejected):
        return ApiError(429, err.message, "rate_limit_error", None, "rejected_by_admission",
                        {"Retry-After": str(retry_after_s(err.retry_after_ms))})
    if isinstance(err, Unavailable):
        return ApiError(503, err.message, "service_unavailable_error", None, "unavailable",
                        {"Retry-After": str(retry_after_s(err.retry_after_ms))})
    if isinstance(err, PermissionDenied):
        return ApiError(403, err.message, "permission_error", None, "permission_denied")
    if isinstance(err, NotFound):
        return ApiError(404, err.message, "invalid_request_error", None, "not_found")
    return ApiError(500, err.message, "internal_error", None, "internal_error")
