"""RouterCore (services/router/core.py) queues the worker's start before it yields Placed, so the
front door's answer to Placed (gRPC initial metadata, the HTTP response head) overlaps the
engine's prefill instead of delaying it; and a client that leaves at Placed still ends the
request on its worker and at the scheduler."""

from __future__ import annotations

import asyncio

from services.common.pb.hfx.v1 import common_pb2, router_pb2, scheduler_pb2, worker_pb2
from services.router.config import RouterConfig
from services.router.core import Placed, RouterCore
from services.router.sessions import TokenStream
from services.router.tokenizer import Tokenizer


class FakeSession:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.streams: dict[str, TokenStream] = {}

    def start(self, request: worker_pb2.WorkerGenerateRequest, trace_context) -> TokenStream:
        self.log.append(f"start {request.request_id}")
        stream = self.streams[request.request_id] = TokenStream(request.request_id, 0.0)
        return stream

    def abort(self, request_id: str) -> None:
        self.log.append(f"abort {request_id}")


class FakeSessions(dict):
    def __missing__(self, address: str) -> FakeSession:
        session = self[address] = FakeSession()
        return session


class FakeLink:
    def __init__(self) -> None:
        self.completes: list[scheduler_pb2.CompleteRequest] = []

    def take_ticket(self, spec, now_s):
        return None

    async def place(self, msg: scheduler_pb2.PlaceRequest, timeout_s: float) -> scheduler_pb2.Placement:
        return scheduler_pb2.Placement(verdict=scheduler_pb2.VERDICT_ADMIT, instance_id="i0", address="w0:1",
                                       reason="fits", policy="hfx", request_id=msg.request_id)

    def complete(self, request: scheduler_pb2.CompleteRequest) -> None:
        self.completes.append(request)


def _core() -> tuple[RouterCore, FakeSessions, FakeLink]:
    core = RouterCore(RouterConfig(model="m", scheduler_address="s:1"), Tokenizer(hf=None, vocab_size=1000,
                                                                                     max_model_len=2048), None)
    sessions, link = FakeSessions(), FakeLink()
    core.sessions, core.link = sessions, link  # type: ignore[assignment]
    return core, sessions, link


def _request() -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=[1, 2, 3]),
                                     sampling=common_pb2.SamplingParams(max_tokens=2))


def test_the_worker_start_is_queued_before_placed_is_yielded():
    async def run():
        core, sessions, _ = _core()
        gen = core.generate(_request())
        placed = await gen.__anext__()
        seen = list(sessions["w0:1"].log)
        stream = sessions["w0:1"].streams[placed.request_id]
        stream.push(worker_pb2.WorkerChunk(request_id=placed.request_id, token_ids=[7, 8], text="ab", finished=True,
                                           finish_reason=common_pb2.FINISH_REASON_LENGTH), 0.0)
        rest = [item async for item in gen]
        return placed, seen, rest
    placed, seen, rest = asyncio.run(run())
    assert isinstance(placed, Placed) and placed.instance_id == "i0"
    assert seen == [f"start {placed.request_id}"]
    assert list(rest[0].delta.token_ids) == [7, 8] and rest[-1].HasField("final")


def test_a_client_that_leaves_at_placed_ends_the_request_on_the_worker_and_at_the_scheduler():
    async def run():
        core, sessions, link = _core()
        gen = core.generate(_request())
        placed = await gen.__anext__()
        await gen.aclose()
        return placed, sessions["w0:1"].log, link.completes
    placed, log, completes = asyncio.run(run())
    assert log == [f"start {placed.request_id}", f"abort {placed.request_id}"]
    assert [(c.request_id, c.outcome) for c in completes] == [(placed.request_id, scheduler_pb2.OUTCOME_ABORTED)]


def test_requests_in_flight_are_counted_down_however_the_request_ends():
    # The count of requests in flight (bounded by max_inflight) must fall back when the stream
    # ends, when the client leaves at Placed, and when validation refuses the request.
    async def run():
        core, sessions, _ = _core()
        counts = []
        gen = core.generate(_request())
        placed = await gen.__anext__()
        counts.append(core.inflight)
        sessions["w0:1"].streams[placed.request_id].push(worker_pb2.WorkerChunk(
            request_id=placed.request_id, token_ids=[7], finished=True,
            finish_reason=common_pb2.FINISH_REASON_LENGTH), 0.0)
        [item async for item in gen]
        counts.append(core.inflight)
        gen = core.generate(_request())
        await gen.__anext__()
        await gen.aclose()
        counts.append(core.inflight)
        bad = router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=[5000]))  # outside the vocabulary
        try:
            await core.generate(bad).__anext__()
        except Exception as err:  # noqa: BLE001 - the refusal's type is not what this test is about
            counts.append(type(err).__name__)
        counts.append(core.inflight)
        return counts
    assert asyncio.run(run()) == [1, 0, 0, "InvalidArgument", 0]


class TicketLink(FakeLink):
    """Holds one ticket for i0; records the redemption in the session's log, to see the order."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.ticket: scheduler_pb2.Ticket | None = scheduler_pb2.Ticket(
            ticket_id="t1", instance_id="i0", address="w0:1", reason="ticket", policy="hfx")

    def take_ticket(self, spec, now_s):
        ticket, self.ticket = self.ticket, None
        return ticket

    def redeemed(self, request: scheduler_pb2.PlaceRequest) -> None:
        self.log.append(f"redeem {request.request_id} {request.ticket_id}")


def test_a_ticket_is_redeemed_after_the_worker_start_is_queued():
    # Both messages leave in the order queued; the start is on the request's path, the scheduler's
    # note is not (with the note first the start reached its worker 1.4 ms p50 after it).
    async def run():
        core, sessions, _ = _core()
        link = TicketLink(sessions["w0:1"].log)
        core.link = link  # type: ignore[assignment]
        gen = core.generate(_request())
        placed = await gen.__anext__()
        await gen.aclose()
        return placed, sessions["w0:1"].log, link.completes
    placed, log, completes = asyncio.run(run())
    rid = placed.request_id
    assert log[:2] == [f"start {rid}", f"redeem {rid} t1"]
    assert [c.request_id for c in completes] == [rid]   # and it ends at the scheduler as before
