"""The router's HTTP front door: the OpenAI-compatible API, /health and /metrics.

FastAPI on uvicorn, in the router's own asyncio loop next to the gRPC server. A thin adapter:
each handler translates the OpenAI body (services.router.oai) and calls RouterCore.generate, the
same path as gRPC (validation, admission, scheduling, tracing). No policy decisions here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common import metrics, tracing
from services.common.errors import HfxError
from services.common.pb.hfx.v1 import router_pb2
from services.router.auth import key_allowed, max_priority
from services.router.core import Placed, RouterCore
from services.router.stall import StallWatch
from services.router.http_limits import BodyLimit
from services.router.oai import requests as oai_requests
from services.router.oai.errors import ApiError, from_domain
from services.router.oai.responses import SSE_DONE, Shaper, finish_reason, sse
from services.router.oai.schema import ChatBody, CommonBody, CompletionBody

log = logging.getLogger("hfx.router.http")


@dataclass(frozen=True)
class ServedModel:
    id: str          # the checkpoint directory's name
    path: str
    max_model_len: int

    def check(self, requested: str | None) -> None:
        if requested not in (None, "", self.id, self.path):
            raise ApiError(404, f"the model {requested!r} does not exist; this server serves {self.id!r}",
                           "invalid_request_error", "model", "model_not_found")


class PlacedStream:
    """One RouterCore.generate, driven by whoever needs its next message: the handler until the
    request is placed, then the response that streams it. No task or queue sits between the
    worker's tokens and the socket."""

    def __init__(self, core: RouterCore, request: router_pb2.GenerateRequest, parent,
                 max_priority: int | None = None) -> None:
        self.request_id = ""
        self._gen = core.generate(request, parent, max_priority)

    async def wait_placed(self) -> None:
        """Returns once the request is placed; raises what RouterCore raised before that
        (validation, admission), so those still become HTTP status codes. After placement only
        in-stream errors remain, so the response can start without waiting for a token."""
        item = await self._gen.__anext__()
        if not isinstance(item, Placed):
            raise RuntimeError("the request streamed before it was placed")
        self.request_id = item.request_id

    async def next(self) -> router_pb2.GenerateResponse | None:
        """The next message, None at the end; raises what RouterCore raised."""
        try:
            item = await self._gen.__anext__()
        except StopAsyncIteration:
            return None
        if isinstance(item, Placed):
            raise RuntimeError("the request was placed twice")
        return item

    async def aclose(self) -> None:
        """Ends the request (aborting it on the worker if it still runs)."""
        await self._gen.aclose()


class SseResponse(Response):
    """Server-sent events written straight to the ASGI `send`, one write per event.

    Starlette's StreamingResponse costs ~30 us more per event (a task group and its channels);
    here a disconnect is noticed by one waiter on `receive` that cancels the writer, and the
    event source is closed in every case, which stops the request on its worker."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], source: PlacedStream, headers: dict[str, str],
                 stalls: StallWatch) -> None:
        # As StreamingResponse does: no body attribute, so no content-length header.
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._events = events
        self._source = source
        self._stalls = stalls   # a client that stops reading ends its request (services/router/stall.py)

    async def __call__(self, scope, receive, send) -> None:
        writer = asyncio.current_task()
        if writer is None:
            raise RuntimeError("an ASGI app runs in a task")

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            writer.cancel()

        watcher = asyncio.create_task(watch_disconnect())
        guard = self._stalls.guard("http")
        try:
            with guard:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                ended = False
                async for event in self._events:
                    guard.writing()
                    # [DONE] is the last event (_events): the body ends with it, in the same write.
                    ended = event.endswith(SSE_DONE)
                    await send({"type": "http.response.body", "body": event, "more_body": not ended})
                    guard.wrote()
                if not ended:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not (watcher.done() or guard.stalled):
                raise  # cancelled from outside (server shutdown), not by a client that left or stopped reading
        finally:
            watcher.cancel()
            await self._source.aclose()


def render_chat(core: RouterCore):
    """The model's own chat template, applied by its tokenizer."""

    def render(messages: list[dict]) -> list[int]:
        hf = core.tokenizer.hf
        if not getattr(hf, "chat_template", None):
            raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages")
        try:
            return list(hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))
        except Exception as err:  # jinja raises for conversations the template refuses
            raise ApiError(400, f"chat template: {err}", param="messages") from None

    return render


async def _events(relay: PlacedStream, shaper: Shaper, include_usage: bool):
    """SSE events, one write each; a failure mid-stream becomes one error event, then the stream
    ends. The finish event, the usage event and [DONE] leave as one write (with the body's end:
    SseResponse), not three or four: each write is a socket send, the router's largest cost
    per token (issue 9, thirteenth session)."""
    tail = b""
    try:
        item = await relay.next()
        while item is not None:
            if item.HasField("delta"):
                yield tail + shaper.delta_event(item.delta.text, item.delta.token_ids)
                tail = b""
            else:
                tail += sse(shaper.chunk("", [], finish_reason(item.final)))
                if include_usage:
                    tail += sse(shaper.usage_chunk(item.final))
            item = await relay.next()
        yield tail + SSE_DONE
    except HfxError as err:
        yield tail + sse(from_domain(err, shaper.chat).body())
    finally:
        await relay.aclose()  # also when the client went away: stops the worker's decoding


