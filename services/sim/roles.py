"""Role changes in the simulator (SIMULATED): the same RolePolicy as the live scheduler, on the
virtual clock. Every `tick_s` it reads the simulation's snapshot and queue, as the scheduler's
role loop reads its own; a flip takes effect `change_s` later (the measured time from decision to
the new role being placed on: the worker's registry write, the scheduler's refresh, the link
warm-up), and legs placed before it finish where they are.

Plugs into Simulation's `scaling` hooks (begin / on_event / on_finish / instance_seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.domain import ClusterSnapshot, RequestSpec, Role, Verdict
from services.scheduler.roles import RoleDecision, RolePolicy


@dataclass
class RoleChange:
    decided_s: float
    effective_s: float
    decision: RoleDecision


class RoleDriver:
    def __init__(self, policy: RolePolicy | None, change_s: float = 0.5) -> None:
        """policy None: fixed roles (the baseline), ticks only to sample the mix."""
        self.policy = policy
        self.change_s = change_s
        self.changes: list[RoleChange] = []
        self.timeline: list[tuple[float, int, int]] = []   # (t, prefill, decode) per tick
        self.refused: list[RequestSpec] = []   # rejected since the last tick, as the scheduler keeps them

    def begin(self, sim) -> None:
        sim._push(0.0, "scale", ("tick", None))

    def on_finish(self, rec, now_s: float) -> None:
        if rec.verdict == Verdict.REJECT.value:
            self.refused.append(rec.spec)

    def instance_seconds(self, end_s: float) -> float:
        return 0.0   # the simulation counts its fixed set of nodes

    def on_event(self, sim, payload) -> None:
        kind, arg = payload
        if kind == "apply":
            sim.set_role(arg.instance_id, arg.to_role)
            return
        roles = [n.role for n in sim.nodes]
        self.timeline.append((sim.now_s, roles.count(Role.PREFILL), roles.count(Role.DECODE)))
        if self.policy is not None:
            decision = self.policy.on_tick(ClusterSnapshot(tuple(n.view for n in sim.nodes)), sim.waiting, sim.now_s,
                                           self.refused)
            self.refused = []
            if decision.flip:
                self.changes.append(RoleChange(sim.now_s, sim.now_s + self.change_s, decision))
                sim._push(sim.now_s + self.change_s, "scale", ("apply", decision))
        if sim.done < len(sim.records):
            tick_s = self.policy.config.tick_s if self.policy is not None else 1.0
            sim._push(sim.now_s + tick_s, "scale", ("tick", None))
