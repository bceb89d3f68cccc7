"""In-flight protection on real gRPC over loopback: the scheduler preempts a running request, its
worker ends the stream PREEMPTED, and the router places it again with the tokens it has already
streamed; the client sees one uninterrupted stream. Real router core, scheduler service and worker
services (simulated engine), in one process; only the policy is scripted, so the preemption comes
at a known moment instead of depending on load."""

from __future__ import annotations

import asyncio

from services.common import grpcutil
from services.common.domain import Decision, Preemption, ScheduleResult, Verdict
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import (common_pb2, router_pb2, scheduler_pb2_grpc, worker_pb2,
                                       worker_pb2_grpc)
from services.router.config import RouterConfig
from services.router.core import Placed, RouterCore
from services.router.tokenizer import Tokenizer
from services.scheduler.config import SchedulerConfig
from services.scheduler.server import SchedulerServicer
from services.worker.engine import make_engine
from services.worker.engine.sim_engine import SimEngineConfig
from services.worker.server import WorkerServicer


class PreemptOnce:
    """New requests go to i0, resumed ones to i1; the first request running on i0 for 0.2 s is
    preempted once."""

    name = "scripted"

    def __init__(self) -> None:
        self.preempted: list[str] = []
        self.resumed: list[tuple[str, int, int]] = []   # (request id, resumed tokens, prompt tokens)

    def schedule(self, waiting, cluster, now_s):
        decisions = []
        for spec in waiting:
            target = "i1" if spec.resumed_tokens else "i0"
            if spec.resumed_tokens:
                self.resumed.append((spec.request_id, spec.resumed_tokens, spec.prompt_tokens))
            decisions.append(Decision(spec.request_id, Verdict.ADMIT, f"scripted -> {target}", instance_id=target))
        preemptions = []
        for inst in cluster.instances:
            for run in inst.running:
                if inst.instance_id == "i0" and not self.preempted and now_s - run.placed_s > 0.2:
                    self.preempted.append(run.spec.request_id)
                    preemptions.append(Preemption("i0", run.spec.request_id, "scripted"))
        return ScheduleResult(tuple(decisions), tuple(preemptions))


async def start_servicer(name: str, model: str, servicer_class=WorkerServicer):
    """A worker service (simulated engine) in this process on a free port:
    (server, engine, servicer, address)."""
    engine = make_engine("sim", SimEngineConfig(model, "cpu-tiny"))
    await engine.start()
    servicer = servicer_class(engine, common_pb2.Instance(instance_id=name, max_model_len=engine.max_model_len))
    server, _ = grpcutil.make_server([(worker_pb2_grpc.add_WorkerServicer_to_server, servicer)], ["hfx.v1.Worker"])
    port = grpcutil.bind(server, "127.0.0.1", 0)
    await server.start()
    return server, engine, servicer, f"127.0.0.1:{port}"


async def start_worker(name: str, model: str):
    server, engine, _, address = await start_servicer(name, model)
    return server, engine, address


def test_preempted_request_resumes_elsewhere_without_losing_tokens():
    model = str(ensure_default_model())

    async def main():
        workers = [await start_worker(n, model) for n in ("i0", "i1")]
        policy = PreemptOnce()
        sched = SchedulerServicer(SchedulerConfig(), policy, cluster=None)
        sched.state.set_instances([common_pb2.Instance(instance_id=n, address=w[2], max_model_len=2048)
                                   for n, w in zip(("i0", "i1"), workers)])
        server, _ = grpcutil.make_server([(scheduler_pb2_grpc.add_SchedulerServicer_to_server, sched)],
                                         ["hfx.v1.Scheduler"])
        port = grpcutil.bind(server, "127.0.0.1", 0)
        await server.start()
        rounds = asyncio.create_task(sched.round_loop())
        core = RouterCore(RouterConfig(model=model, scheduler_address=f"127.0.0.1:{port}"), Tokenizer.load(model),
                          scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(f"127.0.0.1:{port}")))
        try:
            request = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=400, ignore_eos=True))
            request.token_ids.ids[:] = range(10, 40)
            ids, final = [], None
            async for item in core.generate(request):
                if isinstance(item, Placed):
                    continue
                if item.HasField("delta"):
                    ids += item.delta.token_ids
                else:
                    final = item.final
            await core.link.close()   # its Completes ride the link: closing it delivers them first
            return policy, ids, final, sched.state.inflight_count()
        finally:
            rounds.cancel()
            await server.stop(None)
            for w_server, engine, _ in workers:
                await w_server.stop(None)
                await engine.shutdown()

    policy, ids, final, inflight = asyncio.run(main())
    assert len(policy.preempted) == 1, "the scripted preemption did not happen"
    ((rid, resumed, prompt),) = policy.resumed
    assert rid == policy.preempted[0] == final.request_id
    assert 0 < resumed < 400 and prompt == 30 + resumed   # the streamed tokens joined the prompt
    # One stream to the client: every token once, ended by length, on the instance it resumed on.
    assert len(ids) == 400 and final.usage.completion_tokens == 400
    assert final.finish_reason == common_pb2.FINISH_REASON_LENGTH and final.instance_id == "i1"
    assert inflight == 0   # i0's placement was released at the preemption, i1's at the end


def test_worker_ends_a_preempted_stream_with_preempted_not_abort():
    model = str(ensure_default_model())

    async def main():
        server, engine, address = await start_worker("i0", model)
        stub = worker_pb2_grpc.WorkerStub(grpcutil.aio_channel(address))
        try:
            call = stub.Generate(worker_pb2.WorkerGenerateRequest(
                request_id="a", prompt_token_ids=[5, 6, 7],
                sampling=common_pb2.SamplingParams(max_tokens=1000, ignore_eos=True)))
            chunks = [await call.read()]
            reply = await stub.Abort(worker_pb2.WorkerAbortRequest(request_id="a", preempt=True, reason="test"),
                                     timeout=5)
            while not chunks[-1].finished:
                chunks.append(await asyncio.wait_for(call.read(), timeout=10))
            gone = await stub.Abort(worker_pb2.WorkerAbortRequest(request_id="a", preempt=True), timeout=5)
            return reply.found, gone.found, chunks
        finally:
            await server.stop(None)
            await engine.shutdown()

    found, gone_found, chunks = asyncio.run(main())
    assert found and not gone_found
    assert chunks[-1].finished and chunks[-1].finish_reason == common_pb2.FINISH_REASON_PREEMPTED
    assert sum(len(c.token_ids) for c in chunks) < 1000
