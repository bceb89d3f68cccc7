"""Domain types: what the services mean, apart from how the wire spells it.

Wire messages become these once, in services.common.convert. Units live in the names.
"""

from __future__ import annotations

import math

import enum
from dataclasses import dataclass, field, replace


class RequestState(enum.Enum):
    """Lifecycle of one request, as the router and the scheduler see it."""

    WAITING = "waiting"        # queued at the scheduler, not placed yet
    RUNNING = "running"        # placed on an instance, streaming
    FINISHED = "finished"
    ABORTED = "aborted"        # cancelled by the client
    FAILED = "failed"          # the instance failed under it
    REJECTED = "rejected"      # refused at admission


class Role(enum.Enum):
    COLOCATED = "colocated"
    PREFILL = "prefill"
    DECODE = "decode"


ROLE_NAMES = ", ".join(r.value for r in Role)   # for messages that list the roles


class Verdict(enum.Enum):
    ADMIT = "admit"
    BEST_EFFORT = "best_effort"
    REJECT = "reject"


class FinishReason(enum.Enum):
    LENGTH = "length"
    STOP = "stop"
    ABORT = "abort"
    ERROR = "error"


@dataclass(frozen=True)
class Slo:
    ttft_ms: float
    tpot_ms: float


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class RequestSpec:
    """What the scheduler knows of a request: enough to rank and place it, no tokens."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    slo: Slo
    priority: int = 1
    task_class: str = "default"
    tenant: str = ""
    arrival_s: float = 0.0
    resumed_tokens: int = 0       # > 0: preempted and requeued after streaming this many tokens

    @property
    def ttft_deadline_s(self) -> float:
        return self.arrival_s + self.slo.ttft_ms / 1000.0

    def token_deadline_s(self, i: int) -> float:
        """Deadline of output token i (0 is the first token); early tokens bank slack."""
        return self.ttft_deadline_s + i * self.slo.tpot_ms / 1000.0

    def resumed(self, generated: int) -> "RequestSpec":
        """This request (as first placed) requeued after a preemption with `generated` tokens
        streamed: they join the prompt (recomputed, not lost), and its "first token" deadline
        becomes the deadline of its next token."""
        return replace(self, prompt_tokens=self.prompt_tokens + generated,
                       max_tokens=max(1, self.max_tokens - generated),
                       slo=Slo(self.slo.ttft_ms + generated * self.slo.tpot_ms, self.slo.tpot_ms),
                       resumed_tokens=generated)


@dataclass(frozen=True)
class LatencyModel:
    """step_ms = c0 + c1*prefill_tokens + c2*decode_seqs + c3*kv_tokens (see docs/ARCHITECTURE.md)."""

    c0_ms: float
    c1_ms_per_prefill_token: float
    c2_ms_per_decode_seq: float
    c3_ms_per_kv_token: float
    # Moving one token's KV from this (prefill) instance to a decode instance; 0 = not measured
    # (policies then use PolicyConfig.default_kv_transfer_ms_per_token). Not a step term: the
    # transfer runs beside the engine's steps, so it is charged to the request's TTFT only.
    kv_transfer_ms_per_token: float = 0.0

    def step_ms(self, prefill_tokens: int, decode_seqs: int, kv_tokens: int) -> float:
        return (
            self.c0_ms
            + self.c1_ms_per_prefill_token * prefill_tokens
            + self.c2_ms_per_decode_seq * decode_seqs
            + self.c3_ms_per_kv_token * kv_tokens
        )


@dataclass(frozen=True)
class StepSample:
    """One engine step: its composition and duration (profiles, online model refinement)."""

    prefill_tokens: int
    decode_seqs: int
    kv_tokens: int
    step_ms: float


@dataclass(frozen=True)
class StepInFlight:
    """The engine step that was running when a load was reported: when it began (the clock of
    InstanceLoad.reported_s) and what it holds, so a policy can predict its end with the
    instance's latency model (LatencyModel.step_ms of the same three terms)."""

    started_s: float
    prefill_tokens: int
    decode_seqs: int
    kv_tokens: int


@dataclass(frozen=True)
class InstanceLoad:
    running_requests: int = 0
    waiting_requests: int = 0
    kv_usage: float = 0.0
    kv_capacity_tokens: int = 0
    recent_step_ms: tuple[float, ...] = ()
    reported_s: float = 0.0
    draining: bool = False
    recent_steps: tuple[StepSample, ...] = ()  # with composition, when the engine knows it
    steps_total: int = 0                       # steps so far; recent_steps end at this count
    # reports_step: the engine says which step it was running at reported_s (step_in_flight;
    # None then means between steps). False: it does not say (step_in_flight is always None).
    reports_step: bool = False
    step_in_flight: StepInFlight | None = None


@dataclass(frozen=True)
class RunningRequest:
    """A request the scheduler placed and has not yet heard the end of."""

    spec: RequestSpec
    placed_s: float
    # The leg this instance runs: COLOCATED (prefill and decode), PREFILL (prefill only, then its
    # KV leaves), DECODE (decode only: the prompt's KV arrives from the prefill instance).
    role: Role = Role.COLOCATED


