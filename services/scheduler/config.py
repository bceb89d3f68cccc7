"""Typed scheduler configuration (filled from CLI flags by services.cli)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.tracing import TracingConfig
from services.scheduler.policy.base import PolicyConfig


@dataclass(frozen=True)
class SchedulerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    policy: str = "hfx"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "hfx"
    registry_refresh_s: float = 0.5
    load_ttl_s: float = 5.0
    max_queue: int = 10_000            # bounded: overload is refused, never buffered without limit
    max_wait_s: float = 30.0           # longest a request waits in the queue before it is refused
    # A cluster that cannot serve (only P registered, say) refuses requests at once only after it
    # has been so this long: before that it is starting (P registered a moment before D, and the
    # registry refresh fell between them) and requests wait, as in an empty cluster.
    serving_gap_grace_s: float = 2.0
    # With nothing queued, in-flight protection runs at most this often (a round with a queue runs
    # on every arrival, completion and load report).
    protect_interval_s: float = 0.2
    worker_call_timeout_s: float = 2.0 # Worker.Abort when preempting a running request
    refine_models: bool = True         # refine instances' latency models online from reported steps
    # While nothing waits, grant routers tickets (standing placements, docs/ARCHITECTURE.md) so a
    # request within a ticket's bound starts without a round trip here. Policies that cannot
    # grant them (IssuesTickets) never do.
    tickets: bool = True
    ticket_refresh_s: float = 0.05    # tickets follow ordinary rounds at most this often (a spent one: at once)
    # The policy's knobs, made by services/scheduler/policy/settings.py (the rule `hfx sim` uses too).
    policy_config: PolicyConfig = PolicyConfig()
    # Issue 11: flip P/D roles on SLO pressure (services/scheduler/roles) via the scaler's SetRole.
    role_changes: bool = False
    scaler_address: str = ""
    tracing: TracingConfig = TracingConfig()
    metrics_port: int = 0              # Prometheus /metrics on 127.0.0.1; 0 = off
