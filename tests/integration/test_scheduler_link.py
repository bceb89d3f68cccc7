"""The router's Scheduler.Connect link against a real scheduler servicer over loopback gRPC:
placements matched by request id, completions batched, cancellation on timeout, a scheduler
that goes away, and bad input. The worker's StreamLoad stream reaches the same state."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common import convert, grpcutil
from services.common.errors import InvalidArgument, Unavailable
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.router.scheduler_link import SchedulerLink
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import make_policy
from services.scheduler.server import SchedulerServicer
from tests.unit.helpers import make_spec


async def _scheduler(instances=("i0", "i1"), policy="least-load"):
    s = SchedulerServicer(SchedulerConfig(), make_policy(policy), cluster=None)
    s.state.set_instances([common_pb2.Instance(instance_id=i, address=f"127.0.0.1:{n + 1}", max_model_len=2048)
                           for n, i in enumerate(instances)])
    server, _ = grpcutil.make_server([(scheduler_pb2_grpc.add_SchedulerServicer_to_server, s)], ["hfx.v1.Scheduler"])
    port = grpcutil.bind(server, "127.0.0.1", 0)
    await server.start()
    rounds = asyncio.create_task(s.round_loop())
    stub = scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(f"127.0.0.1:{port}"))
    return s, server, rounds, stub


def _place_msg(rid: str) -> scheduler_pb2.PlaceRequest:
    return convert.spec_to_pb(make_spec(request_id=rid, arrival_s=time.time()))


def test_concurrent_places_are_answered_by_id_and_completions_arrive_batched():
    async def go():
        s, server, rounds, stub = await _scheduler()
        link = SchedulerLink(stub, complete_delay_s=0.05)
        try:
            placements = await asyncio.gather(*(link.place(_place_msg(f"r{k}"), 5.0) for k in range(20)))
            assert [p.request_id for p in placements] == [f"r{k}" for k in range(20)]
            assert all(p.verdict == scheduler_pb2.VERDICT_ADMIT and p.address for p in placements)
            assert s.state.inflight_count() == 20
            for p in placements:
                link.complete(scheduler_pb2.CompleteRequest(request_id=p.request_id, instance_id=p.instance_id,
                                                            outcome=scheduler_pb2.OUTCOME_FINISHED, output_tokens=3))
            assert s.state.inflight_count() == 20   # not sent yet: they wait up to complete_delay_s together
            deadline = time.monotonic() + 5.0
            while s.state.inflight_count() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert s.state.inflight_count() == 0
        finally:
            await link.close()
            rounds.cancel()
            await server.stop(None)
    asyncio.run(go())


def test_a_place_not_answered_in_time_is_withdrawn_from_the_queue():
    async def go():
        s, server, rounds, stub = await _scheduler(instances=())  # nothing to place on: it waits
        link = SchedulerLink(stub)
        try:
            with pytest.raises(Unavailable, match="no placement within"):
                await link.place(_place_msg("slow"), 0.3)
            deadline = time.monotonic() + 5.0
            while s.state.waiting and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert not s.state.waiting   # the cancel reached the scheduler
        finally:
            await link.close()
            rounds.cancel()
            await server.stop(None)
    asyncio.run(go())


def test_bad_input_is_invalid_argument_and_the_link_stays_up():
    async def go():
        s, server, rounds, stub = await _scheduler()
        link = SchedulerLink(stub)
        try:
            with pytest.raises(InvalidArgument, match="request_id"):
                await link.place(_place_msg(""), 5.0)
            bad = _place_msg("neg")
            bad.resumed_tokens = -1
            with pytest.raises(InvalidArgument, match="resumed_tokens"):
                await link.place(bad, 5.0)
            ok = await link.place(_place_msg("fine"), 5.0)
            assert ok.verdict == scheduler_pb2.VERDICT_ADMIT
        finally:
            await link.close()
            rounds.cancel()
            await server.stop(None)
    asyncio.run(go())


def test_a_scheduler_that_goes_away_fails_waiting_places_at_once_and_the_link_reopens():
    async def go():
        s, server, rounds, stub = await _scheduler(instances=())
        link = SchedulerLink(stub)
        waiting = asyncio.create_task(link.place(_place_msg("stuck"), 30.0))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await server.stop(None)
        rounds.cancel()
        with pytest.raises(Unavailable, match="scheduler unavailable"):
            await waiting
        assert time.monotonic() - started < 5.0   # failed by the broken stream, not its 30 s timeout
        # A new scheduler on another port: a new link to it places (the old stub's channel is gone).
        s2, server2, rounds2, stub2 = await _scheduler()
        link2 = SchedulerLink(stub2)
        try:
            assert (await link2.place(_place_msg("after"), 5.0)).verdict == scheduler_pb2.VERDICT_ADMIT
        finally:
            await link.close()
            await link2.close()
            rounds2.cancel()
            await server2.stop(None)
    asyncio.run(go())


def test_worker_load_reports_on_one_stream_reach_the_scheduler():
    async def go():
        s, server, rounds, stub = await _scheduler()
        call = stub.StreamLoad()
        try:
            for k in range(3):
                await call.write(common_pb2.LoadReport(instance_id="i0", running_requests=k, reported_unix_s=time.time()))
            deadline = time.monotonic() + 5.0
            while (s.state.loads.get("i0") is None or s.state.loads["i0"].running_requests != 2) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert s.state.loads["i0"].running_requests == 2
            await call.done_writing()
            assert isinstance(await call, scheduler_pb2.ReportLoadResponse)
        finally:
            rounds.cancel()
            await server.stop(None)
    asyncio.run(go())


async def _until(check, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return check()


def test_tickets_reach_the_router_a_spent_one_is_counted_and_a_queue_revokes_them():
    async def go():
        s, server, rounds, stub = await _scheduler(policy="hfx")
        link = SchedulerLink(stub)
        try:
            first = await link.place(_place_msg("shape"), 5.0)   # the scheduler learns the shape
            assert first.verdict == scheduler_pb2.VERDICT_ADMIT
            # Spend one the way the router does: start it, then tell the scheduler.
            spec2 = make_spec(request_id="fast2", arrival_s=time.time())
            assert await _until(lambda: bool(link._tickets))
            ticket = link.take_ticket(spec2, time.time())
            assert ticket is not None and ticket.address
            msg = convert.spec_to_pb(spec2)
            msg.ticket_id = ticket.ticket_id
            before = s.state.inflight_count()
            link.redeemed(msg)
            assert await _until(lambda: "fast2" in s.state.running.get(ticket.instance_id, {}))
            assert s.state.inflight_count() == before + 1
            # A request that fits nowhere waits at the scheduler: every ticket is taken back.
            for iid in ("i0", "i1"):
                s.report_load(common_pb2.LoadReport(instance_id=iid, kv_capacity_tokens=120,
                                                    reported_unix_s=time.time()))
            stuck = asyncio.create_task(link.place(_place_msg("too-big"), 30.0))
            assert await _until(lambda: "too-big" in s.state.waiting)
            assert await _until(lambda: not link._tickets)
            assert link.take_ticket(make_spec(request_id="x", arrival_s=time.time()), time.time()) is None
            stuck.cancel()
        finally:
            await link.close()
            rounds.cancel()
            await server.stop(None)
    asyncio.run(go())


def test_a_ticket_bound_does_not_cover_a_bigger_request_and_it_takes_a_pass():
    async def go():
        s, server, rounds, stub = await _scheduler(policy="hfx")
        link = SchedulerLink(stub)
        try:
            await link.place(_place_msg("shape"), 5.0)
            assert await _until(lambda: bool(link._tickets))
            big = make_spec(request_id="big", prompt_tokens=1000, arrival_s=time.time())
            assert link.take_ticket(big, time.time()) is None
            placed = await link.place(convert.spec_to_pb(big), 5.0)   # the ordinary way still works
            assert placed.verdict == scheduler_pb2.VERDICT_ADMIT and placed.request_id == "big"
        finally:
            await link.close()
            rounds.cancel()
            await server.stop(None)
    asyncio.run(go())
