"""Least-load: each request, in arrival order, goes where the fewest requests are (a baseline).

In a P/D cluster each request is split: the least-loaded P prefills, the least-loaded D decodes.
"""

from __future__ import annotations

from typing import Sequence

from services.common.domain import ClusterSnapshot, Decision, Leg, RequestSpec, Role, ScheduleResult, Verdict
from services.scheduler.policy.base import PolicyConfig, candidates, fits_context, outstanding, stage_roles


class LeastLoad:
    name = "least-load"

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    def schedule(self, waiting: Sequence[RequestSpec], cluster: ClusterSnapshot, now_s: float) -> ScheduleResult:
        decisions: list[Decision] = []
        taken: dict[str, int] = {}
        roles = stage_roles(cluster)
        for spec in waiting:
            picks: list = []
            for role in roles:
                load = {i.instance_id: outstanding(i) + taken.get(i.instance_id, 0)
                        for i in candidates(cluster, self.config, role)}
                pool = [i for i in candidates(cluster, self.config, role)
                        if fits_context(spec, i) and load[i.instance_id] < self.config.max_requests_per_instance
                        and (role is not Role.PREFILL or cluster.may_send_kv(i.instance_id))
                        and (role is not Role.DECODE or cluster.linked(picks[0][0].instance_id, i.instance_id))]
                if not pool:
                    break
                # Ties go to the lower id so the choice is deterministic.
                inst = min(pool, key=lambda i: (load[i.instance_id], i.instance_id))
                picks.append((inst, load[inst.instance_id]))
            if len(picks) < len(roles):
                break
            for inst, _ in picks:
                taken[inst.instance_id] = taken.get(inst.instance_id, 0) + 1
            why = [f"{n} outstanding, kv {inst.load.kv_usage:.0%}" for inst, n in picks]
            if roles == (Role.COLOCATED,):
                decisions.append(Decision(spec.request_id, Verdict.ADMIT, f"least load: {why[0]}",
                                          instance_id=picks[0][0].instance_id))
            else:
                legs = tuple(Leg(role, inst.instance_id) for role, (inst, _) in zip(roles, picks))
                decisions.append(Decision(
                    spec.request_id, Verdict.ADMIT,
                    f"P/D least load: prefill -> {legs[0].instance_id} ({why[0]}), "
                    f"decode -> {legs[1].instance_id} ({why[1]})",
                    instance_id=legs[0].instance_id, legs=legs))
        return ScheduleResult(decisions=tuple(decisions))
