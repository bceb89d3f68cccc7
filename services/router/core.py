"""The router's request pipeline, shared by every front door (gRPC now, HTTP next).

Per request: validate + tokenise -> Scheduler.Place (bounded wait) -> Worker.Generate stream ->
deltas -> final result with measured TTFT/TPOT -> Scheduler.Complete. Tokens never pass through
the scheduler. Outcomes: FINISHED; ABORTED (the client left or asked to abort); FAILED (the
worker errored, closed early or went silent past the idle timeout: only then does the scheduler
stop placing on that instance).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import AsyncGenerator

from services.common import convert, metrics, tracing
from services.common.domain import FinishReason, RequestSpec, Verdict
from services.common.errors import HfxError, InvalidArgument, PermissionDenied, Rejected, Unavailable
from services.common.pb.hfx.v1 import common_pb2, router_pb2, scheduler_pb2, scheduler_pb2_grpc
from services.router.config import RouterConfig
from services.router.metrics import StreamTimer
from services.router.request_run import Phase, RequestRun
from services.router.scheduler_link import LinkDown, SchedulerLink
from services.router.sessions import Sessions, StreamFailed, TokenStream, WorkerSessionClient
from services.router.stall import StallWatch
from services.router.tokenizer import Tokenizer
from services.router.validate import Limits, ValidRequest, validate

log = logging.getLogger("hfx.router")
_tracer = tracing.tracer("hfx.router")

DEFAULT_RETRY_AFTER_MS = 1000.0


@dataclass(frozen=True)
class Placed:
    """generate()'s first item: admitted and placed, before any token. Front doors answer with
    their response headers here; errors before it (validation, admission) are statuses."""

    request_id: str
    instance_id: str


@dataclass
class Active:
    stream: TokenStream | None = None
    session: WorkerSessionClient | None = None
    aborted: bool = False

    def stop(self) -> None:
        """Stop listening and stop the worker (no-op once the stream finished)."""
        if self.stream is not None:
            self.stream.end()
            if self.session is not None:
                self.session.abort(self.stream.request_id)


class RouterCore:
    def __init__(self, config: RouterConfig, tokenizer: Tokenizer, scheduler: scheduler_pb2_grpc.SchedulerStub) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.classes = {c.name: c for c in config.classes}
        self.limits = Limits(
            vocab_size=tokenizer.vocab_size, max_model_len=tokenizer.max_model_len,
            default_max_tokens=config.default_max_tokens, max_prompt_bytes=config.max_prompt_bytes,
            max_stop_strings=config.max_stop_strings,
        )
        self.sessions = Sessions(config.first_token_timeout_s, config.token_idle_timeout_s)
        self.stalls = StallWatch(config.client_stall_timeout_s)   # front doors' writers to clients
        self.link = SchedulerLink(scheduler)  # Place and Complete, on one stream
        self._active: dict[str, Active] = {}  # by request id and by client request id
        self.inflight = 0                     # generate() calls in progress (bounded: max_inflight)

    # -- public ------------------------------------------------------------------------------

    async def generate(
        self, request: router_pb2.GenerateRequest, parent=None, max_priority: int | None = None
    ) -> AsyncGenerator[Placed | router_pb2.GenerateResponse, None]:
        """Placed, then deltas, then one final message. Raises InvalidArgument, PermissionDenied,
        Rejected or Unavailable (before Placed) or Unavailable (after it). `max_priority`: what
        the caller's API key allows."""
        arrival_s = time.time()
        if self.inflight >= self.config.max_inflight:
            metrics.record_request(self._class_label(request.task_class), "rejected")
            raise Rejected(f"router at its limit of {self.config.max_inflight} requests in flight", DEFAULT_RETRY_AFTER_MS)
        self.inflight += 1
        metrics.ROUTER_INFLIGHT.inc()
        try:
            async for item in self._generate(request, parent, arrival_s, max_priority):
                yield item
        finally:
            self.inflight -= 1
            metrics.ROUTER_INFLIGHT.dec()

    async def _generate(self, request: router_pb2.GenerateRequest, parent, arrival_s: float,
                        max_priority: int | None) -> AsyncGenerator[Placed | router_pb2.GenerateResponse, None]:
        with tracing.detached_span(_tracer, "router.generate", parent) as (span, ctx):
            try:
                valid = await self._validate(request, max_priority)
                spec = RequestSpec(
                    request_id=f"r-{uuid.uuid4().hex[:16]}", prompt_tokens=len(valid.prompt_token_ids),
                    max_tokens=valid.sampling.max_tokens, slo=valid.slo, priority=valid.priority,
                    task_class=valid.task_class, tenant=valid.tenant, arrival_s=arrival_s,
                )
                _request_attributes(span, spec)
                placement, redeem = await self._admit(spec, valid, span, ctx)
            except HfxError as err:
                metrics.record_request(self._class_label(request.task_class), _refusal_outcome(err))
                raise
            async for item in self._stream(spec, valid, placement, span, ctx, redeem):
                yield item

    async def _validate(self, request: router_pb2.GenerateRequest, max_priority: int | None) -> ValidRequest:
        """Validation and tokenising; a long text prompt is tokenised in a thread, so the streams
        this router relays meanwhile do not wait for it (a 1 MiB prompt takes ~100 ms)."""
        if len(request.text) > self.config.inline_tokenize_chars:
            return await asyncio.to_thread(validate, request, self.tokenizer.encode, self.classes, self.limits,
                                           max_priority)
        return validate(request, self.tokenizer.encode, self.classes, self.limits, max_priority)

    def _class_label(self, name: str) -> str:
        # Only configured classes become label values; anything else would be unbounded.
        name = name or "default"
        return name if name in self.classes else "unknown"

    def abort(self, request_id: str) -> bool:
        active = self._active.get(request_id)
        if active is None:
            return False
        active.aborted = True
        active.stop()
        return True

    # -- steps -------------------------------------------------------------------------------

    async def close(self) -> None:
        await self.stalls.close()
        await self.link.close()
        await self.sessions.close()

    async def _place(self, spec: RequestSpec, ctx) -> scheduler_pb2.Placement:
        """The scheduler's placement. A link that breaks (the scheduler restarting) is asked again
        on a new one with capped backoff, until the place deadline: the request waits out a
        restart instead of failing."""
        msg = convert.spec_to_pb(spec)
        msg.trace_context.update(tracing.inject_metadata(ctx))
        deadline = time.monotonic() + self.config.place_timeout_s
        backoff_s = 0.05
        while True:
            try:
                return await self.link.place(msg, max(0.001, deadline - time.monotonic()))
            except LinkDown as err:
                if time.monotonic() + backoff_s >= deadline:
                    raise Unavailable(f"{err.message} (asked again until the place deadline)") from None
                log.info("%s: %s; asking again in %.2fs", spec.request_id, err.message, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(1.0, backoff_s * 2)

    def _on_ticket(self, spec: RequestSpec, ctx) -> tuple[scheduler_pb2.Placement, scheduler_pb2.PlaceRequest] | None:
        """A placement from a ticket the scheduler granted ahead of time (no round trip), and the
        message that tells the scheduler the ticket was spent (sent by _stream, after the start); or None."""
        ticket = self.link.take_ticket(spec, time.time())
        if ticket is None:
            return None
        msg = convert.spec_to_pb(spec)
        msg.trace_context.update(tracing.inject_metadata(ctx))
        msg.ticket_id = ticket.ticket_id
        return scheduler_pb2.Placement(
            verdict=scheduler_pb2.VERDICT_ADMIT, instance_id=ticket.instance_id, address=ticket.address,
            reason=ticket.reason, policy=ticket.policy, predicted_ttft_ms=ticket.predicted_ttft_ms,
            request_id=spec.request_id), msg

    async def _admit(self, spec: RequestSpec, valid: ValidRequest, span,
                     ctx) -> tuple[scheduler_pb2.Placement, scheduler_pb2.PlaceRequest | None]:
        """The placement, and (placed on a ticket) the redemption to send once the worker's start is queued."""
        ticketed = self._on_ticket(spec, ctx)
        placement, redeem = ticketed if ticketed is not None else (await self._place(spec, ctx), None)
        verdict = convert.verdict_from_pb(placement.verdict)
        span.set_attribute(tracing.ATTR_VERDICT, verdict.value)
        span.set_attribute(tracing.ATTR_REASON, placement.reason)
        span.set_attribute(tracing.ATTR_POLICY, placement.policy)
        if verdict is Verdict.BEST_EFFORT and valid.on_miss == "reject":
            # Placed, but this class prefers a fast "no" to a slow answer: give the slot back.
            self._complete_later(spec, placement.instance_id, scheduler_pb2.OUTCOME_ABORTED, StreamTimer(spec.arrival_s),
                                 ctx)
            verdict = Verdict.REJECT
        if verdict is Verdict.REJECT:
            span.set_attribute(tracing.ATTR_SLO_MET, False)
            span.add_event("slo_missed", {"outcome": "rejected", "reason": placement.reason})
            # A best-effort placement carries no retry hint; the client still gets one.
            raise Rejected(placement.reason, placement.retry_after_ms or DEFAULT_RETRY_AFTER_MS)
        span.set_attribute(tracing.ATTR_INSTANCE, placement.instance_id)
        return placement, redeem

    async def _stream(self, spec: RequestSpec, valid: ValidRequest, placement: scheduler_pb2.Placement, span, ctx,
                      redeem: scheduler_pb2.PlaceRequest | None = None):
        """Drives the request's state machine (request_run.py) until a terminal phase: opens the
        worker stream, relays chunks, places it again after a preemption.

        Placed is yielded once the worker's start is queued, not before: the front door's answer
        to it (gRPC initial metadata, the HTTP response head) is a write to the client that
        waits for the loop and gRPC's poller, and the engine can prefill meanwhile instead of
        after it. A client that leaves at Placed still ends the request here (the finally).

        A ticket's redemption (`redeem`) is queued right after the start, not before: both are
        written in the order queued, and the scheduler's note is off the request's path while the
        start is on it (with the note first, a start reached its worker 1.4 ms p50 after the
        scheduler had the note; issue 9, eleventh session). The scheduler still hears of it before
        any later place or completion from this router (one link, in order)."""
        run = RequestRun(spec, valid, placement, StreamTimer(spec.arrival_s), failovers_left=self.config.max_failovers)
        announce: Placed | None = Placed(spec.request_id, placement.instance_id)
        prefill_address = ""
        active = Active()
        keys = [spec.request_id] + ([valid.client_request_id] if valid.client_request_id else [])
        for k in keys:
            self._active[k] = active
        try:
            while not run.phase.terminal:
                if run.phase is Phase.PLACED:
                    if run.split:
                        prefill_address = run.address()
                        span.add_event("prefill_leg", {"instance": run.placed.legs[0].instance_id,
                                                       "decode_instance": run.placed.legs[1].instance_id})
                    active.session = self.sessions[run.address()]
                    active.stream = active.session.start(_worker_request(run), tracing.inject_metadata(ctx))
                    if redeem is not None:
                        self.link.redeemed(redeem)
                        redeem = None
                    run.started()
                    if announce is not None:
                        yield announce
                        announce = None
                elif run.phase is Phase.TRANSFERRING:
                    if active.aborted:
                        run.stopped()
                        break
                    _transfer_event(span, run)
                    self._complete_later(spec, run.placed.legs[0].instance_id, scheduler_pb2.OUTCOME_FINISHED,
                                         run.timer, ctx, leg=common_pb2.ROLE_PREFILL)
                    active.session = self.sessions[run.address()]
                    active.stream = active.session.start(_worker_request(run), tracing.inject_metadata(ctx))
                    run.decode_started()
                elif run.phase in (Phase.RUNNING, Phase.PREFILLING):
                    if active.stream is None:  # started() and decode_started() follow opening it
                        raise RuntimeError(f"{spec.request_id}: no worker stream in phase {run.phase.value}")
                    try:
                        chunk = await active.stream.next()
                    except StreamFailed as err:
                        run.worker_failed(str(err), err.retryable)
                        if run.phase is Phase.FAILING_OVER:
                            # The scheduler hears of the failure before the place that follows
                            # (one link message, completions first): it will not pick it again.
                            self._complete_later(spec, run.failed_instances[-1], scheduler_pb2.OUTCOME_FAILED, run.timer,
                                                ctx)
                        continue
                    if chunk is None:  # aborted on request: finish cleanly with what we have
                        run.stopped()
                        break
                    now = time.time()
                    handoff = run.handoff_ms
                    if run.on_chunk(chunk, now):
                        if handoff < 0 <= run.handoff_ms:
                            metrics.ROUTER_PD_HANDOFF.observe(run.handoff_ms / 1000.0)
                            span.add_event("decode_first_token", {"handoff_ms": run.handoff_ms})
                        yield router_pb2.GenerateResponse(
                            delta=router_pb2.TokenDelta(token_ids=chunk.token_ids, text=chunk.text, emitted_unix_s=now))
                elif run.phase in (Phase.PREEMPTED, Phase.FAILING_OVER):
                    if active.aborted:
                        run.stopped()
                        break
                    why = "preempted" if run.phase is Phase.PREEMPTED else "failed over"
                    try:
                        run.placed_again(await self._resume(spec, run.left_from, len(run.generated), span, ctx, why))
                    except Unavailable as err:
                        run.not_placed_again(str(err))
            if run.phase is Phase.FAILED:
                raise Unavailable(run.error)
            yield router_pb2.GenerateResponse(final=_final(spec, run.last, run.timer, run.slo_met, run.finish))
        finally:
            if redeem is not None:   # never started (cannot happen today): the scheduler still counts it, then frees it
                self.link.redeemed(redeem)
            run.stopped()  # still running here: the client left (the generator was closed)
            for k in keys:
                self._active.pop(k, None)
            active.stop()  # no-op when finished; stops the worker when the client left
            if active.stream is not None and active.stream.merged:
                metrics.ROUTER_CHUNKS_MERGED.inc(active.stream.merged)
            if run.staged_unread:  # aborts travel to P too: free the KV no decode leg will read
                self.sessions[prefill_address].release(spec.request_id)
            if run.placement is not None:
                self._complete_later(spec, run.placement.instance_id, run.outcome, run.timer, ctx)
            _result_attributes(span, run)
            metrics.record_request(spec.task_class, _OUTCOME_LABELS[run.outcome], run.slo_met, run.timer.ttft_ms,
                                   run.timer.tpot_ms, run.timer.e2e_ms(time.time()), run.timer.tokens)
            log.info("%s %s on %s: %d tokens ttft %.1fms tpot %.1fms slo_met=%s (%s)", spec.request_id,
                     scheduler_pb2.Outcome.Name(run.outcome), run.instance_id, run.timer.tokens,
                     run.timer.ttft_ms, run.timer.tpot_ms, run.slo_met, run.last.reason)

    async def _resume(self, spec: RequestSpec, was_on: str, generated: int, span, ctx,
                      why: str = "preempted") -> scheduler_pb2.Placement:
        """Places a preempted (or failed-over) request again. Its next token is due when its mean
        TPOT would still hold (as the simulator requeues it), and the scheduler never rejects it
        for its SLO once it has streamed tokens."""
        resumed = spec.resumed(generated)
        span.add_event(why.replace(" ", "_"), {"instance": was_on, "output_tokens": generated})
        log.info("%s %s on %s after %d tokens; placing it again", spec.request_id, why, was_on, generated)
        try:
            placement = await self._place(resumed, ctx)
        except Unavailable as err:
            raise Unavailable(f"{why} after {generated} tokens; {err}") from None
        if convert.verdict_from_pb(placement.verdict) is Verdict.REJECT:
            raise Unavailable(f"{why} after {generated} tokens and not placed again: {placement.reason}")
        span.add_event("resumed", {"instance": placement.instance_id, "reason": placement.reason})
        return placement

    def _complete_later(self, spec: RequestSpec, instance_id: str, outcome: scheduler_pb2.Outcome,
                        timer: StreamTimer, ctx, leg: common_pb2.Role = common_pb2.ROLE_UNSPECIFIED) -> None:
        """Tells the scheduler the request ended (or, with leg ROLE_PREFILL, that its prefill leg on
        P did: P is free of it, D still holds it), off the client's path (batched on the link),
        with the request's trace context so the scheduler's record of the end joins its trace."""
        self.link.complete(scheduler_pb2.CompleteRequest(leg=leg,
            request_id=spec.request_id, instance_id=instance_id, outcome=outcome, ttft_ms=timer.ttft_ms,
            tpot_ms=timer.tpot_ms, output_tokens=timer.tokens, task_class=spec.task_class,
            slo_met=outcome == scheduler_pb2.OUTCOME_FINISHED and timer.slo_met(spec.slo),
            trace_context=tracing.inject_metadata(ctx),
        ))


_OUTCOME_LABELS = {scheduler_pb2.OUTCOME_FINISHED: "finished", scheduler_pb2.OUTCOME_ABORTED: "aborted",
                   scheduler_pb2.OUTCOME_FAILED: "failed"}


def _refusal_outcome(err: HfxError) -> str:
    if isinstance(err, (InvalidArgument, PermissionDenied)):
        return "invalid"
    return "rejected" if isinstance(err, Rejected) else "unavailable"


def _request_attributes(span, spec: RequestSpec) -> None:
    for key, value in (
        (tracing.ATTR_REQUEST_ID, spec.request_id), (tracing.ATTR_TTFT_SLO_MS, spec.slo.ttft_ms),
        (tracing.ATTR_TPOT_SLO_MS, spec.slo.tpot_ms), (tracing.ATTR_PRIORITY, spec.priority),
        (tracing.ATTR_TASK_CLASS, spec.task_class), (tracing.ATTR_PROMPT_TOKENS, spec.prompt_tokens),
    ):
        span.set_attribute(key, value)


def _worker_request(run: RequestRun):
    """The worker's request, with when the request arrived and (after a preemption) when its first
    token reached the client, so the worker's span measures the TTFT the client saw."""
    request = run.worker_request()
    request.arrival_unix_s = run.spec.arrival_s
    request.first_token_unix_s = run.timer.first_token_s or 0.0
    return request


def _result_attributes(span, run: RequestRun) -> None:
    timer, met, outcome = run.timer, run.slo_met, run.outcome
    finished = run.phase is Phase.FINISHED and timer.first_token_s is not None
    tracing.set_slo_attributes(span, run.spec.slo.ttft_ms, run.spec.slo.tpot_ms, timer.ttft_ms, timer.tpot_ms,
                               timer.tokens, finished)
    span.set_attribute(tracing.ATTR_OUTPUT_TOKENS, timer.tokens)
    span.set_attribute(tracing.ATTR_OUTCOME, scheduler_pb2.Outcome.Name(outcome))
    if not met:
        span.add_event("slo_missed", {"ttft_ms": timer.ttft_ms, "tpot_ms": timer.tpot_ms,
                                      "outcome": scheduler_pb2.Outcome.Name(outcome)})


def _transfer_event(span, run: RequestRun) -> None:
    """The KV hand-off from P to D, as P reported it; the pull itself is D's (its worker's metrics
    and the handoff_ms event on D's first token)."""
    kv = run.kv
    if kv is None or not kv.transfer_id:
        span.add_event("kv_transfer", {"outcome": "none staged: D computes the prompt"})
        return
    span.add_event("kv_transfer", {"transfer_id": kv.transfer_id, "blocks": kv.num_blocks, "tokens": kv.num_tokens,
                                   "from": kv.remote_address, "to": run.placed.legs[1].instance_id})


def _final(spec: RequestSpec, placement, timer: StreamTimer, met: bool, finish: FinishReason) -> router_pb2.FinalResult:
    return router_pb2.FinalResult(
        request_id=spec.request_id,
        usage=router_pb2.Usage(prompt_tokens=spec.prompt_tokens, completion_tokens=timer.tokens),
        ttft_ms=timer.ttft_ms, tpot_ms=timer.tpot_ms, e2e_ms=timer.e2e_ms(time.time()), slo_met=met,
        finish_reason=convert.finish_to_pb(finish), instance_id=placement.instance_id,
        placement_reason=placement.reason,
    )
