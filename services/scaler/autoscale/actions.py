"""What an autoscaler asks for. Every action carries its reason and a decision id; an actuator
applies a decision id at most once (the live scaler claims it in Redis first)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.scaler.autoscale.signals import StartKind


@dataclass(frozen=True)
class Start:
    """Launch one instance."""

    decision_id: str
    reason: str
    device: str = "cpu"
    start_kind: StartKind = StartKind.COLD
    role: str = "colocated"     # P/D: the role the new instance takes ("prefill", "decode")


@dataclass(frozen=True)
class Drain:
    """Stop placing new work on an instance; its in-flight requests finish there."""

    decision_id: str
    reason: str
    instance_id: str


@dataclass(frozen=True)
class Undrain:
    """Take a draining instance back into service (cheaper and faster than a new start)."""

    decision_id: str
    reason: str
    instance_id: str


@dataclass(frozen=True)
class Remove:
    """Stop a drained instance: only issued once it has nothing in flight."""

    decision_id: str
    reason: str
    instance_id: str


@dataclass(frozen=True)
class Flip:
    """P/D: change a ready instance's role (prefill <-> decode) instead of starting one and
    draining another (no start time, no extra cost; the worker drains its old role's work first)."""

    decision_id: str
    reason: str
    instance_id: str
    to_role: str


Action = Start | Drain | Undrain | Remove | Flip


@dataclass(frozen=True)
class Plan:
    """One tick's outcome: the actions, the instance count aimed at, and why (with numbers)."""

    actions: tuple[Action, ...] = ()
    desired: int = 0
    reason: str = ""
    predicted_rps: float = 0.0
    capacity_rps: float = 0.0          # per instance, as the policy estimated it this tick
    details: dict = field(default_factory=dict)
