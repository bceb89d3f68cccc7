"""What an autoscaler sees on each tick: a snapshot of the cluster and its SLO signals.

Adapters (the live scaler, the simulator) fill it; nothing here reads a clock or a socket.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping


class Phase(enum.Enum):
    STARTING = "starting"    # launched, not serving yet (costs money, carries no load)
    READY = "ready"          # serving and taking new work
    DRAINING = "draining"    # serving its in-flight requests, taking no new work


class StartKind(enum.Enum):
    """How a new instance gets its weights: this sets how long it takes to be ready."""

    COLD = "cold"            # from storage
    PEER = "peer"            # device-to-device from a running peer (issue 12)
    STANDBY = "standby"      # a pre-started instance from a standby pool


@dataclass(frozen=True)
class InstanceSignal:
    instance_id: str
    phase: Phase
    since_s: float = 0.0                 # when it entered its phase (for READY: when it became ready)
    device: str = "cpu"
    inflight: int = 0                    # placed and not finished (running + queued in its engine)
    queued: int = 0                      # of those, waiting in its engine's queue
    # Requests/s it can carry within the SLOs, from its measured latency model (None: unknown).
    # Measured while it warms up this reads low, so the policy ignores it then (see warmup_s).
    capacity_rps: float | None = None
    role: str = "colocated"              # P/D: "prefill" or "decode" (services/scaler/autoscale/pd.py)


@dataclass(frozen=True)
class Attainment:
    met: int = 0
    total: int = 0

    @property
    def share(self) -> float | None:
        return self.met / self.total if self.total else None


@dataclass(frozen=True)
class Signals:
    instances: tuple[InstanceSignal, ...]
    arrival_rps: float                                   # arrivals per second over the window
    attainment: Mapping[str, Attainment] = field(default_factory=dict)  # per task class, over the window
    queue_depth: int = 0                                 # requests waiting at the scheduler
    slack_deficit_ms: float = 0.0                        # sum over waiting requests of how late they already are
    rejections: Mapping[str, int] = field(default_factory=dict)  # reason -> count over the window
    # Measured time from launch to ready, by start kind (missing kinds: the configured defaults).
    ready_times_s: Mapping[StartKind, float] = field(default_factory=dict)
    start_kinds: tuple[StartKind, ...] = (StartKind.COLD,)  # the ways a new instance can start now
    # The standby pool's engines (issue 12), idle but paid for: their memory in serving-instance
    # equivalents (pool RSS / a serving worker's RSS; services/scaler/standby.py), 0 without a pool.
    standby_equivalents: float = 0.0
    # Req/s an instance carries within the SLOs for the traffic as it is now, when no warmed-up
    # instance has a measured figure (None: the configured capacity). P/D derives it per role from
    # the mix's token lengths (a longer mean prompt: fewer req/s per prefill instance).
    capacity_hint_rps: float | None = None
    # How long the window behind arrival_rps is (0: unknown). With it the policy tells a change in
    # the rate from the counting noise of a short window (services/scaler/autoscale/forecast.py).
    rate_window_s: float = 0.0

    def overall_attainment(self) -> Attainment:
        return Attainment(sum(a.met for a in self.attainment.values()), sum(a.total for a in self.attainment.values()))

    def of(self, *phases: Phase) -> list[InstanceSignal]:
        return [i for i in self.instances if i.phase in phases]
