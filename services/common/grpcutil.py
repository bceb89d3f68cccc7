"""gRPC plumbing shared by every service: server set-up, the error interceptor, channels.

Every server gets health checking and reflection; every client call made through this module's
helpers carries a timeout and the current trace context.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Awaitable, Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import internal_auth, tracing
from services.common.errors import HfxError

log = logging.getLogger(__name__)

# Generous enough for 1 MiB+ prompts given as token ids; bounded so one client can't exhaust memory.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Keepalive, agreed on both ends: clients ping every CLIENT_PING_MS, also with no call open (a
# long-lived Session or Connect stream may carry nothing for minutes while a prefill runs), and
# servers accept pings that often. gRPC's server defaults (no pings without calls, at most one
# per 5 minutes) answer such a client with GOAWAY "too_many_pings" and break its streams.
CLIENT_PING_MS = 10_000
CONNECT_TIMEOUT_MS = 5_000
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", CLIENT_PING_MS),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A peer that restarts (the scheduler, a worker) is back within a second or two: reconnect
    # on that scale, not on gRPC's default backoff that grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Not the reconnect pace but the deadline of one connection attempt (gRPC's "minimum connect
    # timeout"): a peer that accepted the TCP connection must send its HTTP/2 SETTINGS by then, or
    # the attempt fails and every call without wait_for_ready fails with it (UNAVAILABLE). At 100 ms
    # a busy 2-core machine missed it: a vLLM standby just handed out, its process stalled for a
    # moment, failed a fresh call with "connection attempt timed out before receiving SETTINGS
    # frame". A dead peer refuses at once, so this long bound costs a restart nothing.
    ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
]
_SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", CLIENT_PING_MS // 2),
    ("grpc.http2.min_ping_interval_without_data_ms", CLIENT_PING_MS // 2),
    # The server pings quiet clients too, so a peer that vanished (no FIN) is noticed.
    ("grpc.keepalive_time_ms", 3 * CLIENT_PING_MS),
    ("grpc.keepalive_timeout_ms", 10_000),
]


async def _abort_with(context: grpc.aio.ServicerContext, err: Exception) -> None:
    if isinstance(err, HfxError):
        context.set_trailing_metadata(err.trailing_metadata())
        await context.abort(err.code, err.message)
    log.exception("unhandled error in servicer")
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to status codes in one place, for unary and server-streaming methods."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request, context):
                try:
                    return await inner_uu(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as err:
                    await _abort_with(context, err)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream and inspect.iscoroutinefunction(handler.unary_stream):
            inner_writer = handler.unary_stream   # streams with context.write (it can bound each write)

            async def unary_stream_writer(request, context):
                try:
                    await inner_writer(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as err:
                    await _abort_with(context, err)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream_writer, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):
                try:
                    async for item in inner_us(request, context):
                        yield item
                except grpc.aio.AbortError:
                    raise
                except Exception as err:
                    await _abort_with(context, err)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


def make_server(
    register: Iterable[tuple[Callable[[Any, grpc.aio.Server], None], Any]],
    service_names: Iterable[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    internal: bool = True,
) -> tuple[grpc.aio.Server, health.HealthServicer]:
    """A grpc.aio server with our interceptor, health checking and reflection.

    `register` pairs each generated `add_XServicer_to_server` with its servicer; `interceptors`
    run before the error interceptor (e.g. the router's API-key check). An `internal` service
    requires the mesh's internal token when this process has one (services/common/internal_auth.py).
    """
    required = internal_auth.token() if internal else None
    guard = [internal_auth.RequireToken(required)] if required else []
    server = grpc.aio.server(
        interceptors=[*guard, *interceptors, ErrorInterceptor()],
        options=_SERVER_OPTIONS,
    )
    for add, servicer in register:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return server, health_servicer


async def set_serving(health_servicer, service_names: Iterable[str], serving: bool = True) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_names]:
        await health_servicer.set(name, status)


def aio_channel(address: str) -> grpc.aio.Channel:
    """A channel to another HFX service; it presents the internal token when there is one."""
    value = internal_auth.token()
    interceptors = internal_auth.aio_interceptors(value) if value else None
    return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS, interceptors=interceptors)


class StubCache:
    """One stub (and channel) per address, made on first use: `StubCache(WorkerStub)[address]`."""

    def __init__(self, stub_class: Callable[[grpc.aio.Channel], Any]) -> None:
        self._stub_class = stub_class
        self._stubs: dict[str, Any] = {}

    def __getitem__(self, address: str) -> Any:
        if address not in self._stubs:
            self._stubs[address] = self._stub_class(aio_channel(address))
        return self._stubs[address]


class Background:
    """Calls made off the caller's path (each bounded by its own timeout): keeps a reference to
    every task until it ends, so none is garbage-collected mid-flight; `drain` awaits them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        await asyncio.gather(*self._tasks)


def outbox_call(method: Callable[[Any], Any], merge: Callable[[Any, Any], None] | None = None) -> tuple[Any, asyncio.Queue]:
    """Opens a bidi-streaming call whose requests are what is put on the returned queue (None
    ends them). With `merge(into, more)`, messages queued while a write was in flight leave
    folded into one."""
    outbox: asyncio.Queue = asyncio.Queue()

    async def requests():
        while (msg := await outbox.get()) is not None:
            while merge is not None and not outbox.empty():
                more = outbox.get_nowait()
                if more is None:
                    yield msg
                    return
                merge(msg, more)
            yield msg

    return method(requests()), outbox


def sync_channel(address: str) -> grpc.Channel:
    """The blocking twin of aio_channel (tools, tests, `hfx` commands)."""
    channel = grpc.insecure_channel(address, options=_CHANNEL_OPTIONS)
    value = internal_auth.token()
    return grpc.intercept_channel(channel, internal_auth.PresentToken(value)) if value else channel


def outgoing_metadata(*extra: tuple[str, str], context=None) -> tuple[tuple[str, str], ...]:
    """Metadata for a call made now: the W3C trace context (of `context`, default the current
    span), plus extras."""
    return tuple(tracing.inject_metadata(context).items()) + extra


def bind(server: grpc.aio.Server, host: str, port: int, tls: tuple[str, str] | None = None) -> int:
    """`tls`: (certificate chain file, private key file), PEM; None: plain text."""
    if tls:
        cert, key = (open(path, "rb").read() for path in tls)
        bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([(key, cert)]))
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC server to {host}:{port}")
    return bound