@dataclass(frozen=True)
class ReportedRun:
    """A request a worker says it is running (its load report), with what it streamed so far."""

    request_id: str
    prompt_tokens: int
    max_tokens: int
    output_tokens: int
    slo: Slo
    priority: int
    started_s: float

    def as_spec(self) -> "RequestSpec":
        """The request as the scheduler would have placed it, resumed after the tokens it has. A
        request with no SLO (sent to the worker directly, not through a router) has none to
        protect: it counts as load, never as a deadline others must keep."""
        slo = Slo(self.slo.ttft_ms if self.slo.ttft_ms > 0 else math.inf,
                  self.slo.tpot_ms if self.slo.tpot_ms > 0 else math.inf)
        spec = RequestSpec(request_id=self.request_id, prompt_tokens=self.prompt_tokens,
                           max_tokens=self.max_tokens, slo=slo, priority=self.priority,
                           arrival_s=self.started_s)
        return spec.resumed(self.output_tokens) if self.output_tokens > 0 else spec


@dataclass(frozen=True)
class InstanceView:
    """One instance as a policy sees it: registry facts, last load report, own placements."""

    instance_id: str
    address: str
    role: Role = Role.COLOCATED
    max_model_len: int = 0
    load: InstanceLoad = field(default_factory=InstanceLoad)
    running: tuple[RunningRequest, ...] = ()
    latency_model: LatencyModel | None = None
    # The engine's token budget per step as its profile reported it (vLLM max_num_batched_tokens);
    # 0: not reported, the policy's chunk_tokens (base.chunk_tokens_of).
    chunk_tokens: int = 0
    # When a prefill leg last ended here (P instances): the prefill still queued started no
    # earlier, however long ago it was placed (its RunningRequest is all the queue left).
    prefill_done_s: float = float("-inf")

    @property
    def accepting(self) -> bool:
        return not self.load.draining


@dataclass(frozen=True)
class ClusterSnapshot:
    instances: tuple[InstanceView, ...]
    # P-D links (prefill id, decode id) a split request may use; None: no link table, any pair.
    links: frozenset[tuple[str, str]] | None = None

    def get(self, instance_id: str) -> InstanceView | None:
        return next((i for i in self.instances if i.instance_id == instance_id), None)

    def linked(self, prefill_id: str, decode_id: str) -> bool:
        return self.links is None or (prefill_id, decode_id) in self.links

    def may_send_kv(self, prefill_id: str) -> bool:
        """A prefill instance with at least one link (any, without a link table)."""
        return self.links is None or any(p == prefill_id for p, _ in self.links)


@dataclass(frozen=True)
class Leg:
    """One stage of a placement: the role an instance plays for one request."""

    role: Role
    instance_id: str


@dataclass(frozen=True)
class Decision:
    """A policy's verdict on one waiting request, with the reason that goes into logs and spans.

    A waiting request with no Decision stays queued for the next round.
    """

    request_id: str
    verdict: Verdict
    reason: str
    instance_id: str = ""
    predicted_ttft_ms: float = 0.0
    slack_ms: float = 0.0
    retry_after_ms: float = 0.0
    # Stage by stage. Empty: colocated on instance_id. (prefill, decode): prefill on the first leg,
    # KV handed to the second; instance_id is then the first leg's.
    legs: tuple[Leg, ...] = ()
    # The chosen instance's budget as the policy saw it (policies that keep budgets; else None).
    budget_ms: float | None = None

    def stages(self) -> tuple[Leg, ...]:
        """The legs, with a colocated placement spelled as its one leg."""
        if self.legs:
            return self.legs
        return (Leg(Role.COLOCATED, self.instance_id),) if self.instance_id else ()


@dataclass(frozen=True)
class TicketBound:
    """The largest request a ticket covers (see docs/ARCHITECTURE.md, "Tickets"): prompt and
    output at most these, SLOs at least these. The fit test is monotone in each (a shorter
    prompt, fewer tokens or a looser SLO never fits worse), so a bound that fits covers every
    request inside it."""

    max_prompt_tokens: int
    max_tokens: int
    min_ttft_ms: float
    min_tpot_ms: float

    def covers(self, spec: "RequestSpec", now_s: float) -> bool:
        """The first-token SLO must still hold `min_ttft_ms` from now (time spent before the
        router looked is gone), and a resumed request always goes through a full pass."""
        left_ms = spec.slo.ttft_ms - (now_s - spec.arrival_s) * 1000.0
        return (not spec.resumed_tokens and spec.prompt_tokens <= self.max_prompt_tokens
                and spec.max_tokens <= self.max_tokens and left_ms >= self.min_ttft_ms
                and spec.slo.tpot_ms >= self.min_tpot_ms)

    def probe(self, request_id: str, now_s: float) -> "RequestSpec":
        """The bound as a request arriving now, for the fit test."""
        return RequestSpec(request_id=request_id, prompt_tokens=self.max_prompt_tokens,
                           max_tokens=self.max_tokens, slo=Slo(self.min_ttft_ms, self.min_tpot_ms),
                           arrival_s=now_s)


@dataclass(frozen=True)
class Grant:
    """A policy's standing yes: `instance_id` takes one request within `bound` without a pass."""

    instance_id: str
    bound: TicketBound
    predicted_ttft_ms: float
    rank: int      # the policy's placement order among grants (lower first)
    reason: str


@dataclass(frozen=True)
class Preemption:
    instance_id: str
    request_id: str
    reason: str


@dataclass(frozen=True)
class ScheduleResult:
    decisions: tuple[Decision, ...] = ()
    preemptions: tuple[Preemption, ...] = ()
