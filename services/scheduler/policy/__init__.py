"""Scheduling policies: pure cores over (waiting requests, cluster snapshot, now).

Each policy is a small class with `name` and `schedule()`; `make_policy(name)` builds one by its
configured name. The same objects drive the scheduler service and the simulator.
"""

from __future__ import annotations

from services.scheduler.policy.base import Policy, PolicyConfig
from services.scheduler.policy.fcfs import FcfsRoundRobin
from services.scheduler.policy.least_load import LeastLoad

_REGISTRY: dict[str, type] = {
    FcfsRoundRobin.name: FcfsRoundRobin,
    LeastLoad.name: LeastLoad,
}


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def make_policy(name: str, config: PolicyConfig | None = None) -> Policy:
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(policy_names())}") from None
    return cls(config or PolicyConfig())


__all__ = ["Policy", "PolicyConfig", "make_policy", "policy_names"]
