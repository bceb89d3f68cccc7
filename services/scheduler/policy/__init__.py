"""Scheduling policies: pure cores over (waiting requests, cluster snapshot, now).

Each policy is a small class with `name` and `schedule()`; `make_policy(name)` builds one by its
configured name. The same objects drive the scheduler service and the simulator. Optional
capabilities are declared protocols (base.py): `LearnsFromCompletions` (observe_completion) and
`KeepsBudgets` (budgets_ms) and `IssuesTickets` (tickets); callers test for them with isinstance, never by attribute probing.
"""

from __future__ import annotations

from services.scheduler.policy.base import Defers, IssuesTickets, KeepsBudgets, LearnsFromCompletions, Policy, PolicyConfig
from services.scheduler.policy.edf import Edf
from services.scheduler.policy.fcfs import FcfsRoundRobin
from services.scheduler.policy.headroom import Headroom
from services.scheduler.policy.hfx import Hfx
from services.scheduler.policy.least_load import LeastLoad

_REGISTRY: dict[str, type] = {
    cls.name: cls for cls in (FcfsRoundRobin, LeastLoad, Edf, Headroom, Hfx)
}


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def make_policy(name: str, config: PolicyConfig | None = None) -> Policy:
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(policy_names())}") from None
    return cls(config or PolicyConfig())


def observe_completion(policy: Policy, task_class: str, output_tokens: int, request_id: str = "") -> None:
    """Tell a policy a request finished, if it learns from completions (no-op otherwise)."""
    if isinstance(policy, LearnsFromCompletions):
        policy.observe_completion(task_class, output_tokens, request_id)


__all__ = ["Defers", "IssuesTickets", "KeepsBudgets", "LearnsFromCompletions", "Policy", "PolicyConfig", "make_policy", "observe_completion", "policy_names"]
