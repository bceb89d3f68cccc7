"""API keys for the router's public front doors (gRPC and HTTP): `Authorization: Bearer <key>`.

Only the router checks keys: it is the one public service; the others listen on loopback or a
private network. Health checks stay open so orchestrators and `hfx up` can probe without a key.
"""

from __future__ import annotations

import hmac

import grpc

from services.common.internal_auth import deny_handler

OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)


def read_key_file(path: str) -> tuple[str, ...]:
    """API keys from a file, one per line (blank lines and # comments skipped): how keys reach
    the router without appearing in any process's command line. Raises ValueError."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read API key file {path}: {err.strerror}") from None
    keys = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ValueError(f"API key file {path} holds no key")
    return keys


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
    return deny_handler(handler, grpc.StatusCode.UNAUTHENTICATED, _DENIED)
