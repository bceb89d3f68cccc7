"""OpenTelemetry set-up and W3C trace-context propagation through gRPC metadata.

Each process calls `setup(service_name, exporter)` once at start; exporter is "off", "console",
"otlp" with an endpoint (host:port of an OTLP/gRPC collector such as Jaeger's), or "file" with a
directory: the local span store (spanstore.py) that `hfx up` uses by default and `hfx explain`
reads. The span attribute names every service uses, and the SLO rule they record, live here.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

# Attribute names used across services, so a tracing UI can filter on them.
ATTR_REQUEST_ID = "hfx.request_id"
ATTR_TTFT_SLO_MS = "hfx.slo.ttft_ms"
ATTR_TPOT_SLO_MS = "hfx.slo.tpot_ms"
ATTR_PRIORITY = "hfx.priority"
ATTR_TASK_CLASS = "hfx.task_class"
ATTR_INSTANCE = "hfx.instance_id"
ATTR_LEGS = "hfx.legs"                 # a split placement: "prefill:p0 -> decode:d1"
ATTR_VERDICT = "hfx.verdict"
ATTR_REASON = "hfx.reason"
ATTR_POLICY = "hfx.policy"
ATTR_TTFT_MS = "hfx.ttft_ms"
ATTR_TPOT_MS = "hfx.tpot_ms"
ATTR_SLO_MET = "hfx.slo_met"
ATTR_PROMPT_TOKENS = "hfx.prompt_tokens"
ATTR_OUTPUT_TOKENS = "hfx.output_tokens"
ATTR_SLO_MISSED = "hfx.slo.missed"            # which SLOs a finished request missed: "ttft", "tpot", "ttft,tpot", ""
ATTR_OUTCOME = "hfx.outcome"
# The decision and what it saw (scheduler.place).
ATTR_PREDICTED_TTFT_MS = "hfx.predicted_ttft_ms"
ATTR_SLACK_MS = "hfx.slack_ms"
ATTR_BUDGET_MS = "hfx.budget_ms"              # the chosen instance's budget when the policy keeps budgets
ATTR_QUEUE_WAIT_MS = "hfx.queue_wait_ms"      # enqueued in the scheduler -> decided
ATTR_RESUMED_TOKENS = "hfx.resumed_tokens"    # > 0: a placement after a preemption
ATTR_LOAD_RUNNING = "hfx.load.running_requests"
ATTR_LOAD_WAITING = "hfx.load.waiting_requests"
ATTR_LOAD_KV_USAGE = "hfx.load.kv_usage"
ATTR_LOAD_AGE_MS = "hfx.load.report_age_ms"   # how old the chosen instance's load report was
# Prefills of other requests on the same worker while this one ran (worker.generate): before its
# first token (it queued or shared steps behind them) and during its decode (they shared its steps).
ATTR_PREFILL_BEFORE_MS = "hfx.interference.prefill_before_first_token_ms"
ATTR_PREFILL_BEFORE_TOKENS = "hfx.interference.prefill_before_first_token_tokens"
ATTR_PREFILL_DURING_MS = "hfx.interference.prefill_during_decode_ms"
ATTR_PREFILL_DURING_TOKENS = "hfx.interference.prefill_during_decode_tokens"
ATTR_PREFILL_REQUESTS = "hfx.interference.requests"  # the other requests, largest overlap first
ATTR_PREEMPT_DELIVERY = "hfx.preempt.delivery"  # scheduler.preempt: the Abort was sent | gone | failed
ATTR_ABORT_FOUND = "hfx.abort.found"            # worker.abort: the request was running here
ATTR_WEIGHTS_DONOR = "hfx.weights.donor"        # worker.load_weights / prepare_weights: the donor's address
ATTR_WEIGHTS_SOURCE = "hfx.weights.source"      # worker.load_weights: how the weights came (describe_weights)
ATTR_WEIGHTS_PREPARED = "hfx.weights.prepared"  # worker.prepare_weights: mapped ahead, or why not (detail)
ATTR_WEIGHTS_SECONDS = "hfx.weights.seconds"
# Span and event names `hfx explain` reads.
SPAN_ROUTER = "router.generate"
SPAN_PLACE = "scheduler.place"
SPAN_COMPLETE = "scheduler.complete"
SPAN_PREEMPT = "scheduler.preempt"
SPAN_WORKER = "worker.generate"
SPAN_WORKER_ABORT = "worker.abort"
SPAN_SET_ROLE = "worker.set_role"              # a role change (issue 11), with its reason
SPAN_SCALER_SET_ROLE = "scaler.set_role"
SPAN_LOAD_WEIGHTS = "worker.load_weights"     # a standby taking its weights (issue 12): donor or storage
SPAN_PREPARE_WEIGHTS = "worker.prepare_weights"  # a standby mapping its donor's weights ahead of the pull
SPAN_KV_PREFIX = "kv."                        # KV transfer spans (P/D), whatever their suffix
SPAN_KV_TRANSFER = "kv.transfer"              # D's pull of a split request's KV from P (worker, decode leg)
ATTR_KV_TRANSFER_ID = "hfx.kv.transfer_id"
ATTR_KV_FROM = "hfx.kv.from"                  # P's KV server address
ATTR_KV_BYTES = "hfx.kv.bytes"
ATTR_KV_BLOCKS = "hfx.kv.blocks"
ATTR_KV_MS = "hfx.kv.ms"
ATTR_KV_OUTCOME = "hfx.kv.outcome"            # ok, local-hit, or why it failed (the prefill was recomputed)
EVENT_FIRST_TOKEN = "first_token"
EVENT_PREEMPTED = "preempted"
EVENT_RESUMED = "resumed"


def slo_misses(ttft_target_ms: float, tpot_target_ms: float, ttft_ms: float, tpot_ms: float,
               tokens: int) -> dict[str, float]:
    """The one SLO rule (DESIGN: TTFT <= its target and mean TPOT over the decode <= its target;
    TPOT counts only with 2+ tokens): each missed SLO with how many ms it was over."""
    missed = {}
    if ttft_ms > ttft_target_ms:
        missed["ttft"] = ttft_ms - ttft_target_ms
    if tokens >= 2 and tpot_ms > tpot_target_ms:
        missed["tpot"] = tpot_ms - tpot_target_ms
    return missed


def set_slo_attributes(span, ttft_target_ms: float, tpot_target_ms: float, ttft_ms: float | None = None,
                       tpot_ms: float = 0.0, tokens: int = 0, finished: bool = True) -> None:
    """Targets always; measured TTFT/TPOT and the verdict once measured (ttft_ms not None). A
    request that did not finish (aborted, failed, preempted leg) is not met."""
    span.set_attribute(ATTR_TTFT_SLO_MS, ttft_target_ms)
    span.set_attribute(ATTR_TPOT_SLO_MS, tpot_target_ms)
    if ttft_ms is None:
        return
    missed = slo_misses(ttft_target_ms, tpot_target_ms, ttft_ms, tpot_ms, tokens)
    span.set_attribute(ATTR_TTFT_MS, ttft_ms)
    span.set_attribute(ATTR_TPOT_MS, tpot_ms)
    span.set_attribute(ATTR_SLO_MET, finished and not missed)
    span.set_attribute(ATTR_SLO_MISSED, ",".join(missed))


@dataclass(frozen=True)
class TracingConfig:
    exporter: str = "off"  # off | console | otlp | file
    otlp_endpoint: str = "127.0.0.1:4317"
    directory: str = ""    # exporter "file": the local span store's directory

    @staticmethod
    def parse(spec: str) -> "TracingConfig":
        """'off', 'console', 'otlp' (default endpoint), 'otlp=HOST:PORT' or 'file=DIR'."""
        kind, _, value = spec.partition("=")
        if kind == "file":
            if not value:
                raise ValueError("tracing: file=DIR needs a directory")
            return TracingConfig("file", directory=value)
        if kind not in {"off", "console", "otlp"}:
            raise ValueError(f"tracing: expected off, console, otlp, otlp=HOST:PORT or file=DIR, got {spec!r}")
        return TracingConfig(kind, value or TracingConfig.otlp_endpoint)

    def spec(self) -> str:
        """The text parse() reads back (handed on to child processes)."""
        if self.exporter == "otlp":
            return f"otlp={self.otlp_endpoint}"
        return f"file={self.directory}" if self.exporter == "file" else self.exporter


_provider: TracerProvider | None = None


def setup(service_name: str, config: TracingConfig) -> None:
    global _provider
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if config.exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=True, timeout=5)
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    elif config.exporter == "file":
        provider.add_span_processor(store_processor(config.directory, service_name))
    trace.set_tracer_provider(provider)
    _provider = provider


def store_processor(directory: str, service_name: str) -> SimpleSpanProcessor:
    """The local span store's processor: each span is appended when it ends, on the thread that
    ends it (for HFX's services, the event loop). A line appended to a local file costs tens of
    microseconds. With a batch processor's thread doing the same work every 500 ms, the TTFT
    tail on a saturated machine was longer in 8 of 11 A/B pairs; the likely cause is that the
    thread takes the GIL from the event loop and can lose its core while holding it
    (BENCHMARKS.md, issue 9, fifteenth session). Nothing queues, so nothing is dropped in a
    burst or lost when a process dies. OTLP stays batched: it sends over the network, which
    must never block the loop."""
    from services.common.spanstore import JsonLinesSpanExporter

    return SimpleSpanProcessor(JsonLinesSpanExporter.for_process(directory, service_name))


def shutdown() -> None:
    """Flushes pending spans; called on process exit so the last requests' spans are not lost."""
    if _provider is not None:
        _provider.force_flush(timeout_millis=5000)
        _provider.shutdown()


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject_metadata(context=None) -> dict[str, str]:
    """W3C trace headers for `context` (default: the current one)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


@contextlib.contextmanager
def detached_span(span_tracer: trace.Tracer, name: str, parent) -> Iterator[tuple[trace.Span, object]]:
    """A span for async generators: yields (span, its context) without attaching it.

    gRPC may close a streaming handler's generator from another task, where detaching a context
    attached in the generator fails ("created in a different Context"); so nothing is attached,
    and callers pass the yielded context explicitly to whatever propagates it.
    """
    span = span_tracer.start_span(name, context=parent)
    try:
        yield span, trace.set_span_in_context(span, parent)
    except (GeneratorExit, asyncio.CancelledError):
        raise
    except BaseException as err:
        span.record_exception(err)
        span.set_status(Status(StatusCode.ERROR, f"{type(err).__name__}: {err}"))
        raise
    finally:
        span.end()


def extract_context(metadata: Iterable[tuple[str, str]] | Mapping[str, str] | None):
    """The parent context carried by an incoming call's metadata (W3C traceparent)."""
    items = metadata.items() if isinstance(metadata, Mapping) else (metadata or ())
    carrier = {k: v for k, v in items if isinstance(v, str)}
    return propagate.extract(carrier)
