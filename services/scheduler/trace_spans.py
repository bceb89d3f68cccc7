"""What the scheduler puts on a request's trace: the decision with what it saw (on
scheduler.place), the end as the router measured it (scheduler.complete), and the trace context
of each placed request, kept until it ends so a preemption joins the request's trace."""

from __future__ import annotations

import time
from collections import OrderedDict

from services.common import tracing
from services.common.domain import Decision, InstanceLoad
from services.common.pb.hfx.v1 import scheduler_pb2

_tracer = tracing.tracer("hfx.scheduler")


class RequestTraces:
    """request id -> the trace context it was placed under. Bounded: a request whose end never
    arrives (its router died) is dropped oldest first once `limit` are kept."""

    def __init__(self, limit: int = 100_000) -> None:
        self._contexts: OrderedDict[str, object] = OrderedDict()
        self._limit = limit

    def remember(self, request_id: str, context) -> None:
        if context is None:
            return
        self._contexts[request_id] = context
        self._contexts.move_to_end(request_id)
        while len(self._contexts) > self._limit:
            self._contexts.popitem(last=False)

    def get(self, request_id: str):
        return self._contexts.get(request_id)

    def forget(self, request_id: str) -> None:
        self._contexts.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._contexts)


def decision_attributes(span, decision: Decision, load: InstanceLoad | None) -> None:
    """The verdict, its reason and numbers, and the chosen instance's load report as the policy
    saw it (how old, how busy): a stale or busy report explains a bad placement."""
    span.set_attribute(tracing.ATTR_VERDICT, decision.verdict.value)
    span.set_attribute(tracing.ATTR_REASON, decision.reason)
    span.set_attribute(tracing.ATTR_INSTANCE, decision.instance_id)
    if not decision.instance_id:
        return
    span.set_attribute(tracing.ATTR_PREDICTED_TTFT_MS, decision.predicted_ttft_ms)
    span.set_attribute(tracing.ATTR_SLACK_MS, decision.slack_ms)
    if decision.budget_ms is not None:
        span.set_attribute(tracing.ATTR_BUDGET_MS, decision.budget_ms)
    if load is not None:
        span.set_attribute(tracing.ATTR_LOAD_RUNNING, load.running_requests)
        span.set_attribute(tracing.ATTR_LOAD_WAITING, load.waiting_requests)
        span.set_attribute(tracing.ATTR_LOAD_KV_USAGE, load.kv_usage)
        if load.reported_s:
            span.set_attribute(tracing.ATTR_LOAD_AGE_MS, max(0.0, (time.time() - load.reported_s) * 1000.0))


def complete_span(request: scheduler_pb2.CompleteRequest, running, parent) -> None:
    """A zero-length span on the request's trace recording its end as the router measured it.
    `running`: the scheduler's record of it (its SLO targets), None when it no longer had one."""
    span = _tracer.start_span(tracing.SPAN_COMPLETE, context=parent)
    span.set_attribute(tracing.ATTR_REQUEST_ID, request.request_id)
    span.set_attribute(tracing.ATTR_INSTANCE, request.instance_id)
    span.set_attribute(tracing.ATTR_OUTCOME, scheduler_pb2.Outcome.Name(request.outcome))
    span.set_attribute(tracing.ATTR_OUTPUT_TOKENS, request.output_tokens)
    if running is not None:
        slo = running.spec.slo
        tracing.set_slo_attributes(span, slo.ttft_ms, slo.tpot_ms, request.ttft_ms, request.tpot_ms,
                                   request.output_tokens, request.outcome == scheduler_pb2.OUTCOME_FINISHED)
    span.set_attribute(tracing.ATTR_SLO_MET, request.slo_met)  # the router's verdict is the verdict
    span.end()
