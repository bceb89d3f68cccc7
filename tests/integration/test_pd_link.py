"""P/D placements over the router's real Scheduler.Connect link (loopback gRPC, real servicer and
HFX policy): both legs arrive with their addresses, a prefill-leg completion frees only P, the
request's end frees D, and a cluster that cannot prefill answers UNAVAILABLE with the reason."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.common import convert, grpcutil
from services.common.errors import Unavailable
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.router.scheduler_link import SchedulerLink
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.server import SchedulerServicer
from tests.unit.helpers import make_spec


async def _scheduler(instances, local_prefill=True, config=SchedulerConfig()):
    cfg = PolicyConfig(pd_local_prefill=local_prefill)
    s = SchedulerServicer(config, make_policy("hfx", cfg), cluster=None, policy_config=cfg)
    s.state.set_instances([common_pb2.Instance(instance_id=i, address=f"127.0.0.1:{n + 1}", role=role,
                                               max_model_len=8192)
                           for n, (i, role) in enumerate(instances)])
    server, _ = grpcutil.make_server([(scheduler_pb2_grpc.add_SchedulerServicer_to_server, s)], ["hfx.v1.Scheduler"])
    port = grpcutil.bind(server, "127.0.0.1", 0)
    await server.start()
    rounds = asyncio.create_task(s.round_loop())
    link = SchedulerLink(scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(f"127.0.0.1:{port}")),
                         complete_delay_s=0.0)
    return s, server, rounds, link


async def _until(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return predicate()


PD = (("p0", common_pb2.ROLE_PREFILL), ("d0", common_pb2.ROLE_DECODE))


def test_split_placement_over_the_link_and_its_two_completions():
    async def go():
        s, server, rounds, link = await _scheduler(PD)
        try:
            msg = convert.spec_to_pb(make_spec(request_id="pd1", prompt_tokens=3000, max_tokens=16,
                                               arrival_s=time.time()))
            p = await link.place(msg, 5.0)
            assert p.verdict == scheduler_pb2.VERDICT_ADMIT and "P/D" in p.reason
            assert (p.instance_id, p.address) == ("p0", "127.0.0.1:1")
            assert [(leg.role, leg.instance_id, leg.address) for leg in p.legs] == [
                (common_pb2.ROLE_PREFILL, "p0", "127.0.0.1:1"), (common_pb2.ROLE_DECODE, "d0", "127.0.0.1:2")]
            link.complete(scheduler_pb2.CompleteRequest(request_id="pd1", instance_id="p0", leg=common_pb2.ROLE_PREFILL,
                                                        outcome=scheduler_pb2.OUTCOME_FINISHED))
            assert await _until(lambda: "pd1" not in s.state.running.get("p0", {}))
            assert "pd1" in s.state.running["d0"]
            link.complete(scheduler_pb2.CompleteRequest(request_id="pd1", instance_id="d0",
                                                        outcome=scheduler_pb2.OUTCOME_FINISHED, output_tokens=16))
            assert await _until(lambda: s.state.inflight_count() == 0)
        finally:
            await link.close()
            rounds.cancel()
            await server.stop(None)
    asyncio.run(go())


def test_decode_only_cluster_without_local_prefill_is_unavailable_over_the_link():
    async def go():
        s, server, rounds, link = await _scheduler((("d0", common_pb2.ROLE_DECODE),), local_prefill=False,
                                                   config=SchedulerConfig(serving_gap_grace_s=0.0))
        try:
            with pytest.raises(Unavailable, match="UNAVAILABLE: no prefill capacity"):
                await link.place(convert.spec_to_pb(make_spec(request_id="q", arrival_s=time.time())), 5.0)
        finally:
            await link.close()
            rounds.cancel()
            await server.stop(None)
    asyncio.run(go())
