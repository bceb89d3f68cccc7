"""The router's end of Scheduler.Connect: one stream carries every Place and Complete.

`place(request, timeout_s)` sends the request and waits for its Placement (matched by
request_id); `complete(msg)` queues a completion, sent with the next place or at the latest
`complete_delay_s` later, so completions cost the scheduler one message per batch, not a call
each. Whatever is queued when a write happens leaves in one LinkRequest.

Tickets (scheduler.proto, Ticket): the scheduler keeps this router's current set up to date on the
link; `take_ticket(spec, now)` spends the best one that covers a request (None: ask with place),
and `redeemed(request)` tells the scheduler, at once, that the request started on it.

A link that breaks (scheduler restarted, stream reset) fails the places waiting on it with
Unavailable at once; the next call opens a new stream. Completions queued but not yet written
are sent on the new stream; ones written on a stream that then broke may be lost, as a unary
Complete that timed out would be: a restarted scheduler has forgotten those requests anyway.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from services.common import convert, grpcutil
from services.common.domain import RequestSpec
from services.common.errors import InvalidArgument, Unavailable
from services.common.pb.hfx.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger("hfx.router.link")
_STATUS = {code.value[0]: code for code in grpc.StatusCode}


class LinkDown(Unavailable):
    """The link broke (or could not open) while this place waited: the scheduler never answered
    it, so asking again (on a new link) is safe."""


class SchedulerLink:
    def __init__(self, stub: scheduler_pb2_grpc.SchedulerStub, complete_delay_s: float = 0.02) -> None:
        self._stub = stub
        self._complete_delay_s = complete_delay_s
        self._waiting: dict[str, asyncio.Future] = {}
        self._places: list[scheduler_pb2.PlaceRequest] = []
        self._completes: list[scheduler_pb2.CompleteRequest] = []
        self._cancels: list[str] = []
        self._outbox: asyncio.Queue | None = None
        self._reader: asyncio.Task | None = None
        self._flush_at: asyncio.TimerHandle | None = None
        self._tickets: list[scheduler_pb2.Ticket] = []   # best (lowest rank) first

    # -- public ------------------------------------------------------------------------------

    async def place(self, request: scheduler_pb2.PlaceRequest, timeout_s: float) -> scheduler_pb2.Placement:
        """The scheduler's Placement. Raises Unavailable (link broken, no answer within
        timeout_s: the scheduler is told to withdraw it) or the error the scheduler named."""
        rid = request.request_id
        if rid in self._waiting:
            raise InvalidArgument("request_id", f"{rid!r} is already being placed")
        future = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self._places.append(request)
        self._flush()
        try:
            placement = await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            self._cancel(rid)
            raise Unavailable(f"scheduler unavailable: no placement within {timeout_s:g}s") from None
        except asyncio.CancelledError:  # the client left while waiting
            self._cancel(rid)
            raise
        finally:
            self._waiting.pop(rid, None)
        if placement.error_code:
            code = _STATUS.get(placement.error_code, grpc.StatusCode.UNKNOWN)
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument("place", placement.error_message)
            raise Unavailable(f"scheduler unavailable: {code.name}: {placement.error_message}")
        return placement

    def take_ticket(self, spec: RequestSpec, now_s: float) -> scheduler_pb2.Ticket | None:
        """The best-ranked ticket whose bound covers `spec`, spent (gone from the set); None when
        none does (the scheduler has work queued, or granted none that fits this request)."""
        for k, ticket in enumerate(self._tickets):
            if convert.ticket_bound(ticket).covers(spec, now_s):
                return self._tickets.pop(k)
        return None

    def redeemed(self, request: scheduler_pb2.PlaceRequest) -> None:
        """`request` started on the ticket in its ticket_id: tell the scheduler now (it counts
        the request there before its next decision)."""
        self._places.append(request)
        self._flush()

    def complete(self, request: scheduler_pb2.CompleteRequest) -> None:
        self._completes.append(request)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(self._complete_delay_s, self._flush)

    async def close(self) -> None:
        self._flush()  # queued completions leave before the stream ends
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._reader.cancel()

    # -- stream ------------------------------------------------------------------------------

    def _cancel(self, rid: str) -> None:
        self._cancels.append(rid)
        self._flush()

    def _flush(self) -> None:
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        if not (self._places or self._completes or self._cancels):
            return
        outbox = self._outbox
        if outbox is None or self._reader is None or self._reader.done():
            outbox = self._open()
        msg = scheduler_pb2.LinkRequest(places=self._places, completes=self._completes,
                                        cancel_request_ids=self._cancels)
        self._places, self._completes, self._cancels = [], [], []
        outbox.put_nowait(msg)

    def _open(self) -> asyncio.Queue:
        """A new link call; returns its outbox."""
        call, self._outbox = grpcutil.outbox_call(self._stub.Connect, _merge)
        self._reader = asyncio.create_task(self._read(call, self._outbox))
        return self._outbox

    async def _read(self, call, outbox: asyncio.Queue) -> None:
        why = "the scheduler closed the link"
        try:
            async for response in call:
                if response.HasField("tickets"):
                    self._tickets = sorted(response.tickets.tickets, key=lambda t: t.rank)
                for placement in response.placements:
                    future = self._waiting.get(placement.request_id)
                    if future is not None and not future.done():
                        future.set_result(placement)
        except grpc.aio.AioRpcError as err:
            why = f"{err.code().name}: {err.details()}"
        except asyncio.CancelledError:
            why = "router shutting down"
            raise
        finally:
            self._tickets = []   # granted on a stream that is gone: a new one brings its own
            if self._outbox is outbox:
                self._outbox = None
            outbox.put_nowait(None)
            if self._waiting:
                log.warning("link to the scheduler ended (%s); %d placement(s) waiting on it fail",
                            why, len(self._waiting))
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(LinkDown(f"scheduler unavailable: {why}"))


def _merge(into: scheduler_pb2.LinkRequest, more: scheduler_pb2.LinkRequest) -> None:
    into.places.extend(more.places)
    into.completes.extend(more.completes)
    into.cancel_request_ids.extend(more.cancel_request_ids)
