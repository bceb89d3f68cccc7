"""Scheduler gRPC service: adapter between the pure policy and its callers: routers on their
Connect streams (link.py; unary Place/Complete for other clients), workers on StreamLoad
(unary ReportLoad too).

Place enqueues the request and waits for the policy to settle it. A scheduling round runs the
policy over (waiting, snapshot, now) whenever something changes: an arrival, a completion, a
load report, a registry refresh. Each decision is logged and put on the request's span.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from services.common import convert, grpcutil, metrics, store, tracing
from services.common.domain import ClusterSnapshot, Decision, InstanceView, RequestSpec, ScheduleResult, Verdict
from services.common.errors import InvalidArgument, Unavailable
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, worker_pb2_grpc
from services.scheduler import inflight
from services.scheduler.apply import apply
from services.scheduler.config import SchedulerConfig
from services.scheduler.link import Link
from services.scheduler.live_round import LiveRound
from services.scheduler.models import InstanceModels
from services.scheduler.policy import Defers, IssuesTickets, Policy, PolicyConfig, observe_completion
from services.scheduler.policy.base import gap_after_grace, gap_since, serving_gap
from services.scheduler.state import ClusterState, Waiting
from services.scheduler.tickets import TicketDesk, outdated_by
from services.scheduler.trace_spans import RequestTraces, complete_span as _complete_span
from services.scheduler.trace_spans import decision_attributes as _decision_attributes

log = logging.getLogger("hfx.scheduler")
_tracer = tracing.tracer("hfx.scheduler")
SERVICE_NAME = "hfx.v1.Scheduler"


def _reject(request_id: str, reason: str, retry_after_ms: float) -> Decision:
    return Decision(request_id, Verdict.REJECT, reason, retry_after_ms=retry_after_ms)


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, config: SchedulerConfig, policy: Policy, cluster: store.ClusterStore | None,
                 policy_config: PolicyConfig | None = None) -> None:
        self.config = config
        self.policy = policy
        self.policy_config = policy_config or PolicyConfig()   # what serving_gap checks against
        self.store = cluster
        self.state = ClusterState()
        # Requests rejected for their SLO since the role loop last looked (it drains this; kept
        # only when the loop runs).
        self.refused: collections.deque[RequestSpec] = collections.deque(maxlen=4096 if self.config.role_changes else 0)
        self.models = InstanceModels(refine=config.refine_models)
        self._wake = asyncio.Event()
        self.workers = grpcutil.StubCache(worker_pb2_grpc.WorkerStub)
        self.background = grpcutil.Background()  # preemption calls to workers
        self._refined_logged: dict[str, float] = {}
        self._protected_s = float("-inf")  # when the policy last ran (so last checked running requests)
        self._deferrals_seen = 0           # the policy's deferral count already exported
        self._gap: tuple[tuple, str, float] = ((), "", 0.0)   # (instances' roles, their serving_gap, since)
        self._ticketing: IssuesTickets | None = (policy if config.tickets and isinstance(policy, IssuesTickets)
                                                 else None)
        self.desk = TicketDesk(policy.name) if self._ticketing is not None else None
        self._tickets_due_s = 0.0
        self._adopted: set[str] = set()   # counted only because a worker's report listed them
        self._ticket_timer: asyncio.TimerHandle | None = None
        self.traces = RequestTraces()  # placed requests' trace contexts, for their preemption and end

    # -- the scheduling round ------------------------------------------------------------------

    def run_round(self, now_s: float) -> None:
        """One policy call over the queue; applies its decisions and resolves waiting Place calls;
        then the routers' tickets follow the new state."""
        result = self._round(now_s)
        self.refresh_tickets(now_s, force=result is not None and outdated_by(result))

    def refresh_tickets(self, now_s: float, force: bool = True) -> None:
        """Grants while nothing waits, none while something does (a ticket must not let a new
        request past a ranked queue). Unforced (after an ordinary round), at most every
        ticket_refresh_s unless a queue formed: a pass per load report and completion would
        cost the scheduler (and the router, reading the sets) CPU the engines need."""
        if self.desk is None or self._ticketing is None:
            return
        revoke = bool(self.state.waiting) and self.desk.outstanding() > 0
        if not (force or revoke or now_s >= self._tickets_due_s):
            self._refresh_tickets_later(self._tickets_due_s - now_s)
            return
        self._tickets_due_s = now_s + self.config.ticket_refresh_s
        grants = []
        if not self.state.waiting:
            snapshot = self.state.snapshot()
            grants = self._ticketing.tickets(snapshot, self.desk.bounds(), now_s)
            addresses = {inst.instance_id: inst.address for inst in snapshot.instances}
        else:
            addresses = {}
        self.desk.refresh(grants, addresses)
        metrics.TICKETS_OUTSTANDING.labels(self.policy.name).set(self.desk.outstanding())

    def _refresh_tickets_later(self, delay_s: float) -> None:
        """One deferred refresh, so a change that came in between is granted even if nothing
        else happens."""
        if self._ticket_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # called outside a loop (a test driving rounds by hand)
            return

        def fire() -> None:
            self._ticket_timer = None
            self.refresh_tickets(time.time())

        self._ticket_timer = loop.call_later(max(0.0, delay_s), fire)

    def _round(self, now_s: float) -> ScheduleResult | None:
        """One policy pass, applied; its result (None when no pass ran)."""
        self._expire(now_s)
        if not self.state.waiting:
            metrics.QUEUE_DEPTH.labels(self.policy.name).set(0)
            if not self.state.inflight_count():
                return None
            # Nothing waits: the round would only protect running requests, which needs no
            # answer within milliseconds. Bounding its rate keeps every completion and load
            # report from costing a policy pass (CPU the engines need on small machines).
            if now_s - self._protected_s < self.config.protect_interval_s:
                return None
        self._protected_s = now_s
        waiting = [w.spec for w in self.state.waiting.values()]
        snapshot = self.state.snapshot()
        started = time.perf_counter()
        try:
            result = self.policy.schedule(waiting, snapshot, now_s)
        except Exception:
            # A policy bug must not kill the round loop: requests keep waiting and are refused
            # by the queue-wait limit, and the error is in the log with its traceback.
            log.exception("policy %s failed; %d requests stay queued", self.policy.name, len(waiting))
            return None
        metrics.DECISION_SECONDS.labels(self.policy.name).observe(time.perf_counter() - started)
        if isinstance(self.policy, Defers):
            metrics.DEFERRALS.labels(self.policy.name).inc(self.policy.deferrals - self._deferrals_seen)
            self._deferrals_seen = self.policy.deferrals
        apply(result, LiveRound(self, snapshot, now_s))
        metrics.QUEUE_DEPTH.labels(self.policy.name).set(len(self.state.waiting))
        return result

    def _log_refined(self, instance_id: str, m, every_s: float = 10.0) -> None:
        now = time.monotonic()
        if now - self._refined_logged.get(instance_id, -every_s) >= every_s:
            self._refined_logged[instance_id] = now
            log.info("latency model of %s refined online: step_ms = %.3g + %.3g*prefill + %.3g*decode_seqs + "
                     "%.3g*kv_tokens", instance_id, m.c0_ms, m.c1_ms_per_prefill_token, m.c2_ms_per_decode_seq,
                     m.c3_ms_per_kv_token)

    def _expire(self, now_s: float) -> None:
        for rid, entry in list(self.state.waiting.items()):
            if now_s - entry.enqueued_s > self.config.max_wait_s:
                del self.state.waiting[rid]
                if not entry.future.done():
                    reason = f"waited {self.config.max_wait_s:.0f}s in queue with no instance able to take it"
                    entry.future.set_result((_reject(rid, reason, 1000.0), {}))

    def wake(self) -> None:
        self._wake.set()

    async def round_loop(self) -> None:
        """A round on every wake (arrival, completion, load report, registry refresh), and at
        least every 50 ms while requests wait (their deadlines move on their own) or every
        protect_interval_s while requests run. An idle scheduler sleeps until woken: a timer
        firing 20 times a second costs CPU that the engines on a small machine need."""
        while True:
            if self.state.waiting:
                timeout = 0.05
            elif self.state.inflight_count():
                timeout = self.config.protect_interval_s
            else:
                timeout = None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            self.run_round(time.time())

    def _serving_gap(self, now_s: float) -> str:
        """serving_gap of the registered instances (recomputed only when their roles change: it is
        asked on every Place), once it has lasted serving_gap_grace_s. (In CI a request arrived in
        the 90 ms between the scheduler's registry read that saw a new cluster's two P and the one
        that saw its two D, and was refused "no decode capacity".)"""
        roles = tuple(sorted((iid, inst.role) for iid, inst in self.state.instances.items()))
        if roles != self._gap[0]:
            views = tuple(InstanceView(iid, "", convert.role_from_pb(role)) for iid, role in roles)
            gap = serving_gap(ClusterSnapshot(views), self.policy_config)
            self._gap = (roles, gap, gap_since(self._gap[1], self._gap[2], gap, now_s))
        _, gap, since = self._gap
        return gap_after_grace(gap, since, now_s, self.config.serving_gap_grace_s)

    # -- RPCs ----------------------------------------------------------------------------------

    async def Place(self, request: scheduler_pb2.PlaceRequest, context) -> scheduler_pb2.Placement:
        return await self.place(request, tracing.extract_context(context.invocation_metadata()))

    async def place(self, request: scheduler_pb2.PlaceRequest, parent) -> scheduler_pb2.Placement:
        """Place (unary) and Connect share this: enqueue, run a round, wait for the verdict.
        Raises InvalidArgument; cancelled when the caller stops waiting (the entry leaves)."""
        spec = convert.spec_from_pb(request)
        if not spec.request_id:
            raise InvalidArgument("request_id", "must not be empty")
        if spec.resumed_tokens < 0:
            raise InvalidArgument("resumed_tokens", f"must be >= 0, got {spec.resumed_tokens}")
        with _tracer.start_as_current_span(tracing.SPAN_PLACE, context=parent) as span:
            span.set_attribute(tracing.ATTR_REQUEST_ID, spec.request_id)
            span.set_attribute(tracing.ATTR_POLICY, self.policy.name)
            tracing.set_slo_attributes(span, spec.slo.ttft_ms, spec.slo.tpot_ms)
            span.set_attribute(tracing.ATTR_RESUMED_TOKENS, spec.resumed_tokens)
            span.set_attribute(tracing.ATTR_PRIORITY, spec.priority)
            span.set_attribute(tracing.ATTR_TASK_CLASS, spec.task_class)
            if spec.request_id in self.state.waiting:
                raise InvalidArgument("request_id", f"{spec.request_id!r} is already queued")
            gap = self._serving_gap(time.time())
            if gap:
                span.set_attribute(tracing.ATTR_REASON, gap)
                log.warning("place %s refused: %s", spec.request_id, gap)
                raise Unavailable(gap)
            if self.desk is not None:
                self.desk.saw(spec)
            if len(self.state.waiting) >= self.config.max_queue:
                decision, addresses = _reject(spec.request_id, f"queue full ({self.config.max_queue} waiting)", 500.0), {}
            else:
                entry = Waiting(spec, time.time())
                self.state.waiting[spec.request_id] = entry
                self.traces.remember(spec.request_id, parent)
                self.run_round(time.time())
                self.wake()  # the round loop re-arms its timer: something waits or runs now
                try:
                    decision, addresses = await entry.future
                except asyncio.CancelledError:  # the router gave up (deadline, client gone)
                    self.state.waiting.pop(spec.request_id, None)
                    self.traces.forget(spec.request_id)
                    raise
                span.set_attribute(tracing.ATTR_QUEUE_WAIT_MS, (time.time() - entry.enqueued_s) * 1000.0)
            if decision.verdict is Verdict.REJECT:
                self.traces.forget(spec.request_id)
            _decision_attributes(span, decision, self.state.loads.get(decision.instance_id))
            legs = " -> ".join(f"{leg.role.value}:{leg.instance_id}" for leg in decision.legs)
            if legs:
                span.set_attribute(tracing.ATTR_LEGS, legs)
            metrics.record_verdict(self.policy.name, decision.verdict.value, decision.reason, spec.prompt_tokens,
                                   spec.max_tokens)
            log.info("place %s -> %s %s (%s)", spec.request_id, decision.verdict.value, legs or decision.instance_id,
                     decision.reason)
            return convert.decision_to_placement(decision, addresses.get(decision.instance_id, ""), self.policy.name,
                                                 addresses)

    def redeem(self, link, request: scheduler_pb2.PlaceRequest, parent) -> None:
        """A router started a request on a ticket: count it where it runs, as a placement would.
        A ticket revoked while the router spent it is counted all the same (the request runs);
        the log says so. Raises InvalidArgument on a malformed request."""
        spec = convert.spec_from_pb(request)
        if not spec.request_id:
            raise InvalidArgument("request_id", "must not be empty")
        now = time.time()
        instance_id, ticket = self.desk.redeem(link, request.ticket_id) if self.desk is not None else ("", None)
        with _tracer.start_as_current_span("scheduler.place", context=parent) as span:
            span.set_attribute(tracing.ATTR_REQUEST_ID, spec.request_id)
            span.set_attribute(tracing.ATTR_POLICY, self.policy.name)
            span.set_attribute(tracing.ATTR_VERDICT, "admit")
            span.set_attribute(tracing.ATTR_INSTANCE, instance_id)
            reason = ticket.reason if ticket is not None else f"ticket {request.ticket_id} (revoked while spent)"
            span.set_attribute(tracing.ATTR_REASON, reason)
        if instance_id in self.state.instances:
            self.state.place(instance_id, spec, now)
            self.traces.remember(spec.request_id, parent)
        else:
            log.warning("ticket %s of %s names no instance known here (%r); not counted",
                        request.ticket_id, spec.request_id, instance_id)
        if self.desk is not None:
            self.desk.saw(spec)
        metrics.record_verdict(self.policy.name, "admit", "ticket" if ticket is not None else "revoked ticket",
                               spec.prompt_tokens, spec.max_tokens)
        log.info("place %s -> admit %s on a ticket (%s)", spec.request_id, instance_id, reason)
        self.refresh_tickets(now)
        self.wake()

    async def Complete(self, request: scheduler_pb2.CompleteRequest, context) -> scheduler_pb2.CompleteResponse:
        self.complete(request, tracing.extract_context(context.invocation_metadata()))
        return scheduler_pb2.CompleteResponse()

    def complete(self, request: scheduler_pb2.CompleteRequest, parent=None) -> None:
        """A leg ended (CompleteRequest.leg): a prefill leg frees only its P instance; anything
        else ends the request on every instance it still held (so a router may name either leg).
        `parent`: the trace context of a unary call's metadata; on the link the message's own."""
        if request.leg == common_pb2.ROLE_PREFILL:
            done = None
            if self.state.complete(request.instance_id, request.request_id) is not None:
                self.state.prefill_done[request.instance_id] = time.time()
        else:
            done = self.state.finish(request.request_id)
            self.traces.forget(request.request_id)
        if request.trace_context:
            parent = tracing.extract_context(dict(request.trace_context))
        _complete_span(request, done, parent)
        if request.outcome == scheduler_pb2.OUTCOME_FAILED and request.instance_id:
            log.warning("instance %s failed request %s; no new work there until it reports again",
                        request.instance_id, request.request_id)
            self.state.quarantine(request.instance_id, time.time())
        if request.outcome == scheduler_pb2.OUTCOME_FINISHED:
            # Learnt even when a reconcile let it go first (its Complete came after the report).
            task_class = request.task_class or (done.spec.task_class if done is not None else "default")
            observe_completion(self.policy, task_class, request.output_tokens, request.request_id)
        self.wake()

    async def Connect(self, request_iterator, context):
        """The router's link (see scheduler.proto). Each place runs as its own task, as a unary
        Place would; answers ready together leave in one message. When the router closes the
        stream or it breaks, the placements it still waits for are withdrawn from the queue."""
        link = Link(self)
        reader = asyncio.create_task(link.read(request_iterator))
        if self.desk is not None:
            self.desk.attach(link)
            self.refresh_tickets(time.time())
        try:
            while (response := await link.ready()) is not None:
                yield response
        finally:
            reader.cancel()
            link.close()
            if self.desk is not None:
                self.desk.detach(link)
                self.refresh_tickets(time.time())

    async def ReportLoad(self, request: common_pb2.LoadReport, context) -> scheduler_pb2.ReportLoadResponse:
        self.report_load(request)
        return scheduler_pb2.ReportLoadResponse()

    async def StreamLoad(self, request_iterator, context) -> scheduler_pb2.ReportLoadResponse:
        async for report in request_iterator:
            self.report_load(report)
        return scheduler_pb2.ReportLoadResponse()

    def report_load(self, request: common_pb2.LoadReport) -> None:
        load = convert.load_from_pb(request)
        self.state.set_load(request.instance_id, load)
        if request.lists_running and request.instance_id in self.state.instances:
            self._reconcile(request)
        model = self.models.observe(request.instance_id, load)
        if model is not None and request.instance_id in self.state.instances:
            if model is not self.state.models.get(request.instance_id):
                self._log_refined(request.instance_id, model)
            self.state.models[request.instance_id] = model
        self.wake()

    def _reconcile(self, report: common_pb2.LoadReport) -> None:
        """The running set of one instance against its worker's list (services/scheduler/inflight.py)."""
        iid = report.instance_id
        known = self.state.running.get(iid, {})
        adopt, gone = inflight.reconcile(known, [convert.running_from_pb(r) for r in report.running],
                                         report.reported_unix_s, adopted=self._adopted)
        for run in adopt:
            self.state.running.setdefault(iid, {})[run.spec.request_id] = run
            self._adopted.add(run.spec.request_id)
        for rid in gone:
            known.pop(rid, None)
            self._adopted.discard(rid)
        if adopt or gone:
            metrics.RECONCILED.labels("adopted").inc(len(adopt))
            metrics.RECONCILED.labels("let_go").inc(len(gone))
            log.info("running set of %s reconciled with its worker: adopted %d it runs that were not counted "
                     "here (%s), let go %d it no longer runs (%s)", iid, len(adopt),
                     ", ".join(r.spec.request_id for r in adopt[:5]), len(gone), ", ".join(gone[:5]))

    async def GetClusterState(self, request, context) -> scheduler_pb2.ClusterState:
        out = scheduler_pb2.ClusterState(policy=self.policy.name, inflight_requests=self.state.inflight_count())
        for iid, inst in sorted(self.state.instances.items()):
            copy = out.instances.add()
            copy.CopyFrom(inst)
            if iid in self.state.loads:
                copy.load.CopyFrom(convert.load_to_pb(iid, self.state.loads[iid]))
            if iid in self.state.draining:  # what placement sees (the scaler waits for this)
                copy.load.instance_id, copy.load.draining = iid, True
        return out

