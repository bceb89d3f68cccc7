"""Prometheus metrics: every metric HFX exports is defined here, in one registry per process.

Each service records through the small functions below, so the names, labels and buckets live in
one place (docs/HTTP_API.md lists them). Labels are bounded by construction: task classes come
from configuration, outcomes and reason kinds from fixed sets, instances from the cluster.
Every metric has labels, so a process shows only the series it actually records.
"""

from __future__ import annotations

import threading

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, GCCollector, PlatformCollector,
                               ProcessCollector, generate_latest, start_http_server)
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the HTTP adapter)

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Buckets in seconds, sized for a CPU tiny model up to a loaded GPU cluster.
_TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2)
_E2E_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# A KV pull: a same-host copy of one block takes well under a millisecond, a TCP stream of 16 MiB
# tens of ms, a failed pull up to its deadline (--kv-deadline-s, 10 s by default).
_KV_PULL_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DECISION_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075, 0.01,
                       0.025, 0.05, 0.1)

# -- router ----------------------------------------------------------------------------------------
ROUTER_REQUESTS = Counter("hfx_router_requests", "Requests by task class and outcome "
                          "(finished, aborted, failed, rejected, unavailable, invalid)",
                          ["task_class", "outcome"], registry=REGISTRY)
ROUTER_SLO = Counter("hfx_router_slo", "Requests that met or missed their SLO (rejected and failed count as missed; "
                     "aborted and invalid are not counted)", ["task_class", "result"], registry=REGISTRY)
ROUTER_TTFT = Histogram("hfx_router_ttft_seconds", "Time to first token as the router sees it",
                        ["task_class"], buckets=_TTFT_BUCKETS_S, registry=REGISTRY)
ROUTER_TPOT = Histogram("hfx_router_tpot_seconds", "Mean time per output token over the decode phase",
                        ["task_class"], buckets=_TPOT_BUCKETS_S, registry=REGISTRY)
ROUTER_E2E = Histogram("hfx_router_e2e_seconds", "Arrival to last token", ["task_class"],
                       buckets=_E2E_BUCKETS_S, registry=REGISTRY)
ROUTER_OUTPUT_TOKENS = Counter("hfx_router_output_tokens", "Tokens streamed to clients", ["task_class"],
                               registry=REGISTRY)
ROUTER_PD_HANDOFF = Histogram("hfx_router_pd_handoff_seconds", "P/D: from the prefill leg's last chunk to the decode "
                              "leg's first token (KV transfer + D's first step)", buckets=_TTFT_BUCKETS_S,
                              registry=REGISTRY)
ROUTER_INFLIGHT = Gauge("hfx_router_inflight_requests", "Requests in this router now (both front doors)",
                        registry=REGISTRY)
ROUTER_CLIENT_STALLS = Counter("hfx_router_client_stalls", "Streams ended because their client stopped reading "
                               "(a write blocked past --client-stall-timeout-s)", ["door"], registry=REGISTRY)
ROUTER_CHUNKS_MERGED = Counter("hfx_router_chunks_merged", "Worker chunks merged into an earlier one of the same "
                               "request because the stream to its client had fallen behind (one write instead of "
                               "several)", registry=REGISTRY)
HTTP_RESPONSES = Counter("hfx_router_http_responses", "HTTP responses by route and status code",
                         ["route", "status_code"], registry=REGISTRY)

# -- scheduler -------------------------------------------------------------------------------------
RECONCILED = Counter("hfx_scheduler_reconciled_requests", "Running requests the scheduler adopted from a worker's "
                     "report (not counted, e.g. after a restart) or let go (counted, no longer running there)",
                     ["action"], registry=REGISTRY)
