"""Domain errors. Services raise these; one interceptor (grpcutil) turns them into gRPC statuses."""

from __future__ import annotations

import grpc


class HfxError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class InvalidArgument(HfxError):
    """Bad input from a client; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Rejected(HfxError):
    """Admission said no; the client may retry after retry_after_ms."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, reason: str, retry_after_ms: float) -> None:
        super().__init__(f"rejected by admission: {reason}")
        self.reason = reason
        self.retry_after_ms = retry_after_ms

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after-ms", f"{self.retry_after_ms:.0f}"),)


class Unavailable(HfxError):
    """No capacity, or a dependency (scheduler, worker) failed; safe for the client to retry,
    after retry_after_ms."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after_ms: float = 1000.0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after-ms", f"{self.retry_after_ms:.0f}"),)


class PermissionDenied(HfxError):
    """The caller is known but may not do this (e.g. a priority above its API key's limit)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(HfxError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(HfxError):
    """The call is valid but not in this state (e.g. loading weights into a worker that has them)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
