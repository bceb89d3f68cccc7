"""Router gRPC service: a thin adapter from the public Router API to RouterCore."""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.common import grpcutil, runtime, tracing
from services.common.errors import NotFound
from services.common.pb.hfx.v1 import router_pb2, router_pb2_grpc, scheduler_pb2_grpc
from services.router import http
from services.router.auth import ApiKeyInterceptor, max_priority
from services.router.config import RouterConfig
from services.router.core import Placed, RouterCore
from services.router.tokenizer import Tokenizer

log = logging.getLogger("hfx.router")
SERVICE_NAME = "hfx.v1.Router"


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    async def Generate(self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        metadata = context.invocation_metadata()
        parent = tracing.extract_context(metadata)
        cap = max_priority(dict(metadata or ()).get("authorization"), self.core.config.api_keys)
        source = self.core.generate(request, parent, cap)
        with self.core.stalls.guard("grpc") as guard:
            try:
                async for item in source:
                    if isinstance(item, Placed):
                        await context.send_initial_metadata((("x-hfx-request-id", item.request_id),
                                                             ("x-hfx-instance", item.instance_id)))
                    else:
                        guard.writing()
                        await context.write(item)   # blocks while the client's window is full
                        guard.wrote()
            except asyncio.CancelledError:
                if not guard.stalled:
                    raise   # the call was cancelled, or the server is stopping
            finally:
                await source.aclose()   # ends the request: on the worker and at the scheduler

    async def Abort(self, request: router_pb2.AbortRequest, context) -> router_pb2.AbortResponse:
        if not self.core.abort(request.request_id):
            raise NotFound(f"no running request {request.request_id!r}")
        return router_pb2.AbortResponse(found=True)


def build_core(config: RouterConfig) -> RouterCore:
    scheduler = scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(config.scheduler_address))
    return RouterCore(config, Tokenizer.load(config.model), scheduler)


async def serve(config: RouterConfig) -> None:
    tracing.setup("hfx-router", config.tracing)
    core = build_core(config)
    interceptors = [ApiKeyInterceptor(config.api_keys)] if config.api_keys else []
    server, health = grpcutil.make_server([(router_pb2_grpc.add_RouterServicer_to_server, RouterServicer(core))],
                                          [SERVICE_NAME], interceptors, internal=False)   # the public door
    tls = (config.tls_cert, config.tls_key) if config.tls_cert else None
    port = grpcutil.bind(server, config.host, config.port, tls)
    await server.start()
    web = None
    if config.http_port:
        web = await http.start(http.create_app(core), config.host, config.http_port, tls=tls)
        log.info("router serving %s (OpenAI API, /metrics) on %s:%d", "HTTPS" if tls else "HTTP", config.host, web.port)
    runtime.started()
    await grpcutil.set_serving(health, [SERVICE_NAME])
    log.info("router serving gRPC%s on %s:%d%s", " over TLS" if tls else "", config.host, port,
             " (API keys required)" if config.api_keys else "")
    await runtime.stop_on_signals().wait()
    if web is not None:
        await web.stop()
    await server.stop(grace=2.0)
    await core.close()
    tracing.shutdown()
