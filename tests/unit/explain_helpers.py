"""Hand-built spans of one request, as the services record them (tests of hfx explain)."""

from __future__ import annotations

import itertools

from services.common import tracing as t
from services.common.spanstore import SpanEvent, SpanRecord

T0 = 1_800_000_000.0
TRACE = "ab" * 16
_ids = itertools.count(1)


def span(name: str, start: float, end: float, parent: str = "", service: str = "", trace: str = TRACE,
         events: tuple[SpanEvent, ...] = (), **attrs) -> SpanRecord:
    """start/end in seconds after T0; attrs with '__' for '.' (hfx__slo_met -> hfx.slo_met)."""
    return SpanRecord(trace_id=trace, span_id=f"{next(_ids):016x}", parent_id=parent, name=name, service=service,
                      start_unix_s=T0 + start, end_unix_s=T0 + end, events=events,
                      attributes={k.replace("__", "."): v for k, v in attrs.items()})


def router(rid: str, end: float, ttft_ms: float, tpot_ms: float, tokens: int, slo=(300.0, 50.0), met=None,
           **attrs) -> SpanRecord:
    missed = t.slo_misses(slo[0], slo[1], ttft_ms, tpot_ms, tokens)
    return span(t.SPAN_ROUTER, 0.0, end, service="hfx-router", **{
        t.ATTR_REQUEST_ID: rid, t.ATTR_TTFT_SLO_MS: slo[0], t.ATTR_TPOT_SLO_MS: slo[1], t.ATTR_TTFT_MS: ttft_ms,
        t.ATTR_TPOT_MS: tpot_ms, t.ATTR_OUTPUT_TOKENS: tokens, t.ATTR_PROMPT_TOKENS: 12,
        t.ATTR_SLO_MET: (not missed) if met is None else met, t.ATTR_OUTCOME: "OUTCOME_FINISHED",
        t.ATTR_VERDICT: "admit", **attrs})


def place(rid: str, start: float, end: float, instance: str = "w0", resumed: int = 0, **attrs) -> SpanRecord:
    return span(t.SPAN_PLACE, start, end, service="hfx-scheduler", **{
        t.ATTR_REQUEST_ID: rid, t.ATTR_VERDICT: "admit", t.ATTR_INSTANCE: instance, t.ATTR_POLICY: "hfx",
        t.ATTR_REASON: f"slack 100 ms; budget 40 ms; best-fit -> {instance} (1 fit)", t.ATTR_RESUMED_TOKENS: resumed,
        t.ATTR_PREDICTED_TTFT_MS: 50.0, t.ATTR_SLACK_MS: 100.0, t.ATTR_BUDGET_MS: 40.0,
        t.ATTR_QUEUE_WAIT_MS: (end - start) * 1000, t.ATTR_LOAD_RUNNING: 1, **attrs})


def worker(rid: str, start: float, end: float, first: float | None, tokens: int, instance: str = "w0",
           preempted: bool = False, before_ms: float = 0.0, during_ms: float = 0.0, others=(), **attrs) -> SpanRecord:
    events = ((SpanEvent(t.EVENT_FIRST_TOKEN, T0 + first),) if first is not None else ()) + (
        (SpanEvent(t.EVENT_PREEMPTED, T0 + end, {"reason": "budget"}),) if preempted else ())
    return span(t.SPAN_WORKER, start, end, service="hfx-worker", events=events, **{
        t.ATTR_REQUEST_ID: rid, t.ATTR_INSTANCE: instance, t.ATTR_OUTPUT_TOKENS: tokens,
        t.ATTR_PREFILL_BEFORE_MS: before_ms, t.ATTR_PREFILL_BEFORE_TOKENS: 1900 if before_ms else 0,
        t.ATTR_PREFILL_DURING_MS: during_ms, t.ATTR_PREFILL_DURING_TOKENS: 1900 if during_ms else 0,
        t.ATTR_PREFILL_REQUESTS: list(others), **attrs})
