"""API keys for the router's public front doors (gRPC and HTTP): `Authorization: Bearer <key>`.

Only the router checks keys: it is the one public service; the others listen on loopback or a
private network. Health checks stay open so orchestrators and `hfx up` can probe without a key.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import grpc

from services.common.internal_auth import deny_handler

OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class ApiKey:
    """A client's key and the highest priority its requests may ask for (None: any)."""

    secret: str
    max_priority: int | None = None

    def __repr__(self) -> str:   # never a key in a log line or a traceback
        return f"ApiKey(<{len(self.secret)} chars>, max_priority={self.max_priority})"


def parse_key(line: str) -> ApiKey:
    """`KEY` or `KEY max_priority=N`. Raises ValueError (the message never quotes the key)."""
    secret, *options = line.split()
    max_priority = None
    for option in options:
        name, _, value = option.partition("=")
        if name != "max_priority" or not value.isdigit():
            raise ValueError(f"unknown key option {option!r}: the only one is max_priority=<integer >= 0>")
        max_priority = int(value)
    return ApiKey(secret, max_priority)


def key_line(key: ApiKey | str) -> str:
    """The key as a line of a key file (parse_key's inverse)."""
    key = _as_key(key)
    return key.secret + ("" if key.max_priority is None else f" max_priority={key.max_priority}")


def read_key_file(path: str) -> tuple[ApiKey, ...]:
    """API keys from a file, one per line as `KEY [max_priority=N]` (blank lines and # comments
    skipped): how keys reach the router without appearing in any process's command line.
    Raises ValueError."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as err:
        raise ValueError(f"cannot read API key file {path}: {err.strerror}") from None
    keys = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.strip().startswith("#"):
            try:
                keys.append(parse_key(line))
            except ValueError as err:
                raise ValueError(f"API key file {path}, line {number}: {err}") from None
    if not keys:
        raise ValueError(f"API key file {path} holds no key")
    return tuple(keys)


def bearer_token(authorization: str | None) -> str | None:
    """The key in an `Authorization: Bearer <key>` value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _as_key(key: ApiKey | str) -> ApiKey:
    return key if isinstance(key, ApiKey) else ApiKey(key)


def match_key(authorization: str | None, keys: tuple[ApiKey | str, ...]) -> ApiKey | None:
    """The configured key the header carries, or None (constant-time compare)."""
    token = bearer_token(authorization)
    if token is None:
        return None
    found = None
    # Compare against every key so the time taken does not reveal which one nearly matched.
    for key in map(_as_key, keys):
        if hmac.compare_digest(token.encode(), key.secret.encode()):
            found = key
    return found


def key_allowed(authorization: str | None, keys: tuple[ApiKey | str, ...]) -> bool:
    """True when no keys are configured or the header carries one of them."""
    return not keys or match_key(authorization, keys) is not None


def max_priority(authorization: str | None, keys: tuple[ApiKey | str, ...]) -> int | None:
    """The highest priority the caller's key allows (None: no limit, or no keys configured).
    Call after the key was checked."""
    key = match_key(authorization, keys) if keys else None
    return key.max_priority if key else None


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid key with UNAUTHENTICATED, before any servicer runs."""

    def __init__(self, keys: tuple[ApiKey | str, ...]) -> None:
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
