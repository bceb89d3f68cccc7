"""Internal credentials: one shared token that every HFX process presents to the others, in gRPC
metadata `x-hfx-internal`, and that the internal services (scheduler, scaler, workers) require.
The router, the one public service, checks its users' API keys instead (services/router/auth.py)
and presents the token on its own calls inward.

The token lives in a file (mode 0600) named by HFX_INTERNAL_TOKEN_FILE; `hfx up` makes one per
cluster under its home, compose and Kubernetes mount one as a secret. It is never on a command
line. With no token configured the mesh is open, as on a developer's loopback before this.
Health checks and reflection stay open, so orchestrators can probe.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
from pathlib import Path

import grpc

TOKEN_FILE_ENV = "HFX_INTERNAL_TOKEN_FILE"
# Redis's password is a second secret of the same kind (a file named by an environment variable),
# so a Redis the cluster does not own (`--redis-url`, compose, Kubernetes) can have its own.
REDIS_PASSWORD_FILE_ENV = "HFX_REDIS_PASSWORD_FILE"
REDIS_PASSWORD_FILE_NAME = "redis-password"
METADATA_KEY = "x-hfx-internal"
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
TOKEN_FILE_NAME = "internal-token"


@functools.lru_cache(maxsize=8)
def _read(path: str, version: tuple[int, int]) -> str:
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"secret file is empty: {path}")
    return token


def _secret(env: str) -> str | None:
    path = os.environ.get(env)
    if not path:
        return None
    st = os.stat(path)   # a new cluster in the same home writes a new secret: read it again
    return _read(path, (st.st_mtime_ns, st.st_ino))


def token() -> str | None:
    """This process's internal token, or None when the mesh runs without one."""
    return _secret(TOKEN_FILE_ENV)


def redis_password() -> str | None:
    """The password this process gives Redis, or None (none, or one inside the Redis URL)."""
    return _secret(REDIS_PASSWORD_FILE_ENV)


def hello_fields() -> dict:
    """What a raw (non-gRPC) peer connection presents in its first frame: the token, if any.
    Used by the weight and KV byte streams between workers, which gRPC interceptors do not see."""
    value = token()
    return {"token": value} if value else {}


def hello_allowed(hello: dict) -> bool:
    """True when this process requires no token or `hello` presents the right one."""
    expected = token()
    if expected is None:
        return True
    presented = hello.get("token")
    return isinstance(presented, str) and hmac.compare_digest(presented.encode(), expected.encode())


DENIED_HELLO = "missing or wrong internal credentials (the cluster's internal token)"


def write_token_file(path: Path) -> Path:
    """A fresh random token in `path`, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    os.chmod(path, 0o600)
    return path


def use_token_file(path: Path, env: str = TOKEN_FILE_ENV) -> None:
    """Present the secret in `path` (the internal token, or with `env` Redis's password) on this
    process's calls, and its children's."""
    os.environ[env] = str(path)


def present_home_secrets(home: Path) -> None:
    """A process run beside the local cluster recorded under `home` (`hfx status`, a benchmark)
    presents its internal token and Redis password, where `home` has them and the environment
    names none already."""
    for name, env in ((TOKEN_FILE_NAME, TOKEN_FILE_ENV), (REDIS_PASSWORD_FILE_NAME, REDIS_PASSWORD_FILE_ENV)):
        if (home / name).exists() and not os.environ.get(env):
            use_token_file(home / name, env)


def forget_token_file(path: Path, env: str = TOKEN_FILE_ENV) -> None:
    """Stop presenting the secret in `path` (its cluster is going away), if this process did."""
    if os.environ.get(env) == str(path):
        del os.environ[env]


def deny_handler(handler, code: grpc.StatusCode, message: str):
    """A handler of the same shape as `handler` that only refuses the call."""

    async def unary(request, context):
        await context.abort(code, message)

    async def stream(request, context):
        await context.abort(code, message)
        yield  # pragma: no cover  (makes this an async generator, as streaming handlers must be)

    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)


_DENIED = f"missing or wrong internal credentials: this is an internal HFX service (metadata {METADATA_KEY!r})"


class RequireToken(grpc.aio.ServerInterceptor):
    """Refuses calls without the internal token with UNAUTHENTICATED, before any servicer runs."""

    def __init__(self, expected: str) -> None:
        self._expected = expected.encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_GRPC_PREFIXES):
            return handler
        presented = dict(handler_call_details.invocation_metadata or ()).get(METADATA_KEY, "")
        if hmac.compare_digest(presented.encode(), self._expected):
            return handler
        return deny_handler(handler, grpc.StatusCode.UNAUTHENTICATED, _DENIED)


def _with_token(metadata, value: str):
    return tuple(metadata or ()) + ((METADATA_KEY, value),)


class _AioToken:
    def __init__(self, value: str) -> None:
        self._value = value

    def _details(self, details):
        return details._replace(metadata=_with_token(details.metadata, self._value))


# grpc.aio files each interceptor under the first call type it is an instance of, so one class
# per call type.
class _AioUnaryUnary(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _AioUnaryStream(_AioToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _AioStreamUnary(_AioToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _AioStreamStream(_AioToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def aio_interceptors(value: str) -> list:
    """Interceptors that add the internal token to every call of an aio channel."""
    return [cls(value) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)]


class PresentToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """The same for a blocking channel (tools, tests, `hfx` commands)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def _details(self, details):
        return _Details(details.method, details.timeout, _with_token(details.metadata, self._value),
                        details.credentials, getattr(details, "wait_for_ready", None),
                        getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression) -> None:
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression
