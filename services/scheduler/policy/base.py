"""The policy interface every scheduling policy implements, and the typed knobs they share."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence, runtime_checkable

from services.common.domain import (ClusterSnapshot, Grant, InstanceView, LatencyModel, RequestSpec, Role,
                                    ScheduleResult, TicketBound)

# Used when an instance has not reported a fitted model yet. Illustrative numbers for a tiny
# model on a CPU (see services/sim/profiles.py); `hfx profile` replaces them per instance.
DEFAULT_LATENCY_MODEL = LatencyModel(3.0, 0.02, 0.15, 0.0005)
# KV transfer per token when an instance's profile has none: the default tiny model holds
# 2 KiB of KV per token (K and V x 4 layers x 2 KV heads x 64 dims x bf16), moved at 0.71 GB/s,
# the TCP transport measured on this machine for weights (BENCHMARKS.md): 2048 B / 0.71 GB/s.
DEFAULT_KV_TRANSFER_MS_PER_TOKEN = 0.0029


@dataclass(frozen=True)
class PolicyConfig:
    # An instance whose running + waiting requests reach this is full for placement.
    max_requests_per_instance: int = 256
    # Placement among fitting instances: "spread" (default) balances, so batches stay small and
    # steps fast while the cluster has headroom; "best_fit" consolidates onto the busiest fitting
    # instance so the scaler can release idle ones (use it when the scaler may shrink the pool).
    placement: str = "spread"
    # SLO affinity (HFX only): before load, prefer instances whose tightest running TPOT is within
    # a factor `affinity_tolerance` of the request's own TPOT (then empty ones, then mismatched),
    # so loose-TPOT/large-KV requests do not slow the steps of tight-TPOT ones and tight requests
    # do not cap the batch of loose ones. 1.0 (default) disables it: on the default workload it
    # cost attainment (73.5% vs 78.1% at 28 req/s, seed 1) and light-load E2E (824 vs 654 ms).
    affinity_tolerance: float = 1.0
    # While a class's TPOT is tight (HFX only; docs/SCHEDULING.md "While a TPOT is tight"):
    # when the tightest TPOT class seen has a TPOT at most `lane_tightness` x its
    # own unloaded decode step (one more sequence of it may join only a small batch), a request
    # whose TPOT is at least `lane_factor` x that TPOT prefers instances running no request
    # tighter than that (while none does, not the one with the shortest step), and a tighter one
    # prefers instances where tight ones run, then empty ones (FitTable.tight_band); spread
    # alone packs long loose decodes on every instance and
    # closes them all to that class. A preference only: it never refuses a placement. 0: off.
    lane_tightness: float = 1.6
    lane_factor: float = 1.5
    # Step-time model for instances that report none.
    default_latency_model: LatencyModel = DEFAULT_LATENCY_MODEL
    # The engine's token budget per step (vLLM max_num_batched_tokens): sets prefill chunking,
    # for instances whose profile reports none (chunk_tokens_of).
    chunk_tokens: int = 512
    # KV capacity assumed when an instance reports none, and the share kept free for growth.
    default_kv_capacity_tokens: int = 65_536
    kv_watermark: float = 0.05
    # What happens to a request that can no longer meet its SLO: "best_effort" or "reject";
    # task classes listed in reject_classes are rejected whatever the default.
    on_miss: str = "best_effort"
    reject_classes: tuple[str, ...] = ()
    retry_after_ms: float = 1000.0
    # A best-effort request (demoted, SLO already out of reach) still queued this long after its
    # demotion is rejected with retry-after instead of waiting without bound. 0 = wait forever.
    best_effort_max_wait_ms: float = 1000.0
    # Deferral under pressure: for `pressure_window_ms` after an SLO request could not be placed
    # (or was rejected as hopeless), requests with more than `defer_slack_ms` of slack (both
    # priority-credited and their own) are not placed; they can wait, the ones turned away could
    # not. 0 disables deferral.
    defer_slack_ms: float = 200.0
    pressure_window_ms: float = 500.0
    # For one more pressure window after it ends, the requests deferral held back are released
    # paced, not all at once: after one is placed the next waits `release_spacing` x its unloaded
    # prefill / instances (docs/SCHEDULING.md, "Pressure and deferral"). 0 releases them at once.
    release_spacing: float = 2.0
    # Ranking: each priority level above 1 is worth this much slack (additive, so the order of
    # two queued requests never changes as time passes).
    priority_credit_ms: float = 500.0
    # Output length assumed for a class until one completion of it has been seen.
    prior_output_tokens: int = 128
    # Per schedule() call: how many queued requests may be tried (bounds decision latency).
    max_attempts_per_call: int = 32
    # ...and how many of those may fail to fit before the pass gives up (smaller requests behind
    # a head that does not fit still get a chance; the next pass comes with the next event).
    max_misses_per_call: int = 8
    # In-flight protection: preempt on an instance whose budget is below -preempt_margin_ms.
    preempt: bool = True
    preempt_margin_ms: float = 50.0
    # (5) in fit.py: a new request's own mean TPOT must absorb the prefill already queued on the
    # instance, because an engine with priority scheduling (vLLM, as HFX runs it) may run its
    # prefill first and the queued chunks during its decode. False: FIFO prefill (the simulator).
    backlog_interferes: bool = True
    # (1) in fit.py: a request placed on a busy instance first waits for the step in flight (the
    # engine plans a step at its start). Charged as this share of one such step: 1.0 (default)
    # admits only what meets its TTFT even if a step had just begun; 0 ignores the wait. On the
    # default workload it was +4.4..+6.4 points at 14-18 req/s with 16 cpu-tiny-x10 instances
    # (3 seeds) and +0.4..+1.4 with 4 cpu-tiny instances at 20-28 req/s; 1.5 was worse than 1.0.
    inflight_step_share: float = 1.0
    # ...unless the instance's load report says which step it runs (InstanceLoad.step_in_flight):
    # then the wait is that step's predicted end (its latency-model time from its start) and
    # nothing once it has ended. A report of no step in flight counts only while it is at most
    # this old (a worker with work starts its next step at once); a step past its predicted end
    # (it ran long, or the report is older than it) falls back to the charge above.
    step_report_max_age_ms: float = 1.0
    # Placement of a request whose time left to its TTFT deadline is below this many times its
    # least predicted TTFT: the instance with the least predicted TTFT, not `placement`. 0 = never.
    tight_ttft_factor: float = 2.0
    # At its last chance, a request refused only by running requests' banks (fit test (2)) is
    # placed when that costs them less than one miss, a deficit of `last_chance_slip` x a running
    # request's remaining tokens x its TPOT counting as a whole one (lastchance.py). 0 = never,
    # the default: it won 4 family workloads in the simulator (0.1) but cost the default workload
    # 5-7 points live on vLLM CPU engines (BENCHMARKS.md, "The weighed last chance, live").
    last_chance_slip: float = 0.0
    # P/D (docs/ARCHITECTURE.md, "P/D scheduling"). KV transfer per token for instances whose
    # profile has none.
    default_kv_transfer_ms_per_token: float = DEFAULT_KV_TRANSFER_MS_PER_TOKEN
    # A prompt of at most this many tokens, or one whose unloaded prefill costs no more than its
    # KV transfer, is served whole in one place (a colocated instance, else a decode instance
    # prefills it itself): a handoff would cost it more than it saves the decode instance.
    pd_local_prompt_tokens: int = 64
    # ...and, where D may prefill, so is one of at most this share of chunk_tokens (0: off). On P
    # a long prompt placed before such a prompt's step begins rides in that step (the engine fills
    # a step up to chunk_tokens) and delays its first token by more than its own prefill (the
    # rider's chunk_tokens - L tokens exceed L): measured live, first tokens after 126-162 ms for
    # chat prompts whose own prefill took 20-30 ms. On D it shares steps with decodes and other
    # short prompts only, and D's fit test charges its prefill to every request decoding there.
    pd_local_chunk_share: float = 0.5
    # May a decode instance prefill such a request itself? False: only colocated instances serve
    # whole requests, and a cluster of decode instances alone cannot serve anything.
    pd_local_prefill: bool = True


@runtime_checkable
class LearnsFromCompletions(Protocol):
    """A policy that learns from finished requests (e.g. output lengths per task class)."""

    def observe_completion(self, task_class: str, output_tokens: int, request_id: str = "") -> None: ...


@runtime_checkable
class KeepsBudgets(Protocol):
    """A policy that keeps a per-instance budget (ms), exported as hfx_instance_budget_ms."""

    def budgets_ms(self) -> dict[str, float]: ...


@runtime_checkable
class Defers(Protocol):
    """A policy that may hold a request back for a later pass on purpose (hfx's pressure
    deferral): `deferrals` counts them since it started, exported as hfx_scheduler_deferrals."""

    deferrals: int


@runtime_checkable
class IssuesTickets(Protocol):
    """A policy that can grant standing placements (tickets) while nothing waits: for each bound
    (widest first), the instances where a request within it fits by the policy's own test."""

    def tickets(self, cluster: ClusterSnapshot, bounds: Sequence[TicketBound], now_s: float) -> list[Grant]: ...


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


