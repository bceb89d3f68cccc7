"""The worker's end of Worker.Session: many requests of one router over one stream.

Each started request runs as its own task over the engine; whatever the tasks produce is queued
and sent as one SessionBatch once the tasks woken by the same engine step have all added theirs.
So a step that advances N of this router's requests costs one message, not N. With
`coalesce_s` > 0, a batch holding only further tokens of requests that already streamed waits
until `coalesce_s` after the previous batch, so consecutive engine steps share a message too,
and a request's tokens from those steps share one chunk (so the router writes one event); a
first token, a request's end or an error goes at once. An abort, or the router closing the
stream, cancels the request's task; the engine aborts it in its own `finally`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable

from services.common import chunks, tracing
from services.common.errors import HfxError
from services.common.pb.hfx.v1 import worker_pb2

log = logging.getLogger("hfx.worker.session")

# (request, parent trace context) -> the request's chunks; WorkerServicer.run
RunRequest = Callable[[worker_pb2.WorkerGenerateRequest, object], AsyncIterator[worker_pb2.WorkerChunk]]


def error_chunk(request_id: str, err: BaseException) -> worker_pb2.WorkerChunk:
    """The chunk that ends a request which failed here, with the status Generate would have used."""
    if isinstance(err, HfxError):
        code, message = err.code.value[0], err.message
    else:
        code, message = 13, f"internal error: {type(err).__name__}: {err}"  # INTERNAL
    return worker_pb2.WorkerChunk(request_id=request_id, finished=True, error_code=code, error_message=message)


class WorkerSession:
    def __init__(self, run: RunRequest, coalesce_s: float = 0.0) -> None:
        self._run = run
        self._coalesce_s = coalesce_s
        self._out: list[worker_pb2.WorkerChunk] = []
        self._urgent = False                     # _out holds a first token, an end or an error
        self._streamed: set[str] = set()         # requests that have sent a chunk
        self._held: dict[str, worker_pb2.WorkerChunk] = {}  # each request's chunk in _out
        self._timer: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self._tasks: dict[str, asyncio.Task] = {}
        self._reading = True

    async def serve(self, requests: AsyncIterator[worker_pb2.SessionRequest]) -> AsyncIterator[worker_pb2.SessionBatch]:
        loop = asyncio.get_running_loop()
        reader = asyncio.create_task(self._read(requests))
        last_sent = float("-inf")
        try:
            while self._reading or self._tasks or self._out:
                await self._ready.wait()
                # The requests woken by the same engine step are queued behind the first one:
                # one more pass of the loop lets them all add their chunks to this batch.
                await asyncio.sleep(0)
                self._ready.clear()
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if not self._out:
                    continue
                wait_s = last_sent + self._coalesce_s - loop.time()
                if not self._urgent and wait_s > 0 and self._reading:
                    self._timer = loop.call_later(wait_s, self._fire)
                    continue
                batch, self._out, self._urgent = self._out, [], False
                self._held.clear()
                last_sent = loop.time()
                yield worker_pb2.SessionBatch(chunks=batch)
        finally:
            if self._timer is not None:
                self._timer.cancel()
            reader.cancel()
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _read(self, requests: AsyncIterator[worker_pb2.SessionRequest]) -> None:
        try:
            async for msg in requests:
                op = msg.WhichOneof("op")
                if op == "start":
                    self._start(msg.start, tracing.extract_context(dict(msg.trace_context)))
                elif op == "abort_request_id":
                    task = self._tasks.pop(msg.abort_request_id, None)
                    if task is not None:
                        task.cancel()
        finally:
            # The router closed its side (or went away): nothing it started is wanted any more.
            self._reading = False
            for task in self._tasks.values():
                task.cancel()
            self._ready.set()

    def _start(self, request: worker_pb2.WorkerGenerateRequest, parent) -> None:
        rid = request.request_id
        if rid in self._tasks:
            self._emit(error_chunk(rid, HfxError(f"request_id: {rid!r} is already running in this session")))
            return
        self._tasks[rid] = asyncio.create_task(self._pump(rid, request, parent))

    async def _pump(self, rid: str, request: worker_pb2.WorkerGenerateRequest, parent) -> None:
        try:
            async for chunk in self._run(request, parent):
                chunk.request_id = rid
                self._emit(chunk)
        except asyncio.CancelledError:
            pass  # aborted by the router: it no longer listens for this request
        except Exception as err:  # noqa: BLE001 - every failure ends this request only, with its status
            if not isinstance(err, HfxError):
                log.exception("request %s failed", rid)
            self._emit(error_chunk(rid, err))
        finally:
            if self._tasks.get(rid) is asyncio.current_task():
                del self._tasks[rid]
            self._streamed.discard(rid)
            self._ready.set()

    def _fire(self) -> None:
        self._timer = None
        self._ready.set()

    def _emit(self, chunk: worker_pb2.WorkerChunk) -> None:
        held = self._held.get(chunk.request_id)
        if held is not None and chunks.can_merge(held, chunk):
            # A later step of a request already in this batch: one chunk, so one event downstream.
            chunks.merge_into(held, chunk)
        else:
            self._out.append(chunk)
            self._held[chunk.request_id] = chunk
        if chunk.finished or chunk.request_id not in self._streamed:
            self._urgent = True
            self._streamed.add(chunk.request_id)
        if self._urgent or self._timer is None:
            self._ready.set()
