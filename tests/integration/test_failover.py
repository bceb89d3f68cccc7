"""Failover on real gRPC over loopback: the worker under a streaming request goes away mid-stream,
and the router places the request again elsewhere with the tokens it already streamed; the
client sees one stream, every token once. Real router core, scheduler service (least-load) and
worker services (simulated engine), in one process; "the worker dies" is its gRPC server
stopping without grace, which the router sees as a broken session, as it would a killed process.
"""

from __future__ import annotations

import asyncio

from services.common import grpcutil
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, scheduler_pb2_grpc
from services.router.config import RouterConfig
from services.router.core import Placed, RouterCore
from services.router.tokenizer import Tokenizer
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import make_policy
from services.scheduler.server import SchedulerServicer
from tests.integration.test_preemption import start_worker


async def _mesh(model: str, max_failovers: int):
    workers = {n: await start_worker(n, model) for n in ("i0", "i1")}
    sched = SchedulerServicer(SchedulerConfig(), make_policy("least-load"), cluster=None)
    sched.state.set_instances([common_pb2.Instance(instance_id=n, address=w[2], max_model_len=2048)
                               for n, w in workers.items()])
    server, _ = grpcutil.make_server([(scheduler_pb2_grpc.add_SchedulerServicer_to_server, sched)],
                                     ["hfx.v1.Scheduler"])
    port = grpcutil.bind(server, "127.0.0.1", 0)
    await server.start()
    rounds = asyncio.create_task(sched.round_loop())
    core = RouterCore(RouterConfig(model=model, scheduler_address=f"127.0.0.1:{port}", max_failovers=max_failovers),
                      Tokenizer.load(model), scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(f"127.0.0.1:{port}")))
    return workers, sched, server, rounds, core


async def _teardown(workers, server, rounds, core) -> None:
    await core.close()
    rounds.cancel()
    await server.stop(None)
    for w_server, engine, _ in workers.values():
        await w_server.stop(None)   # a no-op on one already stopped
        await engine.shutdown()


async def _generate_killing_the_first_instance(core, workers, after_tokens: int):
    """Streams one request; once `after_tokens` arrived, the worker it runs on dies."""
    request = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=300, ignore_eos=True))
    request.token_ids.ids[:] = range(10, 40)
    ids, final, killed, gone = [], None, "", set()
    async for item in core.generate(request):
        if isinstance(item, Placed):
            killed = item.instance_id
            continue
        if item.HasField("delta"):
            ids += item.delta.token_ids
            if len(ids) >= after_tokens and killed not in gone:
                gone.add(killed)
                await workers[killed][0].stop(None)   # the worker is gone, mid-stream
        else:
            final = item.final
    return killed, ids, final


def test_a_worker_dying_mid_stream_fails_over_and_the_client_gets_every_token_once():
    model = str(ensure_default_model())

    async def main():
        workers, sched, server, rounds, core = await _mesh(model, max_failovers=2)
        try:
            killed, ids, final = await _generate_killing_the_first_instance(core, workers, after_tokens=20)
            await core.link.close()   # completions ride the link: closing it delivers them first
            return killed, ids, final, sched.state.inflight_count(), set(sched.state.quarantined)
        finally:
            await _teardown(workers, server, rounds, core)

    killed, ids, final, inflight, quarantined = asyncio.run(main())
    survivor = ({"i0", "i1"} - {killed}).pop()
    assert len(ids) == 300 and final.usage.completion_tokens == 300
    assert final.finish_reason == common_pb2.FINISH_REASON_LENGTH and final.instance_id == survivor
    assert killed in quarantined          # told FAILED at once: not chosen again until it reports
    assert inflight == 0                  # nothing left counted on either instance


def test_with_no_failovers_left_the_request_fails_naming_the_instance():
    model = str(ensure_default_model())

    async def main():
        workers, sched, server, rounds, core = await _mesh(model, max_failovers=0)
        try:
            try:
                await _generate_killing_the_first_instance(core, workers, after_tokens=5)
            except Exception as err:  # noqa: BLE001 - the error the client would get is the point
                return err
            return None
        finally:
            await _teardown(workers, server, rounds, core)

    err = asyncio.run(main())
    assert err is not None and type(err).__name__ == "Unavailable"
    assert "failed after" in str(err)

