"""The cost model: price per instance-second by device kind, and the cheapest way to add capacity.

An option is a (device kind, start kind) pair. Among the options that are ready before the
predicted shortfall, the one with the lowest price per unit of SLO capacity wins (ties: the
sooner ready); when none is in time, the soonest ready (a late instance still shortens the miss).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.scaler.autoscale.signals import StartKind


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