async def _collect(relay: PlacedStream) -> tuple[str, list[int], router_pb2.FinalResult]:
    text, ids, final = [], [], router_pb2.FinalResult()
    try:
        item = await relay.next()
        while item is not None:
            if item.HasField("delta"):
                text.append(item.delta.text)
                ids.extend(item.delta.token_ids)
            else:
                final = item.final
            item = await relay.next()
    finally:
        await relay.aclose()
    return "".join(text), ids, final


async def _respond(core: RouterCore, model: ServedModel, body: CommonBody, req: router_pb2.GenerateRequest,
                   request: Request, chat: bool, hints: oai_requests.SloHints) -> Response:
    cap = max_priority(request.headers.get("authorization"), core.config.api_keys)
    relay = PlacedStream(core, req, tracing.extract_context(dict(request.headers)), cap)
    try:
        await relay.wait_placed()  # validation and admission errors surface here, before any byte is sent
    except HfxError as err:
        await relay.aclose()
        raise from_domain(err, chat, hints.header_fields()) from None
    except BaseException:
        await relay.aclose()
        raise
    prefix = "chatcmpl-" if chat else "cmpl-"
    shaper = Shaper(chat, prefix + relay.request_id, model.id, int(time.time()), body.return_token_ids)
    headers = {"x-hfx-request-id": relay.request_id}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SseResponse(_events(relay, shaper, include_usage), relay, headers, core.stalls)
    text, ids, final = await _collect(relay)
    return JSONResponse(shaper.whole(text, ids, final), headers=headers)


def _hints(request: Request, body: CommonBody) -> oai_requests.SloHints:
    return oai_requests.merge_hints(oai_requests.parse_headers(request.headers), body.hfx, body.user)


def create_app(core: RouterCore) -> FastAPI:
    api_keys = core.config.api_keys
    model = ServedModel(Path(core.config.model).name, core.config.model, core.tokenizer.max_model_len)
    app = FastAPI(title="HFX router", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=core.config.max_body_bytes)   # inner: before routing and auth
    app.add_middleware(_CountResponses)                                   # outer: counts the 413s too
    _install_error_handlers(app)

    async def require_key(request: Request) -> None:
        if not key_allowed(request.headers.get("authorization"), api_keys):
            raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", None, "invalid_api_key")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(require_key)])
    async def models() -> dict:
        return {"object": "list", "data": [{
            "id": model.id, "object": "model", "created": 0, "owned_by": "hfx", "root": model.path,
            "max_model_len": model.max_model_len,
        }]}

    @app.post("/v1/completions", dependencies=[Depends(require_key)])
    async def completions(body: CompletionBody, request: Request) -> Response:
        model.check(body.model)
        hints = _hints(request, body)
        req = oai_requests.completion_request(body, hints, request.headers.get(oai_requests.HEADER_REQUEST_ID, ""))
        return await _respond(core, model, body, req, request, False, hints)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)])
    async def chat_completions(body: ChatBody, request: Request) -> Response:
        model.check(body.model)
        hints = _hints(request, body)
        args = (body, hints, render_chat(core), core.config.max_prompt_bytes,
                request.headers.get(oai_requests.HEADER_REQUEST_ID, ""))
        if sum(len(str(m.content or "")) for m in body.messages) > core.config.inline_tokenize_chars:
            req = await asyncio.to_thread(oai_requests.chat_request, *args)   # rendering off the event loop
        else:
            req = oai_requests.chat_request(*args)
        return await _respond(core, model, body, req, request, True, hints)

    return app


def _install_error_handlers(app: FastAPI) -> None:
    def reply(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return reply(err)

    @app.exception_handler(HfxError)
    async def domain_error(request: Request, err: HfxError) -> JSONResponse:
        return reply(from_domain(err, chat=request.url.path.endswith("/chat/completions")))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = None if first.get("type") == "json_invalid" else ".".join(loc) or None
        return reply(ApiError(400, f"{param or 'body'}: {first.get('msg', 'invalid request body')}",
                              "invalid_request_error", param, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return reply(ApiError(err.status_code, str(err.detail), "invalid_request_error", None, None,
                              dict(err.headers or {})))


class _CountResponses:
    """ASGI middleware counting responses by route template and status (bounded labels)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                metrics.HTTP_RESPONSES.labels(getattr(route, "path", "unmatched"), str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        # The router process owns SIGTERM/SIGINT and stops both servers itself.
        yield


@dataclass
class HttpServer:
    server: uvicorn.Server
    task: asyncio.Task
    port: int

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.gather(self.task, return_exceptions=True)


async def start(app: FastAPI, host: str, port: int, startup_timeout_s: float = 10.0,
                tls: tuple[str, str] | None = None) -> HttpServer:
    """Serves `app` in this loop; returns once listening (port 0 picks a free one). `tls`:
    (certificate chain file, private key file), PEM: HTTPS."""
    cert, key = tls or (None, None)
    config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None, access_log=False,
                            timeout_graceful_shutdown=2, ssl_certfile=cert, ssl_keyfile=key)
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            task.cancel()
            raise OSError(f"HTTP server did not start on {host}:{port}")
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return HttpServer(server, task, bound)
