"""A scheduler that restarts (loses its memory) counts again what the workers run, from their load
reports; a placement whose stream ended unseen (its router died) is let go the same way. Real
worker service (simulated engine) and scheduler service, in one process."""

from __future__ import annotations

import asyncio
import time

from services.common import convert
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, worker_pb2
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import make_policy
from services.scheduler.server import SchedulerServicer
from services.worker.engine import make_engine
from services.worker.engine.sim_engine import SimEngineConfig
from services.worker.server import WorkerServicer
from tests.unit.helpers import make_spec


def _scheduler() -> SchedulerServicer:
    s = SchedulerServicer(SchedulerConfig(), make_policy("hfx"), cluster=None)
    s.state.set_instances([common_pb2.Instance(instance_id="w0", address="127.0.0.1:1", max_model_len=2048)])
    return s


def test_a_restarted_scheduler_counts_what_runs_and_lets_go_what_ended():
    model = str(ensure_default_model())

    async def main():
        engine = make_engine("sim", SimEngineConfig(model, "cpu-tiny"))
        await engine.start()
        worker = WorkerServicer(engine, common_pb2.Instance(instance_id="w0", max_model_len=engine.max_model_len))

        async def run(rid: str, tokens: int, seen: asyncio.Event) -> None:
            req = worker_pb2.WorkerGenerateRequest(
                request_id=rid, prompt_token_ids=list(range(5, 45)), priority=2,
                sampling=common_pb2.SamplingParams(max_tokens=tokens, ignore_eos=True),
                slo=common_pb2.Slo(ttft_ms=800, tpot_ms=60))
            async for chunk in worker.run(req, None):
                if chunk.token_ids:
                    seen.set()

        try:
            seen = [asyncio.Event() for _ in range(3)]
            tasks = [asyncio.create_task(run(f"r{k}", 2000, seen[k])) for k in range(3)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in seen)), 30)
            restarted = _scheduler()                   # knows nothing of r0..r2
            restarted.report_load(worker.load_report())
            adopted = dict(restarted.state.running.get("w0", {}))
            # A placement the scheduler counts that no worker runs (its router died before Complete):
            ghost = make_spec(request_id="ghost", arrival_s=time.time() - 60)
            restarted.state.place("w0", ghost, time.time() - 60)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.05)                  # the engine lets them go
            report = worker.load_report()
            report.reported_unix_s = time.time() + 10  # well past the grace for the adopted ones too
            restarted.report_load(report)
            return adopted, dict(restarted.state.running.get("w0", {}))
        finally:
            await engine.shutdown()

    adopted, after = asyncio.run(main())
    assert set(adopted) == {"r0", "r1", "r2"}
    for run in adopted.values():
        assert run.spec.priority == 2 and run.spec.slo.tpot_ms == 60
        assert run.spec.resumed_tokens > 0 and run.spec.prompt_tokens == 40 + run.spec.resumed_tokens
    assert after == {}                                  # ended ones and the ghost are let go


def test_a_report_lists_each_running_request_with_what_it_streamed():
    model = str(ensure_default_model())

    async def main():
        engine = make_engine("sim", SimEngineConfig(model, "cpu-tiny"))
        await engine.start()
        worker = WorkerServicer(engine, common_pb2.Instance(instance_id="w0", max_model_len=engine.max_model_len))
        try:
            req = worker_pb2.WorkerGenerateRequest(
                request_id="x", prompt_token_ids=[1, 2, 3],
                sampling=common_pb2.SamplingParams(max_tokens=500, ignore_eos=True))
            stream = worker.run(req, None)
            got = 0
            async for chunk in stream:
                got += len(chunk.token_ids)
                if got >= 5:
                    break
            during = worker.load_report()
            await stream.aclose()
            return got, during, worker.load_report()
        finally:
            await engine.shutdown()

    got, during, after = asyncio.run(main())
    assert during.lists_running and [r.request_id for r in during.running] == ["x"]
    assert during.running[0].output_tokens == got and during.running[0].prompt_tokens == 3
    assert convert.running_from_pb(during.running[0]).as_spec().resumed_tokens == got
    assert after.lists_running and list(after.running) == []


def test_a_request_arriving_while_the_scheduler_restarts_waits_for_it_and_is_served():
    from services.common import grpcutil, procs
    from services.common.pb.hfx.v1 import router_pb2, scheduler_pb2_grpc
    from services.router.config import RouterConfig
    from services.router.core import Placed, RouterCore
    from services.router.tokenizer import Tokenizer
    from tests.integration.test_preemption import start_worker

    model = str(ensure_default_model())
    port = procs.free_port()

    async def scheduler_on(address: str):
        s = SchedulerServicer(SchedulerConfig(), make_policy("least-load"), cluster=None)
        s.state.set_instances([common_pb2.Instance(instance_id="w0", address=address, max_model_len=2048)])
        server, _ = grpcutil.make_server([(scheduler_pb2_grpc.add_SchedulerServicer_to_server, s)],
                                         ["hfx.v1.Scheduler"])
        grpcutil.bind(server, "127.0.0.1", port)
        await server.start()
        return server, asyncio.create_task(s.round_loop())

    async def main():
        w_server, engine, address = await start_worker("w0", model)
        server, rounds = await scheduler_on(address)
        core = RouterCore(RouterConfig(model=model, scheduler_address=f"127.0.0.1:{port}", place_timeout_s=20),
                          Tokenizer.load(model),
                          scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(f"127.0.0.1:{port}")))

        async def generate() -> int:
            request = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=8, ignore_eos=True))
            request.token_ids.ids[:] = range(10, 20)
            tokens = 0
            async for item in core.generate(request):
                if not isinstance(item, Placed) and item.HasField("delta"):
                    tokens += len(item.delta.token_ids)
            return tokens

        try:
            assert await generate() == 8                 # the link is up
            await server.stop(None)                      # the scheduler goes away...
            rounds.cancel()
            pending = asyncio.create_task(generate())    # ...a request arrives meanwhile
            await asyncio.sleep(1.0)
            assert not pending.done()                    # it waits, it does not fail
            server, rounds = await scheduler_on(address) # the scheduler is back (same address)
            return await asyncio.wait_for(pending, 20)
        finally:
            await core.close()
            rounds.cancel()
            await server.stop(None)
            await w_server.stop(None)
            await engine.shutdown()

    assert asyncio.run(main()) == 8
