"""P/D autoscaling: one policy decides the prefill and the decode counts together.

Each role is scaled by its own `Autoscaler` core (the same rules as colocated scaling: demand
over SLO capacity at the target utilization, SLO pressure, drain-only shrinking with hysteresis,
warm-up samples ignored), fed that role's view of the cluster:

- prefill: its SLO is TTFT. Capacity per P in req/s is its prompt-token throughput within the
  TTFT SLOs over the mean prompt length now, so prefill-heavy load (longer prompts at the same
  request rate) asks for more P. Pressure: TTFT attainment with requests waiting for a first token.
- decode: its SLO is TPOT. Capacity per D is its output-token throughput within the TPOT SLOs over
  the mean output length now. Pressure: TPOT attainment with requests waiting for a decode slot
  or decoding late grows D.

Then the two plans are coordinated:
1. Flip before buying: when one role starts instances on a tick where the other drains some, each
   such pair becomes one `Flip` of the drained instance to the growing role (ready at once, no
   new cost; SGLang-style in-place role switch, the worker drains its old role's work first).
2. A joint bound: P + D never exceeds `max_total`; when both grow past it, starts are dropped
   one at a time from the role that would still run at the lower predicted utilization without
   it, so the slots left go where they are needed most.
Every action keeps its role core's reason and gets the coordination's reason added.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.scaler.autoscale.actions import Action, Drain, Flip, Plan, Remove, Start, Undrain
from services.scaler.autoscale.config import AutoscaleConfig
from services.scaler.autoscale.policy import Autoscaler
from services.scaler.autoscale.signals import Attainment, InstanceSignal, Phase, Signals, StartKind

ROLES = ("prefill", "decode")


@dataclass(frozen=True)
class RoleLoad:
    """One role's side of the traffic over the window."""

    mean_tokens: float                 # prefill: mean prompt tokens; decode: mean output tokens
    attainment: Attainment = Attainment()   # prefill: TTFT met/total; decode: TPOT met/total
    queue_depth: int = 0               # waiting for this role (a first token; a decode slot)
    late_ms: float = 0.0               # how late its waiting requests already are, summed
    rejections: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PDSignals:
    instances: tuple[InstanceSignal, ...]   # each with its role
    arrival_rps: float
    prefill: RoleLoad
    decode: RoleLoad
    ready_times_s: Mapping[StartKind, float] = field(default_factory=dict)
    start_kinds: tuple[StartKind, ...] = (StartKind.COLD,)


@dataclass(frozen=True)
class PDConfig:
    prefill: AutoscaleConfig           # min/max P, utilizations, cool-down, ... (its capacity_rps is unused)
    decode: AutoscaleConfig            # the same for D
    prefill_tokens_per_s: float        # prompt tokens/s one P processes within the TTFT SLOs
    decode_tokens_per_s: float         # output tokens/s one D sustains within the TPOT SLOs
    max_total: int = 16                # P + D

    def __post_init__(self) -> None:
        for name in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            value = getattr(self, name)
            if not value > 0:
                raise InvalidArgument(name, f"must be > 0 tokens/s, got {value}")
        floor = self.prefill.min_replicas + self.decode.min_replicas
        if self.max_total < max(1, floor):
            raise InvalidArgument("max_total", f"must be >= the roles' minimums together ({floor}) and >= 1, "
                                  f"got {self.max_total}")

    def of(self, role: str) -> AutoscaleConfig:
        return self.prefill if role == "prefill" else self.decode

    def tokens_per_s(self, role: str) -> float:
        return self.prefill_tokens_per_s if role == "prefill" else self.decode_tokens_per_s


def role_signals(signals: PDSignals, role: str, tokens_per_s: float) -> Signals:
    """The cluster as the role's core sees it: its instances, its SLO, its queue, and what one
    instance of it carries in req/s for the current token lengths."""
    load = signals.prefill if role == "prefill" else signals.decode
    return Signals(tuple(i for i in signals.instances if i.role == role), signals.arrival_rps,
                   {"ttft" if role == "prefill" else "tpot": load.attainment}, load.queue_depth, load.late_ms,
                   load.rejections, signals.ready_times_s, signals.start_kinds,
                   capacity_hint_rps=tokens_per_s / max(1.0, load.mean_tokens))


