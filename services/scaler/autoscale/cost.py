"""The cost model: price per instance-second by device kind, and the cheapest way to add capacity.

An option is a (device kind, start kind) pair. Among the options that are ready before the
predicted shortfall, the one with the lowest price per unit of SLO capacity wins (ties: the
sooner ready); when none is in time, the soonest ready (a late instance still shortens the miss).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.scaler.autoscale.signals import InstanceSignal, StartKind


@dataclass(frozen=True)
class Option:
    device: str
    start_kind: StartKind
    ready_s: float
    price_per_s: float
    capacity_rps: float

    @property
    def price_per_rps(self) -> float:
        return self.price_per_s / self.capacity_rps


def fleet_cost(prices: Mapping[str, float], instances: Iterable[InstanceSignal], standby_equivalents: float,
               standby_device: str) -> tuple[float, float]:
    """(instances paid for, price per second) now: every launched instance (starting, ready,
    draining) at its device's price, plus the standby pool as the share of an instance of
    `standby_device` that its memory holds. The autoscaler's instance-seconds integrate the first."""
    paid, per_s = standby_equivalents, standby_equivalents * prices.get(standby_device, 0.0)
    for inst in instances:
        paid += 1.0
        per_s += prices.get(inst.device, 0.0)
    return paid, per_s


class CostMeter:
    """Instance-seconds and cost integrated over ticks: each interval at the fleet of the tick
    that began it (Plan.details from `fleet_cost`), the standby pool's share counted apart too."""

    def __init__(self) -> None:
        self.instance_seconds = 0.0
        self.standby_instance_seconds = 0.0
        self.cost = 0.0
        self._last: tuple[float, Mapping] | None = None

    def add(self, now_s: float, details: Mapping) -> None:
        if self._last is not None:
            since_s, last = self._last
            dt = max(0.0, now_s - since_s)
            self.instance_seconds += last.get("paid_instances", 0.0) * dt
            self.standby_instance_seconds += last.get("standby_equivalents", 0.0) * dt
            self.cost += last.get("cost_per_s", 0.0) * dt
        self._last = (now_s, details)


def choose(options: list[Option], deadline_s: float) -> tuple[Option, str]:
    """The option to use and why; `deadline_s` is how soon the capacity is needed."""
    if not options:
        raise ValueError("no way to start an instance")
    in_time = [o for o in options if o.ready_s <= deadline_s]
    if in_time:
        best = min(in_time, key=lambda o: (o.price_per_rps, o.ready_s))
        return best, (f"{best.device}/{best.start_kind.value}: cheapest in time "
                      f"({best.price_per_s:g}/s for {best.capacity_rps:.2f} req/s, ready in {best.ready_s:.0f}s "
                      f"<= {deadline_s:.0f}s)")
    best = min(options, key=lambda o: (o.ready_s, o.price_per_rps))
    return best, (f"{best.device}/{best.start_kind.value}: soonest ready ({best.ready_s:.0f}s; none in time for "
                  f"{deadline_s:.0f}s)")
