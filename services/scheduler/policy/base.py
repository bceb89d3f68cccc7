"""The policy interface every scheduling policy implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from services.common.domain import ClusterSnapshot, InstanceView, RequestSpec, ScheduleResult


@dataclass(frozen=True)
class PolicyConfig:
    # An instance whose running + waiting requests reach this is full for placement.
    max_requests_per_instance: int = 256
    # Placement among fitting instances: "best_fit" consolidates, "spread" balances.
    placement: str = "best_fit"


class Policy(Protocol):
    """Called by the scheduler whenever the queue or the cluster changes.

    `waiting` is in arrival order. The result holds a Decision for each request the policy
    settles now (placed, placed best-effort, or rejected); the rest stay queued. A policy
    may keep learned state (an online estimate), but it never does I/O or reads a clock.
    """

    name: str

    def schedule(
        self, waiting: Sequence[RequestSpec], cluster: ClusterSnapshot, now_s: float
    ) -> ScheduleResult: ...


def candidates(cluster: ClusterSnapshot, config: PolicyConfig) -> list[InstanceView]:
    """Instances that may take one more request at all (the shared first filter)."""
    return [
        inst
        for inst in cluster.instances
        if inst.accepting and outstanding(inst) < config.max_requests_per_instance
    ]


def outstanding(inst: InstanceView) -> int:
    """Requests on an instance: the larger of its own report and the scheduler's placements."""
    return max(inst.load.running_requests + inst.load.waiting_requests, len(inst.running))


def fits_context(spec: RequestSpec, inst: InstanceView) -> bool:
    return inst.max_model_len <= 0 or spec.prompt_tokens + spec.max_tokens <= inst.max_model_len
