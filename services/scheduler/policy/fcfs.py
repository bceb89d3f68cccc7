"""FCFS with round-robin placement: vLLM behind a round-robin router (a baseline)."""

from __future__ import annotations

from typing import Sequence

from services.common.domain import ClusterSnapshot, Decision, RequestSpec, ScheduleResult, Verdict
from services.scheduler.policy.base import PolicyConfig, candidates, fits_context, outstanding


class FcfsRoundRobin:
    name = "fcfs"

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self._next = 0  # round-robin cursor over the sorted instance ids

    def schedule(self, waiting: Sequence[RequestSpec], cluster: ClusterSnapshot, now_s: float) -> ScheduleResult:
        decisions: list[Decision] = []
        taken: dict[str, int] = {}
        for spec in waiting:  # arrival order; stop at the first that cannot go (FCFS: no overtaking)
            pool = sorted(candidates(cluster, self.config), key=lambda i: i.instance_id)
            pool = [
                i for i in pool
                if fits_context(spec, i)
                and outstanding(i) + taken.get(i.instance_id, 0) < self.config.max_requests_per_instance
            ]
            if not pool:
                break
            inst = pool[self._next % len(pool)]
            self._next += 1
            taken[inst.instance_id] = taken.get(inst.instance_id, 0) + 1
            decisions.append(
                Decision(spec.request_id, Verdict.ADMIT, f"round-robin turn {self._next - 1} of {len(pool)}",
                         instance_id=inst.instance_id)
            )
        return ScheduleResult(decisions=tuple(decisions))
