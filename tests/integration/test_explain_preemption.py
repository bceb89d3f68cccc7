"""`hfx explain` names a preemption as the cause of a TPOT miss, and the preemption's hops (the
scheduler's Abort to the worker) join the request's trace. Real router core, scheduler service
and worker services (SIMULATED engine) over real gRPC on loopback, in one process, spans written
by the real OTel SDK to a local span store; only the policy is scripted, so that the preemption
comes at a known moment and the resume waits long enough to make the miss certain (a preemption
cannot be provoked reliably from load on a shared 2-core machine)."""

from __future__ import annotations

import asyncio

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.common import grpcutil, tracing
from services.common.domain import Decision, Preemption, ScheduleResult, Verdict
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, scheduler_pb2_grpc
from services.common.spanstore import JsonLinesSpanExporter, read_spans
from services.explain import analysis
from services.router.config import RouterConfig
from services.router.core import Placed, RouterCore
from services.router.tokenizer import Tokenizer
from services.scheduler.config import SchedulerConfig
from services.scheduler.server import SchedulerServicer
from tests.integration.test_preemption import start_worker

HOLD_RESUME_S = 2.5


class PreemptThenHold:
    """New requests go to i0; the first one running there for 50 ms is preempted; its resume waits
    HOLD_RESUME_S in the queue, then goes to i1."""

    name = "scripted"

    def __init__(self) -> None:
        self.preempted: list[str] = []
        self._resume_seen: dict[str, float] = {}

    def schedule(self, waiting, cluster, now_s):
        decisions = []
        for spec in waiting:
            if not spec.resumed_tokens:
                decisions.append(Decision(spec.request_id, Verdict.ADMIT, "scripted -> i0", instance_id="i0"))
            elif now_s - self._resume_seen.setdefault(spec.request_id, now_s) >= HOLD_RESUME_S:
                decisions.append(Decision(spec.request_id, Verdict.ADMIT, "scripted resume -> i1", instance_id="i1"))
        preemptions = []
        for inst in cluster.instances:
            for run in inst.running:
                if inst.instance_id == "i0" and not self.preempted and now_s - run.placed_s > 0.05:
                    self.preempted.append(run.spec.request_id)
                    preemptions.append(Preemption("i0", run.spec.request_id, "scripted: budget -80 ms < -50 ms"))
        return ScheduleResult(tuple(decisions), tuple(preemptions))


def _span_store(path) -> JsonLinesSpanExporter:
    """The process's tracer provider (set here unless a test before set one) writing to `path`."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": "hfx-test"}))
        trace.set_tracer_provider(provider)
    exporter = JsonLinesSpanExporter(path)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def test_explain_names_the_preemption_as_the_cause_of_a_tpot_miss(tmp_path):
    model = str(ensure_default_model())
    exporter = _span_store(tmp_path / "spans.jsonl")

    async def main():
        workers = [await start_worker(n, model) for n in ("i0", "i1")]
        policy = PreemptThenHold()
        sched = SchedulerServicer(SchedulerConfig(protect_interval_s=0.05), policy, cluster=None)
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
            request = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=200, ignore_eos=True))
            request.token_ids.ids[:] = range(10, 40)
            request.slo.ttft_ms, request.slo.tpot_ms = 5000, 6
            final = None
            async for item in core.generate(request):
                if not isinstance(item, Placed) and item.HasField("final"):
                    final = item.final
            await core.link.close()   # delivers the batched Complete
            await asyncio.sleep(0.2)  # the scheduler handles it
            return policy, final
        finally:
            rounds.cancel()
            await server.stop(None)
            for w_server, engine, _ in workers:
                await w_server.stop(None)
                await engine.shutdown()

    try:
        policy, final = asyncio.run(main())
    finally:
        exporter.shutdown()
    assert policy.preempted == [final.request_id], "the scripted preemption did not happen"
    assert not final.slo_met and final.instance_id == "i1"
    spans = read_spans(tmp_path)
    exp = analysis.explain(spans, final.request_id)
    assert set(exp.missed) == {"tpot"}, exp.missed
    assert exp.cause == "preemption", exp.cause_text
    assert "scripted: budget -80 ms" in exp.cause_text
    assert [p.resumed_tokens > 0 for p in exp.placements] == [False, True]
    assert [leg.instance_id for leg in exp.legs] == ["i0", "i1"] and exp.legs[0].preempted
    # The preemption's hops are on the request's trace: scheduler.preempt, and the worker's Abort under it.
    root = next(s for s in spans if s.name == tracing.SPAN_ROUTER and s.attributes[tracing.ATTR_REQUEST_ID] == final.request_id)
    mine = {s.name: s for s in spans if s.trace_id == root.trace_id}
    assert {tracing.SPAN_PREEMPT, tracing.SPAN_WORKER_ABORT, tracing.SPAN_COMPLETE} <= set(mine)
    assert mine[tracing.SPAN_WORKER_ABORT].parent_id == mine[tracing.SPAN_PREEMPT].span_id
    assert mine[tracing.SPAN_PREEMPT].parent_id == root.span_id
    assert mine[tracing.SPAN_WORKER_ABORT].attributes[tracing.ATTR_ABORT_FOUND] is True
    # Every span of the request carries its SLO targets (a resumed placement: the shifted TTFT one).
    for span in (s for s in spans if s.trace_id == root.trace_id):
        assert span.attributes[tracing.ATTR_TPOT_SLO_MS] == 6.0, span.name
