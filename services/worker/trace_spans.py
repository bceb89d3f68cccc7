"""What the worker puts on a request's span (worker.generate) when its leg here ends: the SLO
targets, the TTFT and TPOT as the client saw them (from the router's arrival time), the verdict,
and the other requests' prefills that ran alongside (interference.py)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common import tracing
from services.common.pb.hfx.v1 import worker_pb2
from services.worker.interference import Interference


@dataclass
class LegTimes:
    """This worker's part of a request: when its first and latest tokens left, how many."""

    first_s: float | None = None
    last_s: float | None = None
    tokens: int = 0

    def on_tokens(self, count: int, now_s: float) -> bool:
        """True on this leg's first token."""
        if count <= 0:
            return False
        first = self.first_s is None
        if first:
            self.first_s = now_s
        self.last_s, self.tokens = now_s, self.tokens + count
        return first

    @property
    def tpot_ms(self) -> float:
        """Mean gap between this leg's tokens; 0 under two tokens."""
        if self.tokens < 2 or self.first_s is None or self.last_s is None:
            return 0.0
        return (self.last_s - self.first_s) * 1000.0 / (self.tokens - 1)


def record_leg(span, request: worker_pb2.WorkerGenerateRequest, leg: LegTimes, finished: bool,
               seen: Interference) -> None:
    """`finished`: the engine ended the request here (not preempted, aborted or failed)."""
    if request.HasField("slo"):
        ttft_ms = None
        first_s = request.first_token_unix_s or leg.first_s
        if request.arrival_unix_s and first_s is not None:
            ttft_ms = (first_s - request.arrival_unix_s) * 1000.0
        tracing.set_slo_attributes(span, request.slo.ttft_ms, request.slo.tpot_ms, ttft_ms, leg.tpot_ms, leg.tokens,
                                   finished)
    for key, value in ((tracing.ATTR_PREFILL_BEFORE_MS, seen.before_first_ms),
                       (tracing.ATTR_PREFILL_BEFORE_TOKENS, seen.before_first_tokens),
                       (tracing.ATTR_PREFILL_DURING_MS, seen.during_decode_ms),
                       (tracing.ATTR_PREFILL_DURING_TOKENS, seen.during_decode_tokens)):
        span.set_attribute(key, value)
    if seen.requests:
        span.set_attribute(tracing.ATTR_PREFILL_REQUESTS, list(seen.requests[:8]))


def record_kv_pull(span_tracer, parent, request_id: str, instance_id: str, from_address: str, pull: dict) -> None:
    """A kv.transfer span under the decode leg's span, over the pull's own start and end (D's
    connector reported them): its bytes, blocks, ms and outcome (anything but ok / local-hit means
    the engine recomputed the prefill: no tokens from that KV)."""
    start, end = float(pull.get("start_unix_s", 0.0)), float(pull.get("end_unix_s", 0.0))
    timed = 0.0 < start <= end
    span = span_tracer.start_span(tracing.SPAN_KV_TRANSFER, context=parent,
                                  start_time=int(start * 1e9) if timed else None)
    for key, value in ((tracing.ATTR_REQUEST_ID, request_id), (tracing.ATTR_INSTANCE, instance_id),
                       (tracing.ATTR_KV_TRANSFER_ID, pull.get("transfer_id", "")), (tracing.ATTR_KV_FROM, from_address),
                       (tracing.ATTR_KV_BYTES, int(pull.get("bytes", 0))), (tracing.ATTR_KV_BLOCKS, int(pull.get("blocks", 0))),
                       (tracing.ATTR_KV_MS, float(pull.get("ms", 0.0))), (tracing.ATTR_KV_OUTCOME, str(pull.get("outcome", "")))):
        span.set_attribute(key, value)
    span.end(end_time=int(end * 1e9) if timed else None)
