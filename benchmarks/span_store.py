"""What the local span store costs: CPU per request to write its spans, bytes per request on disk,
and how long `hfx explain` takes to read a store of N requests and explain one.

    python -m benchmarks.span_store --requests 20000

Each synthetic request has the spans a colocated request has in a live mesh (router.generate,
scheduler.place, worker.generate with a first_token event, scheduler.complete) with the same
attributes, made by the real OpenTelemetry SDK in one process. CPU is this process's CPU time
(the SDK's batch thread included), with tracing "off" (the SDK still records spans, no exporter:
what `--tracing off` costs) against the JSON-lines store.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import set_span_in_context

from services.common import tracing as t
from services.common.spanstore import read_spans
from services.explain import analysis


def _one_request(tracer, i: int) -> None:
    rid = f"r-{i:016x}"
    root = tracer.start_span(t.SPAN_ROUTER)
    for key, value in ((t.ATTR_REQUEST_ID, rid), (t.ATTR_PRIORITY, 1), (t.ATTR_TASK_CLASS, "chat"),
                       (t.ATTR_PROMPT_TOKENS, 200), (t.ATTR_VERDICT, "admit"), (t.ATTR_POLICY, "hfx"),
                       (t.ATTR_REASON, "slack 812 ms; predicted TTFT 40 of 1000 ms; budget 35 ms; best-fit -> hfx-w0 (2 fit)"),
                       (t.ATTR_INSTANCE, "hfx-w0"), (t.ATTR_OUTPUT_TOKENS, 64), (t.ATTR_OUTCOME, "OUTCOME_FINISHED")):
        root.set_attribute(key, value)
    ctx = set_span_in_context(root)
    place = tracer.start_span(t.SPAN_PLACE, context=ctx)
    for key, value in ((t.ATTR_REQUEST_ID, rid), (t.ATTR_POLICY, "hfx"), (t.ATTR_RESUMED_TOKENS, 0),
                       (t.ATTR_VERDICT, "admit"), (t.ATTR_REASON, "slack 812 ms; budget 35 ms"),
                       (t.ATTR_INSTANCE, "hfx-w0"), (t.ATTR_PREDICTED_TTFT_MS, 40.0), (t.ATTR_SLACK_MS, 812.0),
                       (t.ATTR_BUDGET_MS, 35.0), (t.ATTR_QUEUE_WAIT_MS, 1.2), (t.ATTR_LOAD_RUNNING, 3),
                       (t.ATTR_LOAD_WAITING, 0), (t.ATTR_LOAD_KV_USAGE, 0.1), (t.ATTR_LOAD_AGE_MS, 12.0)):
        place.set_attribute(key, value)
    t.set_slo_attributes(place, 1000.0, 100.0)
    place.end()
    work = tracer.start_span(t.SPAN_WORKER, context=ctx)
    for key, value in ((t.ATTR_REQUEST_ID, rid), (t.ATTR_INSTANCE, "hfx-w0"), (t.ATTR_PROMPT_TOKENS, 200),
                       (t.ATTR_OUTPUT_TOKENS, 64), (t.ATTR_PREFILL_BEFORE_MS, 0.0), (t.ATTR_PREFILL_BEFORE_TOKENS, 0),
                       (t.ATTR_PREFILL_DURING_MS, 12.0), (t.ATTR_PREFILL_DURING_TOKENS, 180)):
        work.set_attribute(key, value)
    work.set_attribute(t.ATTR_PREFILL_REQUESTS, [f"r-{i + 1:016x}"])
    work.add_event(t.EVENT_FIRST_TOKEN)
    t.set_slo_attributes(work, 1000.0, 100.0, 40.0, 8.0, 64, True)
    work.end()
    done = tracer.start_span(t.SPAN_COMPLETE, context=ctx)
    done.set_attribute(t.ATTR_REQUEST_ID, rid)
    t.set_slo_attributes(done, 1000.0, 100.0, 40.0, 8.0, 64, True)
    done.end()
    t.set_slo_attributes(root, 1000.0, 100.0, 41.0, 8.1, 64, True)
    root.end()


def _write(requests: int, directory: Path | None) -> float:
    """CPU seconds to make (and, with a directory, store) `requests` requests' spans."""
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    if directory is not None:
        provider.add_span_processor(t.store_processor(str(directory), "bench"))  # as `--tracing file=DIR` sets up
    tracer = provider.get_tracer("bench")
    started = time.process_time()
    for i in range(requests):
        _one_request(tracer, i)
    provider.force_flush()
    provider.shutdown()
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000, help="synthetic requests (default %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        off_s = _write(args.requests, None)
        on_s = _write(args.requests, store)
        size = sum(p.stat().st_size for p in store.glob("*.jsonl"))
        wall = time.perf_counter()
        spans = read_spans(store)
        read_s = time.perf_counter() - wall
        wall = time.perf_counter()
        ids = analysis.request_ids(spans)
        exp = analysis.explain(spans, ids[len(ids) // 2])
        explain_s = time.perf_counter() - wall
    per = 1e6 / args.requests
    print(f"requests: {args.requests} ({len(spans)} spans)")
    print(f"CPU per request, tracing off (SDK spans, no exporter): {off_s * per:.0f} us")
    print(f"CPU per request, local span store:                     {on_s * per:.0f} us "
          f"(+{(on_s - off_s) * per:.0f} us for the store)")
    print(f"store size: {size / 1e6:.1f} MB ({size / args.requests:.0f} bytes per request)")
    print(f"hfx explain on this store: read {read_s:.2f} s, find + explain one request {explain_s:.2f} s "
          f"(cause {exp.cause or 'met'})")


if __name__ == "__main__":
    main()
