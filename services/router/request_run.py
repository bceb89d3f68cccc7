"""One admitted request's life in the router, as an explicit state machine (no I/O here).

RouterCore drives it: it opens worker streams, reads chunks, places again after a preemption,
and feeds each event here; this module decides the next phase and what the scheduler and the
metrics are told at the end. Modelled on vLLM's RequestStatus (vllm/v1/request.py):

    PLACED --started--> RUNNING --chunk(finished)--> FINISHED
                          |  \\--chunk(preempted)--> PREEMPTED --placed_again--> PLACED
                          |                               \\--not_placed_again--> FAILED
                          |--stopped (client left / abort)--> ABORTED
                          |--worker_failed (failovers left)--> FAILING_OVER --placed_again--> PLACED
                          |                                         \\--not_placed_again--> FAILED
                          \\--worker_failed (none left)--> FAILED

A failover is a preemption the router starts itself: the instance died or went silent under the
request, so it goes elsewhere with the tokens already streamed as part of its prompt; the
client's stream goes on, every token once.

A P/D request adds its legs (prefill, KV transfer, decode) as further phases here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from services.common import convert
from services.common.domain import FinishReason, RequestSpec
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2, worker_pb2
from services.router.metrics import StreamTimer
from services.router.validate import ValidRequest


class Phase(enum.Enum):
    PLACED = "placed"          # has an instance; its worker stream is not open yet
    RUNNING = "running"        # tokens streaming from that instance
    PREEMPTED = "preempted"    # the scheduler took it off its instance; to be placed again
    FAILING_OVER = "failing_over"  # its instance failed under it; to be placed again elsewhere
    FINISHED = "finished"      # terminal: the engine ended it (stop, length)
    ABORTED = "aborted"        # terminal: the client left or asked to abort
    FAILED = "failed"          # terminal: worker error or silence, or no placement after preemption

    @property
    def terminal(self) -> bool:
        return self in (Phase.FINISHED, Phase.ABORTED, Phase.FAILED)


_OUTCOMES = {Phase.FINISHED: scheduler_pb2.OUTCOME_FINISHED, Phase.FAILED: scheduler_pb2.OUTCOME_FAILED}


class InvalidTransition(RuntimeError):
    pass


@dataclass
class RequestRun:
    spec: RequestSpec
    valid: ValidRequest
    placement: scheduler_pb2.Placement | None  # where it runs; None while it is placed again
    timer: StreamTimer
    phase: Phase = Phase.PLACED
    generated: list[int] = field(default_factory=list)
    finish: FinishReason = FinishReason.ABORT
    error: str = ""
    failovers_left: int = 0
    failed_instances: list[str] = field(default_factory=list)   # where it failed, in order

    def __post_init__(self) -> None:
        self.last = self.placement  # the latest placement, for the final message and the log

    # -- events --------------------------------------------------------------------------------

    def started(self) -> None:
        self._move(Phase.RUNNING, Phase.PLACED)

    def on_chunk(self, chunk: worker_pb2.WorkerChunk, now_s: float) -> bool:
        """Takes a worker chunk; True when it carries output for the client."""
        self._check(Phase.RUNNING)
        self.timer.on_tokens(len(chunk.token_ids), now_s)
        self.generated.extend(chunk.token_ids)
        if chunk.finished:
            if chunk.finish_reason == common_pb2.FINISH_REASON_PREEMPTED:
                self.phase, self.placement = Phase.PREEMPTED, None  # the scheduler already let it go
            else:
                self.phase = Phase.FINISHED
                self.finish = convert.finish_from_pb(chunk.finish_reason) or FinishReason.STOP
        return bool(chunk.token_ids or chunk.text)

    def stopped(self) -> None:
        """The client left or asked to abort: it ends with what it has."""
        if not self.phase.terminal:
            self.phase, self.finish = Phase.ABORTED, FinishReason.ABORT

    def worker_failed(self, why: str, retryable: bool = True) -> None:
        """Its instance failed: fail over while failovers are left, else fail with the reason.
        Not `retryable` (the worker refused the request itself, e.g. INVALID_ARGUMENT): it fails."""
        self._check(Phase.RUNNING)
        self.error = f"instance {self.last.instance_id} failed after {self.timer.tokens} tokens: {why}"
        self.failed_instances.append(self.last.instance_id)
        if retryable and self.failovers_left > 0:
            self.failovers_left -= 1
            self.phase, self.placement = Phase.FAILING_OVER, None   # told FAILED now, not at the end
        else:
            self.phase, self.finish = Phase.FAILED, FinishReason.ERROR

    def placed_again(self, placement: scheduler_pb2.Placement) -> None:
        self._move(Phase.PLACED, Phase.PREEMPTED, Phase.FAILING_OVER)
        self.placement = self.last = placement

    def not_placed_again(self, why: str) -> None:
        was_failover = self.phase is Phase.FAILING_OVER
        self._move(Phase.FAILED, Phase.PREEMPTED, Phase.FAILING_OVER)
        self.finish = FinishReason.ERROR
        self.error = f"{self.error}; {why}" if was_failover else why

    # -- what follows from the phase -------------------------------------------------------------

    @property
    def outcome(self) -> int:
        """What the scheduler and the metrics are told (ABORTED until proven otherwise)."""
        return _OUTCOMES.get(self.phase, scheduler_pb2.OUTCOME_ABORTED)

    @property
    def slo_met(self) -> bool:
        return self.phase is Phase.FINISHED and self.timer.slo_met(self.spec.slo)

    def worker_request(self) -> worker_pb2.WorkerGenerateRequest:
        """The request for the worker; after a preemption the tokens already streamed join the
        prompt (recomputed, not lost) and count against max_tokens."""
        sampling = self.valid.sampling
        if self.generated:
            sampling = replace(sampling, max_tokens=sampling.max_tokens - len(self.generated))
        return worker_pb2.WorkerGenerateRequest(
            request_id=self.spec.request_id, prompt_token_ids=self.valid.prompt_token_ids + tuple(self.generated),
            sampling=convert.sampling_to_pb(sampling), priority=self.spec.priority,
            slo=convert.slo_to_pb(self.spec.slo),
        )

    # -- checks ------------------------------------------------------------------------------------

    def _check(self, *allowed: Phase) -> None:
        if self.phase not in allowed:
            raise InvalidTransition(f"{self.spec.request_id}: event not valid in phase {self.phase.value}")

    def _move(self, to: Phase, *allowed: Phase) -> None:
        self._check(*allowed)
        self.phase = to
