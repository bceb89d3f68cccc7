"""Autoscaling in the simulator: the same autoscaler objects as the live scaler, on the virtual clock.

Every `tick_s` the driver builds the autoscaler's Signals from the simulation (instances with
their phase and in-flight count, arrivals over `rate_window_s`, SLO attainment over `window_s`, the scheduler's
queue and how late it runs) and applies the plan: a start becomes an instance after the ready time
of its start kind, a drain stops placements there (the scheduling policy skips a draining
instance), a removal takes away an instance with nothing left on it. Instance-seconds count every
instance from launch to removal, starting and draining included.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from services.scaler.autoscale import Drain, InstanceSignal, Phase, Remove, Signals, Start, StartKind, Undrain
from services.scaler.autoscale.pd import PDSignals
from services.scaler.autoscale.signals import Attainment


@dataclass(frozen=True)
class ScalingSetup:
    initial: int                              # instances ready at t = 0
    capacity_rps: float                       # per-instance SLO capacity the instances report (profile-based)
    ready_s: dict = field(default_factory=lambda: {StartKind.COLD: 60.0, StartKind.PEER: 15.0})
    peer_start: bool = True                   # a start may pull weights from a ready peer (issue 12)
    tick_s: float = 5.0
    window_s: float = 30.0                    # SLO attainment and rejections
    rate_window_s: float = 10.0               # arrival rate (short: a spike shows within a tick or two)


@dataclass
class TimelinePoint:
    t_s: float
    instances: int          # paid for: starting + ready + draining
    ready: int              # taking new work
    desired: int
    reason: str


class ScalingDriver:
    def __init__(self, autoscaler, setup: ScalingSetup) -> None:
        self.autoscaler = autoscaler
        self.setup = setup
        self.phase: dict[str, tuple[Phase, float]] = {}       # instance id -> (phase, since)
        self.starting: dict[str, tuple[float, StartKind]] = {}  # instance id -> (launched at, kind)
        self.measured: dict[StartKind, list[float]] = {}
        self.applied: set[str] = set()                         # decision ids (idempotence, as in Redis)
        self.timeline: list[TimelinePoint] = []
        self.decisions: list[tuple[float, str, str]] = []      # (t, action, reason)
        self._arrivals: list[float] = []
        self._ended: deque = deque()                           # (t, class, met, rejected reason)
        self._next_index = setup.initial
        self._count, self._area, self._last_s = 0, 0.0, 0.0

    # -- hooks called by Simulation --------------------------------------------------------------

    def begin(self, sim) -> None:
        self._arrivals = sorted(r.spec.arrival_s for r in sim.records.values())
        for node in sim.nodes:
            self.phase[node.sim.instance_id] = (Phase.READY, 0.0)
        self._set_count(len(sim.nodes), 0.0)
        sim._push(0.0, "scale", ("tick", None))

    def on_finish(self, rec, now_s: float) -> None:
        from services.report.metrics import met_slo

        rejected = rec.reason.split(":")[0][:40] if rec.verdict in ("reject", "failed") else ""
        self._ended.append((now_s, rec.spec.task_class, met_slo(rec), rejected))

    def on_event(self, sim, payload) -> None:
        kind, arg = payload
        if kind == "ready":
            self._ready(sim, arg)
            return
        self._tick(sim)
        if sim.done < len(sim.records):
            sim._push(sim.now_s + self.setup.tick_s, "scale", ("tick", None))

    def instance_seconds(self, end_s: float) -> float:
        return self._area + self._count * max(0.0, end_s - self._last_s)

    # -- internals -------------------------------------------------------------------------------

    def _set_count(self, count: int, now_s: float) -> None:
        self._area += self._count * (now_s - self._last_s)
        self._count, self._last_s = count, now_s

    def _ready(self, sim, instance_id: str) -> None:
        launched, kind = self.starting.pop(instance_id)
        self.measured.setdefault(kind, []).append(sim.now_s - launched)
        index = int(instance_id.rsplit("-", 1)[1])
        sim.add_node(sim.new_node(index))
        self.phase[instance_id] = (Phase.READY, sim.now_s)

    def signals(self, sim) -> Signals | PDSignals:   # PDScalingDriver's are per role
        now, w, rw = sim.now_s, self.setup.window_s, self.setup.rate_window_s
        span = min(rw, now) or 1.0
        arrivals = bisect.bisect_right(self._arrivals, now) - bisect.bisect_right(self._arrivals, now - rw)
        while self._ended and self._ended[0][0] < now - w:
            self._ended.popleft()
        att: dict[str, list[int]] = {}
        rejections: dict[str, int] = {}
        for _, cls, met, rejected in self._ended:
            a = att.setdefault(cls, [0, 0])
            a[0] += met
            a[1] += 1
            if rejected:
                rejections[rejected] = rejections.get(rejected, 0) + 1
        insts = []
        for node in sim.nodes:
            iid = node.sim.instance_id
            phase, since = self.phase[iid]
            insts.append(InstanceSignal(iid, phase, since, "cpu", len(node.placed), len(node.sim.waiting),
                                        self.setup.capacity_rps))
        for iid, (launched, _) in self.starting.items():
            insts.append(InstanceSignal(iid, Phase.STARTING, launched))
        late_ms = sum(max(0.0, now - spec.ttft_deadline_s) for spec in sim.waiting) * 1000.0
        kinds = [StartKind.COLD]
        if self.setup.peer_start and any(p is Phase.READY for p, _ in self.phase.values()):
            kinds.append(StartKind.PEER)
        ready_times = {k: sum(v) / len(v) for k, v in self.measured.items() if v}
        return Signals(tuple(insts), arrivals / span, {c: Attainment(m, t) for c, (m, t) in att.items()},
                       len(sim.waiting), late_ms, rejections, ready_times, tuple(kinds), rate_window_s=span)

    def _tick(self, sim) -> None:
        plan = self.autoscaler.on_tick(self.signals(sim), sim.now_s)
        for action in plan.actions:
            if action.decision_id in self.applied:
                continue
            self.applied.add(action.decision_id)
            self._apply(sim, action)
            self.decisions.append((sim.now_s, type(action).__name__, action.reason))
        ready = sum(1 for p, _ in self.phase.values() if p is Phase.READY)
        self.timeline.append(TimelinePoint(sim.now_s, len(self.phase), ready, plan.desired, plan.reason))

    def _apply(self, sim, action) -> None:
        now = sim.now_s
        if isinstance(action, Start):
            iid = f"sim-{self._next_index:02d}"
            self._next_index += 1
            self.starting[iid] = (now, action.start_kind)
            self.phase[iid] = (Phase.STARTING, now)
            sim._push(now + self.setup.ready_s[action.start_kind], "scale", ("ready", iid))
        elif isinstance(action, Drain) and self.phase.get(action.instance_id, (None,))[0] is Phase.READY:
            sim.set_draining(action.instance_id, True)
            self.phase[action.instance_id] = (Phase.DRAINING, now)
        elif isinstance(action, Undrain) and self.phase.get(action.instance_id, (None,))[0] is Phase.DRAINING:
            sim.set_draining(action.instance_id, False)
            self.phase[action.instance_id] = (Phase.READY, now)
        elif isinstance(action, Remove) and self.phase.get(action.instance_id, (None,))[0] is Phase.DRAINING:
            node = sim.by_id[action.instance_id]
            if node.placed or node.sim.busy or node.sim.has_work:
                return  # not drained yet after all: the next tick sees it again
            sim.remove_node(action.instance_id)
            del self.phase[action.instance_id]
        self._set_count(len(self.phase), now)
