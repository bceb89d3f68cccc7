"""The scheduler's end of Scheduler.Connect: one router's stream of places, completions and
cancellations, and the placements it answers with (see scheduler.proto)."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import grpc

from services.common import tracing
from services.common.errors import HfxError, InvalidArgument
from services.common.pb.hfx.v1 import scheduler_pb2

log = logging.getLogger("hfx.scheduler.link")


class Servicer(Protocol):
    """What a link needs of the scheduler service."""

    async def place(self, request: scheduler_pb2.PlaceRequest, parent) -> scheduler_pb2.Placement: ...

    def complete(self, request: scheduler_pb2.CompleteRequest) -> None: ...

    def redeem(self, link: "Link", request: scheduler_pb2.PlaceRequest, parent) -> None: ...


class Link:
    """One router's Connect stream: its places in flight and the answers not yet sent."""

    def __init__(self, servicer: Servicer) -> None:
        self._servicer = servicer
        self._tasks: dict[str, asyncio.Task] = {}
        self._ready: list[scheduler_pb2.Placement] = []
        self._tickets: scheduler_pb2.TicketSet | None = None   # a new set not sent yet
        self._wake = asyncio.Event()
        self._ended = False

    async def read(self, request_iterator) -> None:
        try:
            async for msg in request_iterator:
                for done in msg.completes:
                    self._servicer.complete(done)
                for rid in msg.cancel_request_ids:
                    task = self._tasks.pop(rid, None)
                    if task is not None:
                        task.cancel()
                for place in msg.places:
                    if place.ticket_id:   # already started on a ticket: count it, answer nothing
                        self._redeem(place)
                        continue
                    if place.request_id in self._tasks:
                        self._answer(_link_error(place.request_id, InvalidArgument(
                            "request_id", f"{place.request_id!r} is already being placed")))
                        continue
                    self._tasks[place.request_id] = asyncio.create_task(self._place(place))
        except grpc.aio.AioRpcError:
            pass  # the router went away: close() withdraws what it waited for
        finally:
            self._ended = True
            self._wake.set()

    async def _place(self, request: scheduler_pb2.PlaceRequest) -> None:
        try:
            placement = await self._servicer.place(request, tracing.extract_context(dict(request.trace_context)))
            placement.request_id = request.request_id
        except HfxError as err:
            placement = _link_error(request.request_id, err)
        except Exception as err:  # a bug must answer this request, not hang it until its timeout
            log.exception("place %s failed", request.request_id)
            placement = _link_error(request.request_id, err)
        self._tasks.pop(request.request_id, None)
        self._answer(placement)

    def _redeem(self, place: scheduler_pb2.PlaceRequest) -> None:
        try:
            self._servicer.redeem(self, place, tracing.extract_context(dict(place.trace_context)))
        except Exception:  # nothing to answer: the router already started it; keep the link up
            log.exception("ticketed place %s (ticket %s) not recorded", place.request_id, place.ticket_id)

    def _answer(self, placement: scheduler_pb2.Placement) -> None:
        self._ready.append(placement)
        self._wake.set()

    def offer_tickets(self, tickets: scheduler_pb2.TicketSet) -> None:
        """This router's tickets from now on (replaces any set not sent yet)."""
        self._tickets = tickets
        self._wake.set()

    async def ready(self) -> scheduler_pb2.LinkResponse | None:
        """What is ready to send now (waits for something); None once the router closed the stream."""
        while not self._ready and self._tickets is None:
            if self._ended:
                return None
            self._wake.clear()
            await self._wake.wait()
        out = scheduler_pb2.LinkResponse(placements=self._ready)
        if self._tickets is not None:
            out.tickets.CopyFrom(self._tickets)
        self._ready, self._tickets = [], None
        return out

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()


def _link_error(request_id: str, err: Exception) -> scheduler_pb2.Placement:
    code = err.code if isinstance(err, HfxError) else grpc.StatusCode.INTERNAL
    return scheduler_pb2.Placement(request_id=request_id, verdict=scheduler_pb2.VERDICT_REJECT,
                                   error_code=code.value[0], error_message=str(err))
