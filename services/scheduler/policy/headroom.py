"""Headroom routing in the style of llm-d's predicted-latency scorer (a baseline).

For each request in arrival order, predict its TTFT and TPOT on every instance with that
instance's latency model and route it to the one with the most headroom, where
headroom = min((TTFT_slo - ttft)/TTFT_slo, (TPOT_slo - tpot)/TPOT_slo). No admission control: when
no instance has positive headroom it still goes to the least negative one.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from services.common.domain import ClusterSnapshot, Decision, RequestSpec, ScheduleResult, Verdict
from services.scheduler.policy.base import PolicyConfig, candidates, fits_context
from services.scheduler.policy.budget import summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from services.scheduler.policy.fit import FitTable


class Headroom:
    name = "headroom"

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.estimator = OutputLengthEstimator(config.prior_output_tokens)

    def observe_completion(self, task_class: str, output_tokens: int, request_id: str = "") -> None:
        self.estimator.observe(task_class, output_tokens)

    def schedule(self, waiting: Sequence[RequestSpec], cluster: ClusterSnapshot, now_s: float) -> ScheduleResult:
        pool = candidates(cluster, self.config)
        if not pool or not waiting:
            return ScheduleResult()
        table = FitTable(pool, [summarise(i, self.config, self.estimator) for i in pool], self.config, now_s, set())
        decisions: list[Decision] = []
        for spec in waiting:
            usable = (table.outstanding < self.config.max_requests_per_instance) & np.array(
                [fits_context(spec, i) for i in pool])
            if not usable.any():
                break
            out_tokens = self.estimator.estimate(spec)
            L = float(spec.prompt_tokens)
            s = table.c0 + table.c2 * table.n + table.c3 * table.kv_mean
            per_step = np.maximum(1.0, table.chunk - table.n)
            queued = table.backlog + L
            ttft_ms = np.ceil(queued / per_step) * s + table.c1 * queued
            tpot_ms = s + table.c2 + table.c3 * (L + out_tokens / 2)
            headroom = np.minimum((spec.slo.ttft_ms - ttft_ms) / spec.slo.ttft_ms,
                                  (spec.slo.tpot_ms - tpot_ms) / spec.slo.tpot_ms)
            idx = int(np.argmax(np.where(usable, headroom, -np.inf)))
            table.place(idx, spec, out_tokens, now_s, protected=True)
            decisions.append(Decision(spec.request_id, Verdict.ADMIT,
                                      f"most headroom {headroom[idx]:+.2f} on {table.ids[idx]}: predicted TTFT "
                                      f"{ttft_ms[idx]:.0f}/{spec.slo.ttft_ms:.0f} ms, TPOT "
                                      f"{tpot_ms[idx]:.1f}/{spec.slo.tpot_ms:.1f} ms",
                                      instance_id=table.ids[idx], predicted_ttft_ms=float(ttft_ms[idx])))
        return ScheduleResult(decisions=tuple(decisions))
