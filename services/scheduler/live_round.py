"""The scheduler service's executor of a round (services/scheduler/apply.py decides the order:
preemptions, then decisions): a victim is stopped on its worker (Worker.Abort), a decision
answers the Place call waiting for it. Split from server.py, which keeps the servicer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from opentelemetry import trace

from services.common import grpcutil, metrics, tracing
from services.common.domain import ClusterSnapshot, Decision, Leg, Preemption, RequestSpec, Role, Verdict
from services.common.pb.hfx.v1 import worker_pb2
from services.scheduler.state import Waiting

if TYPE_CHECKING:
    from services.scheduler.server import SchedulerServicer

log = logging.getLogger("hfx.scheduler")
_tracer = tracing.tracer("hfx.scheduler")


def _mode(decision: Decision, snapshot: ClusterSnapshot) -> str:
    """How a placed request runs, for hfx_scheduler_placements."""
    if decision.legs:
        return "split"
    inst = snapshot.get(decision.instance_id)
    return "prefill_on_decode" if inst is not None and inst.role is Role.DECODE else "colocated"


class LiveRound:
    """The applier's executor for one round (services/scheduler/apply.py: preemptions, then
    decisions): Worker.Abort for a victim, the waiting Place call answered for a decision."""

    def __init__(self, servicer: "SchedulerServicer", snapshot: ClusterSnapshot, now_s: float) -> None:
        self.servicer, self.snapshot, self.now_s = servicer, snapshot, now_s
        self._entries: dict[str, Waiting] = {}

    def preempt(self, pre: Preemption) -> None:
        """In-flight protection: stop the victim on its worker. Its stream then ends PREEMPTED and
        the router places it again with the tokens it has streamed (Place with resumed_tokens).
        It leaves the instance's running set now, so the next round sees the budget it frees."""
        s = self.servicer
        address = _address(self.snapshot, pre.instance_id)
        running = s.state.finish(pre.request_id)   # every leg: it is placed again from scratch
        if running is None:
            return
        log.info("preempt %s on %s: %s", pre.request_id, pre.instance_id, pre.reason)
        span = _tracer.start_span(tracing.SPAN_PREEMPT, context=s.traces.get(pre.request_id))
        for key, value in ((tracing.ATTR_REQUEST_ID, pre.request_id), (tracing.ATTR_INSTANCE, pre.instance_id),
                           (tracing.ATTR_REASON, pre.reason), (tracing.ATTR_POLICY, s.policy.name)):
            span.set_attribute(key, value)
        tracing.set_slo_attributes(span, running.spec.slo.ttft_ms, running.spec.slo.tpot_ms)

        async def tell_worker() -> None:
            result = "sent"
            try:
                reply = await s.workers[address].Abort(
                    worker_pb2.WorkerAbortRequest(request_id=pre.request_id, preempt=True, reason=pre.reason),
                    timeout=s.config.worker_call_timeout_s,
                    metadata=grpcutil.outgoing_metadata(context=trace.set_span_in_context(span)))
                result = "sent" if reply.found else "gone"
            except grpc.aio.AioRpcError as err:
                # It keeps running there; count it again so budgets stay honest.
                result = "failed"
                log.warning("preempt %s on %s not delivered: %s", pre.request_id, pre.instance_id, err.code().name)
                s.state.place(pre.instance_id, running.spec, running.placed_s, running.role)
            finally:
                span.set_attribute(tracing.ATTR_PREEMPT_DELIVERY, result)
                span.end()
            metrics.PREEMPTIONS.labels(s.policy.name, result).inc()

        s.background.spawn(tell_worker())

    def take(self, request_id: str) -> RequestSpec | None:
        entry = self.servicer.state.waiting.pop(request_id, None)
        if entry is None:
            return None
        self._entries[request_id] = entry
        return entry.spec

    def count(self, leg: Leg, spec: RequestSpec) -> None:
        self.servicer.state.place(leg.instance_id, spec, self.now_s, leg.role)

    def settle(self, decision: Decision, spec: RequestSpec) -> None:
        entry = self._entries.pop(decision.request_id)
        # Addresses taken now: the registry may drop an instance before Place resumes.
        addresses: dict[str, str] = {}
        if decision.verdict is not Verdict.REJECT:
            addresses = {leg.instance_id: _address(self.snapshot, leg.instance_id) for leg in decision.stages()}
            metrics.PLACEMENTS.labels(self.servicer.policy.name, _mode(decision, self.snapshot)).inc()
        else:
            self.servicer.refused.append(spec)   # what the role loop counts against the stages
        if not entry.future.done():
            entry.future.set_result((decision, addresses))


def _address(snapshot: ClusterSnapshot, instance_id: str) -> str:
    """The address of an instance the policy chose from this snapshot (so it is there)."""
    view = snapshot.get(instance_id)
    if view is None:
        raise RuntimeError(f"the policy chose {instance_id}, which is not in its snapshot")
    return view.address
