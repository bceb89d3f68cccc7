"""Least-load: each request, in arrival order, goes where the fewest requests are (a baseline)."""

from __future__ import annotations

from typing import Sequence

from services.common.domain import ClusterSnapshot, Decision, RequestSpec, ScheduleResult, Verdict
from services.scheduler.policy.base import PolicyConfig, candidates, fits_context, outstanding


class LeastLoad:
    name = "least-load"

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    def schedule(self, waiting: Sequence[RequestSpec], cluster: ClusterSnapshot, now_s: float) -> ScheduleResult:
        decisions: list[Decision] = []
        taken: dict[str, int] = {}
        for spec in waiting:
            load = {i.instance_id: outstanding(i) + taken.get(i.instance_id, 0) for i in candidates(cluster, self.config)}
            pool = [
                i for i in candidates(cluster, self.config)
                if fits_context(spec, i) and load[i.instance_id] < self.config.max_requests_per_instance
            ]
            if not pool:
                break
            # Ties go to the lower id so the choice is deterministic.
            inst = min(pool, key=lambda i: (load[i.instance_id], i.instance_id))
            taken[inst.instance_id] = taken.get(inst.instance_id, 0) + 1
            decisions.append(
                Decision(spec.request_id, Verdict.ADMIT,
                         f"least load: {load[inst.instance_id]} outstanding, kv {inst.load.kv_usage:.0%}",
                         instance_id=inst.instance_id)
            )
        return ScheduleResult(decisions=tuple(decisions))
