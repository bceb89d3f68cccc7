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

A P/D placement (legs [prefill on P, decode on D]) runs its prefill leg first:

    PLACED --started--> PREFILLING --chunk(finished, more tokens wanted)--> TRANSFERRING
                          |   \\--chunk(finished, stop or max_tokens reached)--> FINISHED
                          |   \\--chunk(preempted)--> PREEMPTED
    TRANSFERRING --decode_started--> RUNNING (on D; D pulls P's KV before its first token)

P's first token streams to the client at once; D gets the prompt plus the tokens so far and P's
KV transfer parameters (without them, when P staged nothing, D computes the prompt itself). Aborts
and failures in any phase end as above; the phase says which legs to stop.
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
    PREFILLING = "prefilling"  # P/D: the prefill leg streams on P (one token, then P stages the KV)
    TRANSFERRING = "transferring"  # P/D: P staged the KV; the decode leg on D is to be opened
    RUNNING = "running"        # tokens streaming from that instance (colocated, or the decode leg)
    PREEMPTED = "preempted"    # the scheduler took it off its instance; to be placed again
    FAILING_OVER = "failing_over"  # its instance failed under it; to be placed again elsewhere
    FINISHED = "finished"      # terminal: the engine ended it (stop, length)
    ABORTED = "aborted"        # terminal: the client left or asked to abort
    FAILED = "failed"          # terminal: worker error or silence, or no placement after preemption

    @property
    def terminal(self) -> bool:
        return self in (Phase.FINISHED, Phase.ABORTED, Phase.FAILED)


_OUTCOMES = {Phase.FINISHED: scheduler_pb2.OUTCOME_FINISHED, Phase.FAILED: scheduler_pb2.OUTCOME_FAILED}


_PD_ROLES = [common_pb2.ROLE_PREFILL, common_pb2.ROLE_DECODE]


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
    kv: worker_pb2.KvTransferParams | None = None  # P/D: what P staged, from its last chunk
    prefill_done_s: float = 0.0
    decode_opened: bool = False
    handoff_ms: float = -1.0  # P/D: P's last chunk to D's first token (KV transfer + D's first step)
    left_from: str = ""       # the instance it last left (preempted or failed): D, not P, for a decode leg
    last: scheduler_pb2.Placement = field(init=False)  # the latest placement, for the final message and the log

    def __post_init__(self) -> None:
        if self.placement is None:
            raise ValueError(f"{self.spec.request_id}: a run starts placed")
        self.last = self.placement

    # -- the placement's legs --------------------------------------------------------------------

    @property
    def split(self) -> bool:
        """P/D: the placement's legs are [prefill, decode]."""
        legs = self.placement.legs if self.placement is not None else ()
        return len(legs) == 2 and [leg.role for leg in legs] == _PD_ROLES

    @property
    def placed(self) -> scheduler_pb2.Placement:
        """The current placement, in the phases that have one (not while it is placed again)."""
        if self.placement is None:
            raise InvalidTransition(f"{self.spec.request_id}: no placement in phase {self.phase.value}")
        return self.placement

    def address(self) -> str:
        """Where the next worker stream opens: the placement's instance, P, or D."""
        if not self.split:
            return self.placed.address
        return self.placed.legs[1 if self.phase is Phase.TRANSFERRING else 0].address

    @property
    def instance_id(self) -> str:
        if self.split and self.phase in (Phase.TRANSFERRING, Phase.RUNNING, Phase.FINISHED):
            return self.placed.legs[1].instance_id
        return self.last.instance_id

    # -- events --------------------------------------------------------------------------------

    def started(self) -> None:
        self._move(Phase.PREFILLING if self.split else Phase.RUNNING, Phase.PLACED)

    def decode_started(self) -> None:
        self._move(Phase.RUNNING, Phase.TRANSFERRING)
        self.decode_opened = True

    def on_chunk(self, chunk: worker_pb2.WorkerChunk, now_s: float) -> bool:
        """Takes a worker chunk; True when it carries output for the client."""
        self._check(Phase.RUNNING, Phase.PREFILLING)
        if self.decode_opened and self.handoff_ms < 0 and chunk.token_ids:
            self.handoff_ms = (now_s - self.prefill_done_s) * 1000.0
        self.timer.on_tokens(len(chunk.token_ids), now_s)
        self.generated.extend(chunk.token_ids)
        if chunk.finished:
            if chunk.finish_reason == common_pb2.FINISH_REASON_PREEMPTED:
                self.left_from = self.instance_id
                self.phase, self.placement = Phase.PREEMPTED, None  # the scheduler already let it go
            elif self.phase is Phase.PREFILLING and self._wants_decode(chunk):
                self.phase, self.prefill_done_s = Phase.TRANSFERRING, now_s
                self.kv = chunk.kv_transfer if chunk.HasField("kv_transfer") else None
            else:
                self.phase = Phase.FINISHED
                self.finish = convert.finish_from_pb(chunk.finish_reason) or FinishReason.STOP
        return bool(chunk.token_ids or chunk.text)

    def _wants_decode(self, chunk: worker_pb2.WorkerChunk) -> bool:
        # P ran one token of max_tokens (LENGTH); a stop (EOS, stop string) ends the request there.
        return (chunk.finish_reason == common_pb2.FINISH_REASON_LENGTH
                and len(self.generated) < self.valid.sampling.max_tokens)

    def stopped(self) -> None:
        """The client left or asked to abort: it ends with what it has."""
        if not self.phase.terminal:
            self.phase, self.finish = Phase.ABORTED, FinishReason.ABORT

    def worker_failed(self, why: str, retryable: bool = True) -> None:
        """The instance it streams from failed: fail over while failovers are left, else fail
        with the reason. Not `retryable` (the worker refused the request itself, e.g.
        INVALID_ARGUMENT): it fails."""
        self._check(Phase.RUNNING, Phase.PREFILLING)
        instance = self.instance_id
        self.error = f"instance {instance} failed after {self.timer.tokens} tokens: {why}"
        self.failed_instances.append(instance)
        self.left_from = instance
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
    def outcome(self) -> scheduler_pb2.Outcome:
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
        request = worker_pb2.WorkerGenerateRequest(
            request_id=self.spec.request_id, prompt_token_ids=self.valid.prompt_token_ids + tuple(self.generated),
            sampling=convert.sampling_to_pb(sampling), priority=self.spec.priority,
            slo=convert.slo_to_pb(self.spec.slo),
        )
        if self.split and self.phase is Phase.PLACED:  # the prefill leg: P stages the KV for D
            request.kv_transfer.CopyFrom(worker_pb2.KvTransferParams(do_remote_decode=True))
        elif self.phase is Phase.TRANSFERRING and self.kv is not None and self.kv.transfer_id:
            request.kv_transfer.CopyFrom(worker_pb2.KvTransferParams(
                do_remote_prefill=True, remote_address=self.kv.remote_address, transfer_id=self.kv.transfer_id,
                num_tokens=self.kv.num_tokens, num_blocks=self.kv.num_blocks))
        return request

    @property
    def staged_unread(self) -> bool:
        """P holds KV for a decode leg that never opened: free it on the way out."""
        return self.kv is not None and bool(self.kv.transfer_id) and not self.decode_opened

    # -- checks ------------------------------------------------------------------------------------

    def _check(self, *allowed: Phase) -> None:
        if self.phase not in allowed:
            raise InvalidTransition(f"{self.spec.request_id}: event not valid in phase {self.phase.value}")

    def _move(self, to: Phase, *allowed: Phase) -> None:
        self._check(*allowed)
        self.phase = to
