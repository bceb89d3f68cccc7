"""Baseline autoscalers for side-by-side comparison, with the same on_tick interface as HFX's.

- `Static`: a fixed count (provisioning for the peak), never shrinks.
- `QueueThreshold`: what a Kubernetes HPA on a queue-length metric does: desired =
  ceil(ready * (queued per ready instance) / target), nothing inside a 10% tolerance, scale-up at
  once, scale-down to the highest recommendation of the last `stabilization_s` (HPA's default
  downscale stabilization window is 300 s), evaluated every `period_s` (HPA syncs every 15 s).
- `ThroughputPlanner`: what a throughput planner (Dynamo's SLA planner) does: every
  `interval_s`, predict the next interval's request rate and divide it by the profiled
  per-instance throughput at the SLOs.
All of them shrink by draining, as HFX does, so the comparison is about when and how much.
`choice.py` builds any of them (or HFX's) by name, for the live scaler and the benchmarks alike.
"""

from __future__ import annotations

import math
from collections import deque

from services.common.errors import InvalidArgument
from services.scaler.autoscale.actions import Action, Drain, Plan, Remove, Start
from services.scaler.autoscale.cost import fleet_cost
from services.scaler.autoscale.signals import Phase, Signals


class _Counted:
    """Shared mechanics: decision ids, removing drained instances, starting/draining to a target."""

    name = "baseline"

    def __init__(self, min_replicas: int, max_replicas: int, device: str = "cpu", id_prefix: str = "") -> None:
        if min_replicas < 0 or max_replicas < 1 or min_replicas > max_replicas:
            raise InvalidArgument("min_replicas",
                                  f"need 0 <= min <= max and max >= 1, got {min_replicas}, {max_replicas}")
        self.min_replicas, self.max_replicas, self.device = min_replicas, max_replicas, device
        self.id_prefix = id_prefix or self.name
        self._seq = 0

    def _id(self) -> str:
        self._seq += 1
        return f"{self.id_prefix}-{self._seq}"

    def _to(self, target: int, signals: Signals, why: str) -> Plan:
        target = max(self.min_replicas, min(self.max_replicas, target))
        ready, starting = signals.of(Phase.READY), signals.of(Phase.STARTING)
        active = len(ready) + len(starting)
        actions: list[Action] = [Remove(self._id(), "drained: nothing in flight", i.instance_id)
                                 for i in signals.of(Phase.DRAINING) if i.inflight == 0]
        kind = min(signals.start_kinds, key=lambda k: signals.ready_times_s.get(k, math.inf))
        actions += [Start(self._id(), f"{why} -> {target}", self.device, kind) for _ in range(target - active)]
        for inst in sorted(ready, key=lambda i: (i.inflight, -i.since_s))[:max(0, active - target)]:
            actions.append(Drain(self._id(), f"{why} -> {target}", inst.instance_id))
        # What the fleet costs now, for the live scaler's meter (every instance at price 1: the
        # baselines know one device kind), as HFX's plans carry it.
        paid, cost_per_s = fleet_cost({self.device: 1.0}, signals.instances, signals.standby_equivalents, self.device)
        details = {"paid_instances": paid, "standby_equivalents": signals.standby_equivalents,
                   "cost_per_s": cost_per_s, "active": active, "needed": target}
        return Plan(tuple(actions), target, f"{why} -> {target}", details=details)


class Static(_Counted):
    name = "static"

    def __init__(self, replicas: int, device: str = "cpu", id_prefix: str = "") -> None:
        super().__init__(replicas, max(1, replicas), device, id_prefix)
        self.replicas = replicas

    def on_tick(self, signals: Signals, now_s: float) -> Plan:
        return self._to(self.replicas, signals, f"static {self.replicas}")


class QueueThreshold(_Counted):
    name = "queue"

    def __init__(self, min_replicas: int, max_replicas: int, target_queue_per_instance: float = 1.0,
                 period_s: float = 15.0, stabilization_s: float = 300.0, tolerance: float = 0.1,
                 device: str = "cpu", id_prefix: str = "") -> None:
        super().__init__(min_replicas, max_replicas, device, id_prefix)
        if target_queue_per_instance <= 0:
            raise InvalidArgument("target_queue_per_instance", f"must be > 0, got {target_queue_per_instance}")
        if period_s <= 0 or stabilization_s < 0:
            raise InvalidArgument("period_s", f"need period > 0 and stabilization >= 0 s, got {period_s}, "
                                  f"{stabilization_s}")
        self.target, self.period_s, self.stabilization_s, self.tolerance = (
            target_queue_per_instance, period_s, stabilization_s, tolerance)
        self._last_s = -math.inf
        self._recommendations: deque[tuple[float, int]] = deque()
        self._desired = min_replicas
        self._why = "queue"   # the latest recommendation's reason

    def on_tick(self, signals: Signals, now_s: float) -> Plan:
        if now_s - self._last_s >= self.period_s:
            self._last_s = now_s
            ready = signals.of(Phase.READY)
            current = max(1, len(ready) + len(signals.of(Phase.STARTING)))
            queued = signals.queue_depth + sum(i.queued for i in ready)
            ratio = (queued / max(1, len(ready))) / self.target
            rec = current if abs(ratio - 1) <= self.tolerance else math.ceil(current * ratio)
            rec = max(self.min_replicas, min(self.max_replicas, rec))
            self._recommendations.append((now_s, rec))
            while self._recommendations and self._recommendations[0][0] < now_s - self.stabilization_s:
                self._recommendations.popleft()
            stable = max(r for _, r in self._recommendations)
            self._desired = rec if rec >= self._desired else stable
            self._why = f"queue {queued} over {len(ready)} ready (target {self.target:g} each)"
        return self._to(self._desired, signals, self._why)


class ThroughputPlanner(_Counted):
    name = "planner"

    def __init__(self, min_replicas: int, max_replicas: int, capacity_rps: float, interval_s: float = 60.0,
                 device: str = "cpu", id_prefix: str = "") -> None:
        super().__init__(min_replicas, max_replicas, device, id_prefix)
        if capacity_rps <= 0:
            raise InvalidArgument("capacity_rps", f"must be > 0, got {capacity_rps}")
        if interval_s <= 0:
            raise InvalidArgument("interval_s", f"must be > 0, got {interval_s}")
        self.capacity_rps, self.interval_s = capacity_rps, interval_s
        self._last_s = -math.inf
        self._rates: list[float] = []     # arrival rates seen since the last adjustment
        self._desired = min_replicas
        self._why = "planner"

    def on_tick(self, signals: Signals, now_s: float) -> Plan:
        self._rates.append(signals.arrival_rps)
        if now_s - self._last_s >= self.interval_s:
            self._last_s = now_s
            # Constant predictor over the last interval (the planner's simplest load predictor),
            # taken at its mean: what the next interval is expected to bring.
            predicted = sum(self._rates) / len(self._rates)
            self._rates = []
            self._desired = math.ceil(predicted / self.capacity_rps - 1e-9)
            self._why = f"planner: predicted {predicted:.2f} req/s / {self.capacity_rps:.2f} req/s per instance"
        return self._to(self._desired, signals, self._why)

