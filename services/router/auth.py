"""API keys for the router's public front doors (gRPC and HTTP): `Authorization: Bearer <key>`.

Only the router checks keys: it is the one public service; the others listen on loopback or a
private network. Health checks stay open so orchestrators and `hfx up` can probe without a key.
"""

from __future__ import annotations

import hmac

import grpc

OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)


def bearer_token(authorization: str | None) -> str | None:
    """The key in an `Authorization: Bearer <key>` value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_allowed(authorization: str | None, keys: tuple[str, ...]) -> bool:
    """True when no keys are configured or the header carries one of them (constant-time compare)."""
    if not keys:
        return True
    token = bearer_token(authorization)
    if token is None:
        return False
    # Compare against every key so the time taken does not reveal which one nearly matched.
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in keys]
    return any(matches)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid key with UNAUTHENTICATED, before any servicer runs."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_GRPC_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if key_allowed(metadata.get("authorization"), self.keys):
            return handler
        return _deny(handler)


_DENIED = "missing or invalid API key: send metadata 'authorization: Bearer <key>'"


def _deny(handler):
    """A handler of the same shape as `handler` that only refuses the call."""

    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)

    async def stream(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED)
        yield  # pragma: no cover  (makes this an async generator, as streaming handlers must be)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