TICKETS_OUTSTANDING = Gauge("hfx_scheduler_tickets_outstanding", "Tickets (standing placements) routers hold now",
                            ["policy"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("hfx_scheduler_queue_depth", "Requests waiting for placement", ["policy"], registry=REGISTRY)
VERDICTS = Counter("hfx_scheduler_verdicts", "Placement verdicts (admit, best_effort, reject) by reason kind",
                   ["policy", "verdict", "reason"], registry=REGISTRY)
VERDICT_TOKENS = Counter("hfx_scheduler_verdict_tokens", "Tokens of the requests given a verdict: prompt tokens "
                         "(kind=prompt) and output tokens asked (kind=max); over the verdicts, the mean lengths "
                         "the P/D autoscaler sizes each role by", ["policy", "kind"], registry=REGISTRY)
PLACEMENTS = Counter("hfx_scheduler_placements", "Requests placed, by how they run: colocated (whole on a "
                     "colocated instance), split (prefill on P, decode on D), prefill_on_decode (whole on a decode "
                     "instance)", ["policy", "mode"], registry=REGISTRY)
PREEMPTIONS = Counter("hfx_scheduler_preemptions", "Running requests preempted by in-flight protection, by "
                      "result (sent: the worker stopped it, gone: it had already ended, failed: the worker "
                      "could not be told)", ["policy", "result"], registry=REGISTRY)
DEFERRALS = Counter("hfx_scheduler_deferrals", "Requests a pass held back on purpose for a later one (hfx: "
                    "pressure deferral, reason in the scheduler's log)", ["policy"], registry=REGISTRY)
DECISION_SECONDS = Histogram("hfx_scheduler_decision_seconds", "Time in one policy.schedule() call",
                             ["policy"], buckets=_DECISION_BUCKETS_S, registry=REGISTRY)
INSTANCE_RUNNING = Gauge("hfx_instance_running_requests", "Running requests, from the instance's last load report",
                         ["instance"], registry=REGISTRY)
INSTANCE_WAITING = Gauge("hfx_instance_waiting_requests", "Requests queued inside the instance's engine",
                         ["instance"], registry=REGISTRY)
INSTANCE_KV_USAGE = Gauge("hfx_instance_kv_usage_ratio", "Fraction of the instance's KV cache in use",
                          ["instance"], registry=REGISTRY)
INSTANCE_PLACED = Gauge("hfx_instance_placed_requests", "Requests the scheduler placed there and has not "
                        "heard the end of", ["instance"], registry=REGISTRY)
# The time bank (ms) an instance has left before a running request misses its SLO, from policies
# that keep budgets (KeepsBudgets: hfx), set each registry sync (registry_sync.py).
INSTANCE_BUDGET_MS = Gauge("hfx_instance_budget_ms", "SLO time budget left on the instance (hfx policy)",
                           ["instance"], registry=REGISTRY)
_INSTANCE_GAUGES = (INSTANCE_RUNNING, INSTANCE_WAITING, INSTANCE_KV_USAGE, INSTANCE_PLACED, INSTANCE_BUDGET_MS)

# -- worker ----------------------------------------------------------------------------------------
WORKER_RUNNING = Gauge("hfx_worker_running_requests", "Requests running in this worker's engine", ["instance"],
                       registry=REGISTRY)
WORKER_WAITING = Gauge("hfx_worker_waiting_requests", "Requests queued in this worker's engine", ["instance"],
                       registry=REGISTRY)
WORKER_KV_USAGE = Gauge("hfx_worker_kv_usage_ratio", "Fraction of this worker's KV cache in use", ["instance"],
                        registry=REGISTRY)
# P/D KV transfer (services/worker/kv), read from the worker's KV server at each heartbeat;
# cumulative figures are gauges because the server, not this registry, counts them.
WORKER_KV_LEASES = Gauge("hfx_worker_kv_leased_transfers", "Staged KV transfers held under a lease (prefill side)",
                         ["instance"], registry=REGISTRY)
WORKER_KV_LEASED_BLOCKS = Gauge("hfx_worker_kv_leased_blocks", "KV blocks staged under a lease (prefill side)",
                                ["instance"], registry=REGISTRY)
WORKER_KV_LEAKED_BLOCKS = Gauge("hfx_worker_kv_leaked_blocks", "Staged KV blocks freed since start by lease expiry "
                                "(neither acknowledged nor released: leaked until the lease ran out; prefill side)",
                                ["instance"], registry=REGISTRY)
WORKER_KV_FREED = Gauge("hfx_worker_kv_freed_transfers", "Staged transfers freed since start, by reason (acked, "
                        "released, expired = leaked until their lease ran out, nacked:<failure>)",
                        ["instance", "reason"], registry=REGISTRY)
WORKER_KV_PULLS = Gauge("hfx_worker_kv_pulls", "KV pulls since start (decode side), by outcome (ok, local-hit, "
                        "unknown-transfer, integrity, peer-lost, deadline, error); any but ok recomputed the prefill",
                        ["instance", "outcome"], registry=REGISTRY)
WORKER_KV_PULLED_BYTES = Gauge("hfx_worker_kv_pulled_bytes", "KV bytes pulled since start (decode side)", ["instance"],
                               registry=REGISTRY)
WORKER_KV_PULL_MS = Gauge("hfx_worker_kv_last_pull_ms", "Duration of the latest successful KV pull (decode side)",
                          ["instance"], registry=REGISTRY)
# Observed per pull, when the decode leg takes its pull's record (services/worker/server.py), not
# at the heartbeat: a histogram needs each pull, not the server's running totals.
WORKER_KV_PULL_SECONDS = Histogram("hfx_worker_kv_pull_seconds", "Duration of each KV pull (decode side), by outcome "
                                   "(ok, local-hit, or the failure after which the prefill was recomputed)",
                                   ["instance", "outcome"], buckets=_KV_PULL_BUCKETS_S, registry=REGISTRY)
WORKER_TOKENS = Counter("hfx_worker_generated_tokens", "Tokens this worker generated", ["instance"],
                        registry=REGISTRY)

# -- scaler ----------------------------------------------------------------------------------------
SCALER_DESIRED = Gauge("hfx_scaler_desired_replicas", "Workers the scaler is asked to keep", ["cluster"],
                       registry=REGISTRY)
SCALER_WORKERS = Gauge("hfx_scaler_workers", "Managed workers by state", ["cluster", "state"], registry=REGISTRY)
SCALER_RESTARTS = Gauge("hfx_scaler_worker_restarts", "Restarts of crashed workers since the scaler started",
                        ["cluster"], registry=REGISTRY)
ROLE_CHANGES = Counter("hfx_worker_role_changes", "Role changes this worker made (Worker.SetRole), by old and new "
                       "role; the reason is in the registry entry, the log and the worker.set_role span",
                       ["instance", "from_role", "to_role"], registry=REGISTRY)
ROLE_DECISIONS = Counter("hfx_scheduler_role_decisions", "The role policy's ticks (--role-changes): flip (to_role "
                         "prefill, decode or colocated) or none, and for none the rule that held it (held_by); "
                         "the reason with its numbers is in the log", ["to_role", "held_by"], registry=REGISTRY)
LINKS = Gauge("hfx_scaler_pd_links", "P-D links up in the link table", ["cluster"], registry=REGISTRY)
SCALER_LEFTOVERS = Counter("hfx_scaler_leftover_processes_killed", "Processes (engine core, engine workers) "
                           "still running in an exited worker's process group that the scaler had to SIGKILL",
                           ["cluster"], registry=REGISTRY)

OUTCOMES = ("finished", "aborted", "failed", "rejected", "unavailable", "invalid")
_SLO_COUNTED = {"finished", "failed", "rejected", "unavailable"}

# Reason text -> a short kind, so the label stays bounded however policies word their reasons.
_REASON_KINDS = (
    ("queue full", "queue_full"),
    ("waited", "queue_timeout"),
    ("cannot meet", "slo_unreachable"),
    ("best effort", "best_effort"),
    ("ticket", "ticket"),
)


def record_request(task_class: str, outcome: str, slo_met: bool = False, ttft_ms: float = 0.0,
                   tpot_ms: float = 0.0, e2e_ms: float = 0.0, output_tokens: int = 0) -> None:
    """One request's end at the router. Latencies are recorded only when they were measured."""
    ROUTER_REQUESTS.labels(task_class, outcome).inc()
    if outcome in _SLO_COUNTED:
        ROUTER_SLO.labels(task_class, "met" if slo_met and outcome == "finished" else "missed").inc()
    if output_tokens > 0:
        ROUTER_OUTPUT_TOKENS.labels(task_class).inc(output_tokens)
        ROUTER_TTFT.labels(task_class).observe(ttft_ms / 1000.0)
        ROUTER_E2E.labels(task_class).observe(e2e_ms / 1000.0)
    if output_tokens > 1:
        ROUTER_TPOT.labels(task_class).observe(tpot_ms / 1000.0)


def reason_kind(verdict: str, reason: str) -> str:
    text = reason.lower()
    for prefix, kind in _REASON_KINDS:
        if text.startswith(prefix):
            return kind
    return "placed" if verdict != "reject" else "policy"


def record_verdict(policy: str, verdict: str, reason: str, prompt_tokens: int = 0, max_tokens: int = 0) -> None:
    VERDICTS.labels(policy, verdict, reason_kind(verdict, reason)).inc()
    VERDICT_TOKENS.labels(policy, "prompt").inc(max(0, prompt_tokens))
    VERDICT_TOKENS.labels(policy, "max").inc(max(0, max_tokens))


def set_instance_load(instance_id: str, running: int, waiting: int, kv_usage: float, placed: int) -> None:
    INSTANCE_RUNNING.labels(instance_id).set(running)
    INSTANCE_WAITING.labels(instance_id).set(waiting)
    INSTANCE_KV_USAGE.labels(instance_id).set(kv_usage)
    INSTANCE_PLACED.labels(instance_id).set(placed)


def set_instance_budget(instance_id: str, budget_ms: float) -> None:
    INSTANCE_BUDGET_MS.labels(instance_id).set(budget_ms)


def forget_instances(keep: set[str]) -> None:
    """Drops the series of instances that left, so the label set tracks the live cluster."""
    for gauge in _INSTANCE_GAUGES:
        for (instance_id,) in list(gauge._metrics):  # prometheus_client has no public label listing
            if instance_id not in keep:
                gauge.remove(instance_id)


def exposition() -> bytes:
    """The text format for a /metrics response."""
    return generate_latest(REGISTRY)


_started: set[int] = set()
_lock = threading.Lock()


def serve_http(port: int, host: str) -> None:
    """Starts prometheus_client's own /metrics server in a thread; 0 means off."""
    if port <= 0:
        return
    with _lock:
        if port not in _started:
            start_http_server(port, addr=host, registry=REGISTRY)
            _started.add(port)


def set_worker_kv(instance_id: str, stats: dict) -> None:
    """The KV server's stats (services/worker/kv/tcp.py, op "stats") as gauges."""
    WORKER_KV_LEASES.labels(instance_id).set(stats.get("leases", 0))
    WORKER_KV_LEASED_BLOCKS.labels(instance_id).set(stats.get("blocks", 0))
    WORKER_KV_LEAKED_BLOCKS.labels(instance_id).set(stats.get("freed_blocks", {}).get("expired", 0))
    for reason, n in stats.get("freed", {}).items():
        WORKER_KV_FREED.labels(instance_id, reason).set(n)
    pulls = stats.get("pulls", {})
    for outcome, n in pulls.get("outcomes", {}).items():
        WORKER_KV_PULLS.labels(instance_id, outcome).set(n)
    WORKER_KV_PULLED_BYTES.labels(instance_id).set(pulls.get("bytes", 0))
    if pulls.get("recent_ms"):
        WORKER_KV_PULL_MS.labels(instance_id).set(pulls["recent_ms"][-1])


def observe_kv_pull(instance_id: str, pull: dict) -> None:
    """One KV pull as the decode worker's connector reported it (services/worker/kv/tcp.py PullLog)."""
    WORKER_KV_PULL_SECONDS.labels(instance_id, str(pull.get("outcome", ""))).observe(float(pull.get("ms", 0.0)) / 1000.0)