class PDAutoscaler:
    name = "hfx-pd"

    def __init__(self, config: PDConfig, id_prefix: str = "hfx") -> None:
        self.config = config
        self.id_prefix = id_prefix
        self.cores = {role: Autoscaler(config.of(role), id_prefix=f"{id_prefix}-{role[0]}") for role in ROLES}
        self._seq = 0

    def _id(self) -> str:
        self._seq += 1
        return f"{self.id_prefix}-x{self._seq}"

    def on_tick(self, signals: PDSignals, now_s: float) -> Plan:
        plans = {role: self.cores[role].on_tick(role_signals(signals, role, self.config.tokens_per_s(role)), now_s)
                 for role in ROLES}
        actions = {role: [dataclasses.replace(a, role=role) if isinstance(a, Start) else a for a in plans[role].actions]
                   for role in ROLES}
        flips = self._flips(actions)
        capped = self._cap(actions, plans, signals)
        # A role's hold, or the reasons of the actions that remain after the flips and the cap.
        holds = [f"{role}: {plans[role].reason}" for role in ROLES
                 if plans[role].reason and not any(not isinstance(a, Remove) for a in plans[role].actions)]
        kept = [f"{role}: {a.reason}" for role in ROLES for a in actions[role]]
        reason = "; ".join(x for x in (*holds, *(f.reason for f in flips), *kept, capped) if x)
        desired = {role: self._desired(role, actions[role], flips, signals) for role in ROLES}
        details = {role: {**plans[role].details, "desired": desired[role]} for role in ROLES}
        # What both roles' instances cost now (each core priced its own), for the cost meter and status.
        paid = {key: sum(plans[role].details.get(key, 0.0) for role in ROLES) for key in ("paid_instances", "cost_per_s")}
        return Plan((*flips, *actions["prefill"], *actions["decode"]), sum(desired.values()), reason,
                    signals.arrival_rps, 0.0, {"roles": details, "flips": len(flips), "capped": capped, **paid})

    def _flips(self, actions: dict[str, list[Action]]) -> list[Flip]:
        """Pairs (a start of one role, a drain of the other) become one flip of the drained instance."""
        flips: list[Flip] = []
        for grow, shrink in (("prefill", "decode"), ("decode", "prefill")):
            starts = [a for a in actions[grow] if isinstance(a, Start)]
            drains = [a for a in actions[shrink] if isinstance(a, Drain)]
            for start, drain in zip(starts, drains):
                actions[grow].remove(start)
                actions[shrink].remove(drain)
                flips.append(Flip(self._id(), f"flip {drain.instance_id} {shrink} -> {grow} instead of a start "
                                  f"and a drain ({grow} {start.reason}; {shrink} {drain.reason})",
                                  drain.instance_id, grow))
        return flips

    def _cap(self, actions: dict[str, list[Action]], plans: dict[str, Plan], signals: PDSignals) -> str:
        """Drops starts beyond max_total one at a time, each from the role that would still run at
        the lower predicted utilization without it (so both keep what they need most); says what
        it dropped."""
        net = {role: _net(role, actions[role], signals) for role in ROLES}
        over = sum(net.values()) - self.config.max_total

        def util(role: str) -> float:   # predicted demand over the role's capacity at its count now
            cap = plans[role].capacity_rps * max(net[role] - 1, 0)
            return plans[role].predicted_rps / cap if cap > 0 else float("inf")

        dropped = {role: 0 for role in ROLES}
        while over > 0:
            candidates = [r for r in ROLES if any(isinstance(a, Start) for a in actions[r])]
            if not candidates:
                break
            role = min(candidates, key=util)
            actions[role].remove(next(a for a in reversed(actions[role]) if isinstance(a, Start)))
            dropped[role] += 1
            net[role] -= 1
            over -= 1
        if not any(dropped.values()):
            return ""
        said = ", ".join(f"{n} {role} start(s) dropped ({role} at {net[role]}: "
                         f"{plans[role].predicted_rps / (plans[role].capacity_rps * net[role]):.0%} utilization)"
                         for role, n in dropped.items() if n and net[role] and plans[role].capacity_rps)
        return f"P + D capped at max_total {self.config.max_total}: {said}"

    @staticmethod
    def _desired(role: str, actions: list[Action], flips: list[Flip], signals: PDSignals) -> int:
        flipped = {f.instance_id for f in flips}
        flipped_away = sum(1 for i in signals.instances if i.role == role and i.instance_id in flipped)
        return _net(role, actions, signals) - flipped_away + sum(1 for f in flips if f.to_role == role)


def _net(role: str, actions: list[Action], signals: PDSignals) -> int:
    """The role's instances in service (or on their way) once `actions` are applied."""
    active = sum(1 for i in signals.instances if i.role == role and i.phase is not Phase.DRAINING)
    return (active + sum(isinstance(a, (Start, Undrain)) for a in actions)
            - sum(isinstance(a, Drain) for a in actions))
