"""The local span store: real OTel SDK spans through JsonLinesSpanExporter, read back."""

from __future__ import annotations

import os
import threading

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.common import tracing
from services.common.spanstore import JsonLinesSpanExporter, prune, read_spans


def _provider(exporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "hfx-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_spans_round_trip_with_parent_attributes_and_events(tmp_path):
    exporter = JsonLinesSpanExporter.for_process(tmp_path, "hfx-test")
    tracer = _provider(exporter).get_tracer("t")
    with tracer.start_as_current_span("router.generate") as root:
        root.set_attribute(tracing.ATTR_REQUEST_ID, "r-1")
        root.set_attribute(tracing.ATTR_SLO_MET, False)
        root.set_attribute(tracing.ATTR_PREFILL_REQUESTS, ["r-a", "r-b"])
        # Propagated as a remote parent would be (W3C headers), as on Complete.
        carrier = tracing.inject_metadata()
    child = tracer.start_span("scheduler.complete", context=tracing.extract_context(carrier))
    child.add_event("first_token", {"n": 1})
    child.end()
    spans = read_spans(tmp_path)
    assert [s.name for s in spans] == ["router.generate", "scheduler.complete"]
    r, c = spans
    assert r.service == "hfx-test" and len(r.trace_id) == 32 and c.trace_id == r.trace_id
    assert c.parent_id == r.span_id and r.parent_id == ""
    assert r.attributes == {"hfx.request_id": "r-1", "hfx.slo_met": False, "hfx.interference.requests": ["r-a", "r-b"]}
    assert c.event("first_token").attributes == {"n": 1} and c.end_unix_s >= c.start_unix_s > 0
    assert read_spans(tmp_path, since_unix_s=c.end_unix_s + 1) == []


def test_a_torn_line_is_skipped_and_a_full_file_rotates(tmp_path):
    exporter = JsonLinesSpanExporter(tmp_path / "x.jsonl", max_bytes=1)
    tracer = _provider(exporter).get_tracer("t")
    tracer.start_span("one").end()
    tracer.start_span("two").end()   # x.jsonl is past 1 byte: it becomes x.old.jsonl first
    with (tmp_path / "x.jsonl").open("a") as out:
        out.write('{"trace_id": "ab", "name": "torn')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl", "x.old.jsonl"]
    assert sorted(s.name for s in read_spans(tmp_path)) == ["one", "two"]


def test_tracing_spec_round_trips():
    for spec in ("off", "console", "otlp=10.0.0.1:4317", "file=/tmp/t"):
        assert tracing.TracingConfig.parse(spec).spec() == spec
    assert tracing.TracingConfig.parse("otlp").spec() == "otlp=127.0.0.1:4317"


def test_slo_rule_and_attributes():
    assert tracing.slo_misses(300, 50, 301, 10, 5) == {"ttft": 1}
    assert tracing.slo_misses(300, 50, 100, 60, 5) == {"tpot": 10}
    assert tracing.slo_misses(300, 50, 100, 60, 1) == {}   # one token: no TPOT to miss

    class Recorder:
        def __init__(self):
            self.attributes = {}

        def set_attribute(self, key, value):
            self.attributes[key] = value

    span = Recorder()
    tracing.set_slo_attributes(span, 300, 50, 400, 10, 5, finished=True)
    assert span.attributes[tracing.ATTR_SLO_MET] is False and span.attributes[tracing.ATTR_SLO_MISSED] == "ttft"
    span = Recorder()
    tracing.set_slo_attributes(span, 300, 50, 100, 10, 5, finished=False)  # e.g. aborted
    assert span.attributes[tracing.ATTR_SLO_MET] is False and span.attributes[tracing.ATTR_SLO_MISSED] == ""
    span = Recorder()
    tracing.set_slo_attributes(span, 300, 50)
    assert set(span.attributes) == {tracing.ATTR_TTFT_SLO_MS, tracing.ATTR_TPOT_SLO_MS}




def test_prune_deletes_only_files_left_alone_long_enough(tmp_path):
    old, fresh = tmp_path / "a-1.jsonl", tmp_path / "b-2.jsonl"
    old.write_text("{}\n")
    fresh.write_text("{}\n")
    os.utime(old, (1000.0, 1000.0))
    os.utime(fresh, (5000.0, 5000.0))
    assert prune(tmp_path, max_age_s=2000.0, now_unix_s=6000.0) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["b-2.jsonl"]


def test_the_store_writes_a_span_when_it_ends_with_no_thread_or_flush_between(tmp_path):
    threads = threading.active_count()
    provider = TracerProvider(resource=Resource.create({"service.name": "hfx-router"}))
    provider.add_span_processor(tracing.store_processor(str(tmp_path), "hfx-router"))
    provider.get_tracer("t").start_span("router.generate").end()
    assert [s.name for s in read_spans(tmp_path)] == ["router.generate"]
    assert threading.active_count() == threads   # no exporter thread beside the event loop
    provider.shutdown()