def candidates(cluster: ClusterSnapshot, config: PolicyConfig, role: Role = Role.COLOCATED) -> list[InstanceView]:
    """Instances that may take one more leg of `role` at all (the shared first filter): colocated
    instances serve whole requests, prefill instances prefill legs, decode instances decode legs."""
    return [
        inst
        for inst in cluster.instances
        if inst.role is role and inst.accepting and outstanding(inst) < config.max_requests_per_instance
    ]


def has_role(cluster: ClusterSnapshot, role: Role) -> bool:
    return any(inst.role is role for inst in cluster.instances)


def stage_roles(cluster: ClusterSnapshot) -> tuple[Role, ...]:
    """The stages a stage-blind baseline places each request in: (PREFILL, DECODE) when the
    cluster has both (every request split, as vLLM's disaggregation proxy does), else whole."""
    if has_role(cluster, Role.PREFILL) and has_role(cluster, Role.DECODE):
        return (Role.PREFILL, Role.DECODE)
    return (Role.COLOCATED,)


def serving_gap(cluster: ClusterSnapshot, config: PolicyConfig) -> str:
    """Why this cluster can serve no request at all ("" when it can): nothing can prefill, or
    nothing can decode. An empty cluster is not a gap (workers may be starting: requests wait)."""
    if not cluster.instances or has_role(cluster, Role.COLOCATED):
        return ""
    ids = ", ".join(i.instance_id for i in cluster.instances)
    if not has_role(cluster, Role.DECODE):
        return f"no decode capacity: the cluster has only prefill instances ({ids}); start colocated or decode workers"
    if has_role(cluster, Role.PREFILL) or config.pd_local_prefill:
        return ""
    return (f"no prefill capacity: the cluster has only decode instances ({ids}) and decode instances "
            f"may not prefill (pd_local_prefill off); start colocated or prefill workers")


