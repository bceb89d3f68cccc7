"""EDF: earliest TTFT deadline first, placed on the least-loaded instance (a baseline).

No admission control and no latency model: it only reorders the global queue, so it differs from
least-load only when every instance is full and requests wait at the scheduler.
"""

from __future__ import annotations

from typing import Sequence

from services.common.domain import ClusterSnapshot, Decision, RequestSpec, ScheduleResult, Verdict
from services.scheduler.policy.base import PolicyConfig, candidates, fits_context, outstanding


class Edf:
    name = "edf"

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config

    def schedule(self, waiting: Sequence[RequestSpec], cluster: ClusterSnapshot, now_s: float) -> ScheduleResult:
        pool = candidates(cluster, self.config)
        if not pool or not waiting:
            return ScheduleResult()
        load = {i.instance_id: outstanding(i) for i in pool}
        room = sum(self.config.max_requests_per_instance - n for n in load.values())
        decisions: list[Decision] = []
        # Only the `room` most urgent can be placed this pass; FCFS tie-break by arrival.
        order = sorted(waiting, key=lambda s: (s.ttft_deadline_s, s.arrival_s))
        for spec in order[:room]:
            fitting = [i for i in pool if fits_context(spec, i) and load[i.instance_id] < self.config.max_requests_per_instance]
            if not fitting:
                continue
            inst = min(fitting, key=lambda i: (load[i.instance_id], i.instance_id))
            load[inst.instance_id] += 1
            slack_ms = (spec.ttft_deadline_s - now_s) * 1000.0
            decisions.append(Decision(spec.request_id, Verdict.ADMIT,
                                      f"earliest deadline (in {slack_ms:.0f} ms); least load "
                                      f"{load[inst.instance_id] - 1} outstanding on {inst.instance_id}",
                                      instance_id=inst.instance_id, slack_ms=slack_ms))
        return ScheduleResult(decisions=tuple(decisions))
