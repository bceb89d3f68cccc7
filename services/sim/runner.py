"""The discrete-event loop: arrivals, instance steps and scheduler passes on a virtual clock.

The scheduler pass runs on every arrival and step end while something is queued or running
(plus a periodic tick while requests wait), like the scheduler service reacting to queue and load
changes. Instances have roles: a request split by the policy prefills on a P node (which emits
no token to the client), its KV travels for kv_transfer_ms_per_token * prompt (the P profile's
model), then it decodes on a D node, whose first step recomputes the last prompt token. Deterministic given the seed: one RNG per instance, event ties broken by sequence.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from services.common.domain import (ClusterSnapshot, Decision, InstanceLoad, InstanceView, Leg, Preemption, RequestSpec,
                                    Role, RunningRequest, ScheduleResult, StepInFlight, Verdict)
from services.scheduler.apply import apply
from services.scheduler.policy import Policy, observe_completion
from services.report.records import RequestRecord, RunResult
from services.scheduler.policy.base import DEFAULT_KV_TRANSFER_MS_PER_TOKEN
from services.sim.instance import SimInstance, SimSeq
from services.sim.profiles import Profile
from services.scheduler.tickets import outdated_by
from services.sim.tickets import SimTickets
from services.sim.workload import SimRequestSpec

if TYPE_CHECKING:
    from services.sim.scaling import ScalingDriver

TICK_S = 0.02          # re-run the scheduler this often while requests wait and nothing else happens
STALL_TICKS = 5000     # give up on requests no policy pass places for this long with the cluster idle


class WaitingQueue(Sequence[RequestSpec]):
    """The global queue in arrival order; O(1) removal by id (dict keeps insertion order)."""

    def __init__(self) -> None:
        self._specs: dict[str, RequestSpec] = {}

    def add(self, spec: RequestSpec) -> None:
        self._specs[spec.request_id] = spec

    def pop(self, request_id: str) -> RequestSpec | None:
        return self._specs.pop(request_id, None)

    def __len__(self) -> int:
        return len(self._specs)

    def __iter__(self) -> Iterator[RequestSpec]:
        return iter(self._specs.values())

    def __reversed__(self) -> Iterator[RequestSpec]:
        return reversed(self._specs.values())

    def __getitem__(self, i):  # rarely used by policies; lists are O(n)
        return list(self._specs.values())[i]


@dataclass
class _Node:
    sim: SimInstance
    placed: dict[str, RunningRequest] = field(default_factory=dict)
    running_view: tuple[RunningRequest, ...] = ()
    view: InstanceView | None = None
    draining: bool = False      # set by an autoscaler (services/sim/scaling.py): no new placements
    role: Role = Role.COLOCATED
    prefill_done_s: float = float("-inf")   # when a prefill leg last ended here (InstanceView)
    step_started_s: float = 0.0             # when the step in flight began (sim.busy)


class Simulation:
    def __init__(self, policy: Policy, profile: Profile, instances: int, seed: int,
                 progress: Callable[[int], None] | None = None, scaling: "ScalingDriver | None" = None,
                 roles: Sequence[Role] = (), tickets: bool = True) -> None:
        """roles: one per instance (default: all colocated). tickets: grant and spend tickets as the
        live mesh does by default (services/sim/tickets.py); False: every request takes a pass."""
        if roles and len(roles) != instances:
            raise ValueError(f"{len(roles)} roles for {instances} instances")
        self.policy = policy
        self.tickets = SimTickets(policy) if tickets else None
        self._tickets_event = False   # a deferred ticket refresh is on the event queue
        self.profile = profile
        self.seed = seed
        self.scaling = scaling      # None: a fixed set of instances
        self.nodes = [self.new_node(i, roles[i] if roles else Role.COLOCATED) for i in range(instances)]
        self._decode_on: dict[str, str] = {}    # split request -> its D node, from placement to finish
        self._prefill_on: dict[str, str] = {}   # split request -> its P node, until its prefill ends
        # split request -> its placement's number (RequestRecord.preemptions) while its KV is on
        # its way to D: a transfer of an earlier placement (preempted since) is dropped on arrival.
        self._in_transfer: dict[str, int] = {}
        self.by_id = {n.sim.instance_id: n for n in self.nodes}
        self.progress = progress or (lambda done: None)
        self._events: list = []
        self._seq = itertools.count()
        self.records: dict[str, RequestRecord] = {}
        self.waiting = WaitingQueue()
        self.now_s = 0.0
        self.decisions = 0
        self.policy_preemptions = 0
        self._busy_s = 0.0
        self._done = 0

    def new_node(self, index: int, role: Role = Role.COLOCATED) -> _Node:
        p = self.profile
        return _Node(SimInstance(f"sim-{index:02d}", p.model, p.kv_capacity_tokens, p.chunk_tokens, p.max_num_seqs,
                                 p.step_noise, seed=self.seed * 1000 + index), role=role)

    def add_node(self, node: _Node) -> None:
        self.nodes.append(node)
        self.by_id[node.sim.instance_id] = node
        self._refresh_view(node)

    def remove_node(self, instance_id: str) -> None:
        """Only a node with nothing placed and no step in flight can go (drain first)."""
        node = self.by_id[instance_id]
        if node.placed or node.sim.busy or node.sim.has_work:
            raise ValueError(f"{instance_id} still has work; drain it first")
        self.nodes.remove(node)
        del self.by_id[instance_id]

    def set_draining(self, instance_id: str, draining: bool) -> None:
        node = self.by_id[instance_id]
        node.draining = draining
        self._refresh_view(node)

    # -- events ---------------------------------------------------------------------------------

    def _push(self, t_s: float, kind: str, payload) -> None:
        heapq.heappush(self._events, (t_s, next(self._seq), kind, payload))

    def run(self, requests: Sequence[SimRequestSpec]) -> RunResult:
        for r in requests:
            self.records[r.spec.request_id] = RequestRecord(r.spec, r.output_tokens)
            self._push(r.spec.arrival_s, "arrival", r.spec)
        for node in self.nodes:
            self._refresh_view(node)
        if self.scaling is not None:
            self.scaling.begin(self)
        idle_ticks, ticking = 0, False
        while self._events:
            self.now_s, _, kind, payload = heapq.heappop(self._events)
            if kind == "arrival":
                self._arrive(payload)
            elif kind == "step":
                self._end_step(payload)
            elif kind == "tick":
                ticking = False
            elif kind == "scale" and self.scaling is not None:
                self.scaling.on_event(self, payload)
            elif kind == "kv":
                self._kv_arrived(payload)
            elif kind == "tickets":
                self._tickets_event = False
            placed_before = self.decisions
            self._refresh_tickets(force=self._schedule())
            self._start_idle_steps()
            idle_ticks = 0 if self.decisions != placed_before or kind != "tick" else idle_ticks + 1
            if len(self.waiting) and not ticking:
                if idle_ticks > STALL_TICKS and not any(n.sim.busy for n in self.nodes):
                    self._fail_waiting("never placed: no instance could take it")
                    continue
                self._push(self.now_s + TICK_S, "tick", None)
                ticking = True
        makespan = max((r.finish_s or r.spec.arrival_s for r in self.records.values()), default=0.0)
        instance_s = self.scaling.instance_seconds(makespan) if self.scaling else len(self.nodes) * makespan
        return RunResult(list(self.records.values()), instance_s, makespan, self.decisions,
                         sum(n.sim.engine_preemptions for n in self.nodes), self.policy_preemptions)

    # -- arrivals and tickets -------------------------------------------------------------------

    def _arrive(self, spec: RequestSpec) -> None:
        """The router's side: a request a ticket covers starts where the ticket says (no pass);
        any other queues for the next pass."""
        self.waiting.add(spec)
        if self.tickets is None:
            return
        self.tickets.saw(spec)
        decision = self.tickets.take(spec, self.now_s)
        if decision is not None:
            apply(ScheduleResult(decisions=(decision,)), self)
            self._refresh_tickets(force=True)

    def _refresh_tickets(self, force: bool = False) -> None:
        if self.tickets is None:
            return
        cluster = ClusterSnapshot(tuple(n.view for n in self.nodes if n.view is not None))
        due_s = self.tickets.refresh(cluster, bool(len(self.waiting)), self.now_s, force)
        if due_s is not None and not self._tickets_event:
            self._push(due_s, "tickets", None)
            self._tickets_event = True

    # -- scheduler pass -------------------------------------------------------------------------

    def _schedule(self) -> bool:
        """One pass; True when it changed some instance's room (its tickets are then out of date)."""
        if not len(self.waiting) and not any(n.placed for n in self.nodes):
            return False
        cluster = ClusterSnapshot(tuple(n.view for n in self.nodes if n.view is not None))
        result = self.policy.schedule(self.waiting, cluster, self.now_s)
        apply(result, self)
        return outdated_by(result)

    # -- the applier's executor (services/scheduler/apply.py: preemptions, then decisions) -------

    def preempt(self, p: Preemption) -> None:
        self._preempt(p.instance_id, p.request_id, p.reason)

    def take(self, request_id: str) -> RequestSpec | None:
        return self.waiting.pop(request_id)

    def count(self, leg: Leg, spec: RequestSpec) -> None:
        self.by_id[leg.instance_id].placed[spec.request_id] = RunningRequest(spec, self.now_s, leg.role)

    def settle(self, d: Decision, spec: RequestSpec) -> None:
        rec = self.records[d.request_id]
        self.decisions += 1
        rec.verdict, rec.reason = d.verdict.value, d.reason
        if d.verdict == Verdict.REJECT:
            rec.finish_s = self.now_s
            self._finish(rec)
            return
        if rec.placed_s is None:
            rec.placed_s = self.now_s
        self._start(d, spec, rec)

    def _start(self, d: Decision, spec: RequestSpec, rec: RequestRecord) -> None:
        """Every leg is counted on its node (Decision.stages(), as in the scheduler service); the
        engine gets the whole request, or the prefill leg first (the decode leg waits for its KV)."""
        legs = d.stages()
        rec.instance_id = "->".join(leg.instance_id for leg in legs)
        for leg in legs:
            node = self.by_id[leg.instance_id]
            if leg.role is Role.DECODE:
                self._decode_on[spec.request_id] = leg.instance_id
            else:
                output = 1 if leg.role is Role.PREFILL else rec.output_tokens - rec.generated
                if leg.role is Role.PREFILL:
                    self._prefill_on[spec.request_id] = leg.instance_id
                node.sim.add(SimSeq(spec.request_id, spec.prompt_tokens, output))
            self._refresh_view(node, running_changed=True)

    def _prefill_done(self, node: _Node, rid: str) -> None:
        """A split request's prefill leg ended on P: its KV leaves for D (no token to the client)."""
        running = node.placed.pop(rid)
        node.prefill_done_s = self.now_s
        self._prefill_on.pop(rid, None)
        per_token = node.sim.model.kv_transfer_ms_per_token or DEFAULT_KV_TRANSFER_MS_PER_TOKEN
        self._in_transfer[rid] = self.records[rid].preemptions
        self._push(self.now_s + per_token * running.spec.prompt_tokens / 1000.0, "kv", (rid, self._in_transfer[rid]))

    def _kv_arrived(self, transfer: tuple[str, int]) -> None:
        rid, placement = transfer
        if self._in_transfer.get(rid) != placement:   # preempted on D meanwhile
            return
        del self._in_transfer[rid]
        node = self.by_id[self._decode_on[rid]]
        rec, spec = self.records[rid], node.placed[rid].spec
        # The prompt's KV is there; D recomputes only its last token, which yields the first token.
        node.sim.add(SimSeq(rid, spec.prompt_tokens, rec.output_tokens - rec.generated,
                            prefilled=spec.prompt_tokens - 1))
        self._refresh_view(node)

    def _preempt(self, instance_id: str, request_id: str, reason: str) -> None:
        node = self.by_id[instance_id]
        running = node.placed.pop(request_id, None)
        seq = node.sim.remove(request_id)
        # A split request's decode leg is live before its KV arrives: in transfer, or still in prefill on P.
        pending = request_id in self._in_transfer or request_id in self._prefill_on
        if running is None or (seq is None and not pending):
            return
        self._in_transfer.pop(request_id, None)
        self._decode_on.pop(request_id, None)
        prefill_id = self._prefill_on.pop(request_id, None)
        if prefill_id is not None:   # its prefill leg still runs on P: stop it too
            p_node = self.by_id[prefill_id]
            p_node.placed.pop(request_id, None)
            p_node.sim.remove(request_id)
            self._refresh_view(p_node, running_changed=True)
        self.policy_preemptions += 1
        rec = self.records[request_id]
        rec.preemptions += 1
        rec.reason = reason
        self.waiting.add(rec.spec.resumed(rec.generated))
        self._refresh_view(node, running_changed=True)

    # -- instances ------------------------------------------------------------------------------

    def _start_idle_steps(self) -> None:
        for node in self.nodes:
            if not node.sim.busy and node.sim.has_work:
                ms = node.sim.begin_step()
                if ms > 0:
                    self._busy_s += ms / 1000.0
                    self._push(self.now_s + ms / 1000.0, "step", node)
                    node.step_started_s = self.now_s
                    # The step's start and shape, as a worker reports them (InstanceLoad.step_in_flight);
                    # the load figures stay those of the last refresh (what the policies saw so far).
                    if node.view is not None:
                        node.view = replace(node.view, load=replace(node.view.load, step_in_flight=self._step_of(node)))

    def set_role(self, instance_id: str, role: Role) -> None:
        """A role change (issue 11): new legs follow the new role; legs placed before it finish
        here as what they were (each step end reads its leg's role, not the node's)."""
        node = self.by_id[instance_id]
        node.role = role
        self._refresh_view(node)

    def _end_step(self, node: _Node) -> None:
        out = node.sim.end_step()
        prefill_legs = [rid for rid in out.finished if node.placed[rid].role is Role.PREFILL]
        for rid in prefill_legs:
            self._prefill_done(node, rid)
        if prefill_legs:   # their one token is P's, never the client's
            legs = set(prefill_legs)
            out = replace(out, first_tokens=[r for r in out.first_tokens if r not in legs],
                          tokens=[r for r in out.tokens if r not in legs],
                          finished=[r for r in out.finished if r not in legs])
        for rid in out.first_tokens + out.tokens:
            rec = self.records[rid]
            rec.generated += 1
            if rec.first_token_s is None:
                rec.first_token_s = self.now_s
            rec.last_token_s = self.now_s
        for rid in out.finished:
            rec = self.records[rid]
            rec.finish_s = self.now_s
            running = node.placed.pop(rid)
            self._decode_on.pop(rid, None)
            observe_completion(self.policy, running.spec.task_class, rec.output_tokens, rid)
            self._finish(rec)
        self._refresh_view(node, running_changed=bool(out.finished))

    def _refresh_view(self, node: _Node, running_changed: bool = False) -> None:
        sim = node.sim
        if running_changed:  # a new tuple only when the set changed, so policies can cache on it
            node.running_view = tuple(node.placed.values())
        load = InstanceLoad(len(sim.running), len(sim.waiting), sim.kv_used_tokens / sim.kv_capacity_tokens,
                            sim.kv_capacity_tokens, (sim.last_step_ms,), self.now_s, reports_step=True,
                            step_in_flight=self._step_of(node))
        if node.draining:
            load = replace(load, draining=True)
        node.view = InstanceView(sim.instance_id, f"sim://{sim.instance_id}", role=node.role, load=load,
                                 running=node.running_view, latency_model=sim.model,
                                 chunk_tokens=sim.chunk_tokens, prefill_done_s=node.prefill_done_s)

    @staticmethod
    def _step_of(node: _Node) -> StepInFlight | None:
        """The step in flight on `node` (None between steps): its start and its shape. The shape
        is what the model was evaluated on, not the duration: a policy predicts the end itself,
        as it must for a live worker's report (step_noise makes the two differ)."""
        if not node.sim.busy:
            return None
        prefill, decodes, kv = node.sim.last_step_shape
        return StepInFlight(node.step_started_s, prefill, decodes, kv)

    def _finish(self, rec: RequestRecord) -> None:
        self._done += 1
        self.progress(self._done)
        if self.scaling is not None:
            self.scaling.on_finish(rec, self.now_s)

    @property
    def done(self) -> int:
        return self._done

    def _fail_waiting(self, reason: str) -> None:
        for spec in list(self.waiting):
            self.waiting.pop(spec.request_id)
            rec = self.records[spec.request_id]
            rec.verdict, rec.reason, rec.finish_s = "failed", reason, self.now_s
            self._finish(rec)


def pd_roles(split: str, instances: int) -> tuple[Role, ...]:
    """"P:D" -> P prefill, then D decode, then colocated instances up to `instances`; "" or
    "colocated" -> all colocated."""
    if split in ("", "colocated"):
        return (Role.COLOCATED,) * instances
    try:
        p, d = (int(x) for x in split.split(":"))
    except ValueError:
        raise ValueError(f"P/D split {split!r}: expected P:D, e.g. 4:12") from None
    if p < 1 or d < 1 or p + d > instances:
        raise ValueError(f"P/D split {split}: P and D must be >= 1 and at most {instances} instances together")
    return (Role.PREFILL,) * p + (Role.DECODE,) * d + (Role.COLOCATED,) * (instances - p - d)


def simulate(policy: Policy, profile: Profile, requests: Sequence[SimRequestSpec], instances: int, seed: int,
             progress: Callable[[int], None] | None = None, roles: Sequence[Role] = (), tickets: bool = True) -> RunResult:
    return Simulation(policy, profile, instances, seed, progress, roles=roles, tickets=tickets).run(requests)