def gap_since(previous_gap: str, previous_since_s: float, gap: str, now_s: float) -> float:
    """When the serving gap `gap` began: a gap that follows a gap keeps the first one's start (the
    cluster has been unable to serve since then), anything else starts now."""
    return previous_since_s if gap and previous_gap else now_s


def gap_after_grace(gap: str, since_s: float, now_s: float, grace_s: float) -> str:
    """The serving gap Place refuses with: only once it has lasted `grace_s` ("" before: the cluster
    counts as starting, e.g. its decode workers registering just after its prefill ones)."""
    return gap if gap and now_s - since_s >= grace_s else ""


def role_change_gap(cluster: ClusterSnapshot, instance_id: str, role: Role, config: PolicyConfig) -> str:
    """Why `instance_id` may not take `role` ("" when it may): the serving_gap of the cluster as
    it would be after the change. One rule for role changes, `hfx up` and Place."""
    if cluster.get(instance_id) is None:
        return ""
    after = ClusterSnapshot(tuple(replace(i, role=role) if i.instance_id == instance_id else i
                                  for i in cluster.instances))
    gap = serving_gap(after, config)
    return f"changing {instance_id} to {role.value} would leave the cluster unable to serve: {gap}" if gap else ""


def kv_transfer_ms(inst: InstanceView, config: PolicyConfig, prompt_tokens: float) -> float:
    """Time to move a prompt's KV off `inst` (a prefill instance) to its decode instance."""
    per_token = latency_model_of(inst, config).kv_transfer_ms_per_token or config.default_kv_transfer_ms_per_token
    return per_token * prompt_tokens


def outstanding(inst: InstanceView) -> int:
    """Requests on an instance: the larger of its own report and the scheduler's placements."""
    return max(inst.load.running_requests + inst.load.waiting_requests, len(inst.running))


def fits_context(spec: RequestSpec, inst: InstanceView) -> bool:
    return inst.max_model_len <= 0 or spec.prompt_tokens + spec.max_tokens <= inst.max_model_len


def latency_model_of(inst: InstanceView, config: PolicyConfig) -> LatencyModel:
    return inst.latency_model or config.default_latency_model


def chunk_tokens_of(inst: InstanceView, config: PolicyConfig) -> int:
    """The step token budget of `inst`'s engine: the one its profile reported, else the policy's.
    An engine's budget is a fact of the engine, like its latency model: a vLLM CPU worker steps up
    to 2048 tokens, and a scheduler that assumed 512 charged a 1,500-token prompt three steps'
    intercept where the engine takes one (issue 9, tenth session)."""
    return inst.chunk_tokens or config.chunk_tokens


def kv_capacity_of(inst: InstanceView, config: PolicyConfig) -> int:
    return inst.load.kv_capacity_tokens or config.default_kv_capacity_tokens
