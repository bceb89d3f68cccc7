"""benchmarks/peer/ttft_spans.py: one request's TTFT split from its spans (router, scheduler,
worker), so that a miss is charged to the stage that took the time."""

from __future__ import annotations

from benchmarks.peer import ttft_spans
from services.common import tracing
from services.common.spanstore import SpanEvent, SpanRecord


def _span(name: str, start: float, end: float, trace: str = "t1", attrs=None, events=()) -> SpanRecord:
    return SpanRecord(trace_id=trace, span_id=f"{name}-{trace}", parent_id="", name=name, service="x",
                      start_unix_s=start, end_unix_s=end, attributes=dict(attrs or {}), events=tuple(events))


def test_a_placed_request_is_split_into_queue_worker_engine_and_after():
    spans = [
        _span(tracing.SPAN_ROUTER, 100.000, 101.0, attrs={tracing.ATTR_TTFT_MS: 250.0, tracing.ATTR_REQUEST_ID: "r1",
                                                          tracing.ATTR_INSTANCE: "i0"}),
        _span(tracing.SPAN_PLACE, 100.002, 100.120, attrs={tracing.ATTR_QUEUE_WAIT_MS: 115.0,
                                                           tracing.ATTR_REASON: "fits"}),
        _span(tracing.SPAN_WORKER, 100.125, 101.0, attrs={tracing.ATTR_PREFILL_BEFORE_MS: 40.0},
              events=[SpanEvent(tracing.EVENT_FIRST_TOKEN, 100.225)]),
    ]
    (row,) = ttft_spans.rows(spans)
    assert row.placed_by == "place" and row.queue_wait_ms == 115.0
    assert round(row.to_worker_ms, 3) == 125.0 and round(row.engine_ms, 3) == 100.0
    assert round(row.after_ms, 3) == 25.0 and row.prefill_other_ms == 40.0
    text = ttft_spans.report([row], ttft_ms=200.0, top=5)
    assert "over 200 ms: 1" in text


def test_a_ticket_has_no_queue_wait_and_requests_of_other_traces_stay_apart():
    spans = [
        _span(tracing.SPAN_ROUTER, 1.0, 2.0, trace="a", attrs={tracing.ATTR_TTFT_MS: 30.0}),
        _span(tracing.SPAN_PLACE, 1.001, 1.001, trace="a", attrs={tracing.ATTR_REASON: "ticket"}),
        _span(tracing.SPAN_ROUTER, 1.5, 2.0, trace="b", attrs={tracing.ATTR_TTFT_MS: 300.0}),
        _span(tracing.SPAN_PLACE, 1.5, 1.7, trace="b", attrs={tracing.ATTR_QUEUE_WAIT_MS: 200.0}),
    ]
    a, b = ttft_spans.rows(spans)
    assert (a.placed_by, a.queue_wait_ms, b.placed_by, b.queue_wait_ms) == ("ticket", 0.0, "place", 200.0)
    assert "over 200 ms: 1" in ttft_spans.report([a, b], ttft_ms=200.0, top=5)


def test_by_class_counts_each_request_against_its_own_slo_and_the_refused_apart():
    spans = [
        _span(tracing.SPAN_ROUTER, 1.0, 2.0, trace="a", attrs={
            tracing.ATTR_TTFT_MS: 60.0, tracing.ATTR_TASK_CLASS: "code", tracing.ATTR_TTFT_SLO_MS: 46.0,
            tracing.ATTR_SLO_MISSED: "ttft"}),
        _span(tracing.SPAN_ROUTER, 1.1, 2.0, trace="b", attrs={
            tracing.ATTR_TTFT_MS: 60.0, tracing.ATTR_TASK_CLASS: "chat", tracing.ATTR_TTFT_SLO_MS: 109.0}),
        _span(tracing.SPAN_ROUTER, 1.2, 1.3, trace="c", attrs={
            tracing.ATTR_TASK_CLASS: "chat", tracing.ATTR_VERDICT: "reject"}),
    ]
    text = ttft_spans.by_class(ttft_spans.rows(spans), ttft_spans.refused(spans))
    assert "chat: 1 served (met 1), 1 refused; TTFT SLO 109 ms, 0 over it" in text
    assert "code: 1 served (ttft 1), 0 refused; TTFT SLO 46 ms, 1 over it" in text
