"""The router's end of Worker.Session: one stream per worker carries every request placed there.

`Sessions[address].start(request, trace)` returns a `TokenStream` that yields the request's
chunks as the session's reader hands them over. A session that breaks (worker dead, stream
reset) fails every stream on it at once; the next start opens a new one. One watchdog per
router fails streams whose worker has been silent past the idle timeouts, so a hung worker is
noticed without a timer per token.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

import grpc

from services.common import chunks, grpcutil
from services.common.pb.hfx.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("hfx.router.sessions")
_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class StreamFailed(Exception):
    """The worker failed this request: it errored, closed the session, or went silent.
    `retryable`: the instance failed (another may serve it), not the request itself."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


# Errors that are the request's own fault: the same request fails the same way anywhere.
_REQUEST_FAULTS = {grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.FAILED_PRECONDITION.value[0],
                   grpc.StatusCode.OUT_OF_RANGE.value[0], grpc.StatusCode.ALREADY_EXISTS.value[0]}


class TokenStream:
    """One request's chunks from its session, in order; a tiny single-consumer channel."""

    __slots__ = ("request_id", "tokens", "last_s", "merged", "_items", "_waiter", "_error", "_retryable", "_ended")

    def __init__(self, request_id: str, now_s: float) -> None:
        self.request_id = request_id
        self.tokens = 0          # tokens received so far (the idle timeout differs before the first)
        self.last_s = now_s      # when the worker last sent something for it (monotonic)
        self.merged = 0          # chunks that rode in an earlier one (the consumer had fallen behind)
        self._items: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._error: str | None = None
        self._retryable = True
        self._ended = False      # closed by the router: next() returns None

    def push(self, chunk: worker_pb2.WorkerChunk, now_s: float) -> None:
        self.last_s = now_s
        self.tokens += len(chunk.token_ids)
        self._items.append(chunk)
        self._wake()

    def fail(self, message: str, retryable: bool = True) -> None:
        if self._error is None:
            self._error, self._retryable = message, retryable
        self._wake()

    def end(self) -> None:
        """The router stops listening (abort): a waiting next() returns None."""
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _take(self) -> worker_pb2.WorkerChunk:
        """The oldest chunk, with every later one already here merged in: a consumer that fell
        behind (its client's writes, a busy loop) catches up in one write instead of one per
        token, and one that keeps up pays nothing (no timer, nothing held back)."""
        chunk = self._items.popleft()
        while self._items and chunks.can_merge(chunk, self._items[0]):
            chunks.merge_into(chunk, self._items.popleft())
            self.merged += 1
        return chunk

    async def next(self) -> worker_pb2.WorkerChunk | None:
        """The next chunk; None once ended by the router; raises StreamFailed."""
        while True:
            if self._ended:
                return None
            if self._items:
                return self._take()
            if self._error is not None:
                raise StreamFailed(self._error, self._retryable)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class WorkerSessionClient:
    """The router's stream to one worker. Opened on first use, again after it breaks."""

    def __init__(self, stub: worker_pb2_grpc.WorkerStub, address: str, clock: Callable[[], float]) -> None:
        self._releases: set[asyncio.Task] = set()
        self._stub = stub
        self.address = address
        self._clock = clock
        self.streams: dict[str, TokenStream] = {}
        self._outbox: asyncio.Queue | None = None
        self._reader: asyncio.Task | None = None

    def start(self, request: worker_pb2.WorkerGenerateRequest, trace_context: dict[str, str]) -> TokenStream:
        outbox = self._outbox
        if outbox is None or self._reader is None or self._reader.done():
            outbox = self._open()
        stream = TokenStream(request.request_id, self._clock())
        self.streams[request.request_id] = stream
        outbox.put_nowait(worker_pb2.SessionRequest(start=request, trace_context=trace_context))
        return stream

    def abort(self, request_id: str) -> None:
        """Stop `request_id` on the worker (no-op when it already ended)."""
        if self.streams.pop(request_id, None) is not None and self._outbox is not None:
            self._outbox.put_nowait(worker_pb2.SessionRequest(abort_request_id=request_id))

    def release(self, request_id: str, timeout_s: float = 2.0) -> None:
        """Abort `request_id` on the worker even after its stream ended (a P/D prefill leg whose
        staged KV no decode leg will read); in the background, best effort (P's lease frees it
        otherwise)."""
        async def release() -> None:
            try:
                await self._stub.Abort(worker_pb2.WorkerAbortRequest(request_id=request_id, reason="client left"),
                                       timeout=timeout_s)
            except grpc.aio.AioRpcError as err:
                log.info("release of %s on %s failed: %s", request_id, self.address, err.code().name)

        task = asyncio.get_running_loop().create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def _open(self) -> asyncio.Queue:
        """A new session call; returns its outbox."""
        call, self._outbox = grpcutil.outbox_call(self._stub.Session)
        self._reader = asyncio.create_task(self._read(call, self._outbox))
        return self._outbox

    async def _read(self, call, outbox: asyncio.Queue) -> None:
        why = "closed the session"
        try:
            async for batch in call:
                now = self._clock()
                for chunk in batch.chunks:
                    stream = self.streams.get(chunk.request_id)
                    if stream is None:
                        continue  # aborted here meanwhile
                    if chunk.error_code:
                        del self.streams[chunk.request_id]
                        stream.fail(f"{_STATUS_NAMES.get(chunk.error_code, chunk.error_code)}: {chunk.error_message}",
                                    retryable=chunk.error_code not in _REQUEST_FAULTS)
                        continue
                    if chunk.finished:
                        del self.streams[chunk.request_id]
                    stream.push(chunk, now)
        except grpc.aio.AioRpcError as err:
            why = f"{err.code().name}: {err.details()}"
        except asyncio.CancelledError:
            why = "router shutting down"
            raise
        finally:
            if self._outbox is outbox:
                self._outbox = None
            outbox.put_nowait(None)  # ends the request iterator of this call
            failed, self.streams = self.streams, {}
            if failed:
                log.warning("session to %s ended (%s); %d request(s) on it fail", self.address, why, len(failed))
            for stream in failed.values():
                stream.fail(why)

    def expire_idle(self, now_s: float, first_token_timeout_s: float, token_idle_timeout_s: float) -> None:
        for rid, stream in list(self.streams.items()):
            idle_s = first_token_timeout_s if stream.tokens == 0 else token_idle_timeout_s
            if now_s - stream.last_s > idle_s:
                self.abort(rid)
                stream.fail(f"sent nothing for {idle_s:.0f}s after {stream.tokens} tokens")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class Sessions:
    """One WorkerSessionClient per worker address, and the idle watchdog over all of them."""

    def __init__(self, first_token_timeout_s: float, token_idle_timeout_s: float, check_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stubs = grpcutil.StubCache(worker_pb2_grpc.WorkerStub)
        self._clients: dict[str, WorkerSessionClient] = {}
        self._timeouts = (first_token_timeout_s, token_idle_timeout_s)
        self._check_every_s = check_every_s
        self._clock = clock
        self._watchdog: asyncio.Task | None = None

    def __getitem__(self, address: str) -> WorkerSessionClient:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = WorkerSessionClient(self._stubs[address], address, self._clock)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())
        return client

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._check_every_s)
            now = self._clock()
            for client in self._clients.values():
                client.expire_idle(now, *self._timeouts)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.gather(*(c.close() for c in self._clients.values()), return_exceptions=True)
