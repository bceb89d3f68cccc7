"""What a run leaves to be measured: one record per request, on the run's own clock (virtual in
the simulator, the client's monotonic clock in a live bench), and the run's totals."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.domain import RequestSpec


@dataclass
class RequestRecord:
    spec: RequestSpec
    output_tokens: int
    instance_id: str = ""
    placed_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    finish_s: float | None = None
    generated: int = 0
    verdict: str = ""          # admit, best_effort, reject, failed
    reason: str = ""
    preemptions: int = 0


@dataclass
class RunResult:
    records: list[RequestRecord]
    instance_seconds: float
    makespan_s: float
    decisions: int
    engine_preemptions: int
    policy_preemptions: int
