"""FCFS with round-robin placement: vLLM behind a round-robin router (a baseline).

In a P/D cluster each request is split, with one round-robin cursor per stage: round-robin P and
round-robin D, which is what vLLM's disaggregation proxy does.
"""

from __future__ import annotations

from typing import Sequence

from services.common.domain import ClusterSnapshot, Decision, Leg, RequestSpec, Role, ScheduleResult, Verdict
from services.scheduler.policy.base import PolicyConfig, candidates, fits_context, outstanding, stage_roles


class FcfsRoundRobin:
    name = "fcfs"

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._next: dict[Role, int] = {role: 0 for role in Role}  # cursor per stage over sorted ids

    def schedule(self, waiting: Sequence[RequestSpec], cluster: ClusterSnapshot, now_s: float) -> ScheduleResult:
        decisions: list[Decision] = []
        taken: dict[str, int] = {}
        roles = stage_roles(cluster)
        for spec in waiting:  # arrival order; stop at the first that cannot go (FCFS: no overtaking)
            legs: list[Leg] = []
            turns: list[str] = []
            for role in roles:
                pool = [
                    i for i in sorted(candidates(cluster, self.config, role), key=lambda i: i.instance_id)
                    if fits_context(spec, i)
                    and outstanding(i) + taken.get(i.instance_id, 0) < self.config.max_requests_per_instance
                    and (role is not Role.PREFILL or cluster.may_send_kv(i.instance_id))
                    and (role is not Role.DECODE or cluster.linked(legs[0].instance_id, i.instance_id))
                ]
                if not pool:
                    break
                turn = self._next[role]
                legs.append(Leg(role, pool[turn % len(pool)].instance_id))
                turns.append(f"turn {turn} of {len(pool)}")
            if len(legs) < len(roles):
                break
            for role, leg in zip(roles, legs):
                self._next[role] += 1
                taken[leg.instance_id] = taken.get(leg.instance_id, 0) + 1
            if roles == (Role.COLOCATED,):
                decisions.append(Decision(spec.request_id, Verdict.ADMIT, f"round-robin {turns[0]}",
                                          instance_id=legs[0].instance_id))
            else:
                decisions.append(Decision(
                    spec.request_id, Verdict.ADMIT,
                    f"P/D round-robin: prefill -> {legs[0].instance_id} ({turns[0]}), "
                    f"decode -> {legs[1].instance_id} ({turns[1]})",
                    instance_id=legs[0].instance_id, legs=tuple(legs)))
        return ScheduleResult(decisions=tuple(decisions))
