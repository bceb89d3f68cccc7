"""Carrying out a policy's ScheduleResult: one order, for the scheduler service and the simulator.

**Preemptions first, then decisions.** The policy decides them in that order: hfx protects
running requests on the pass's budgets before it places anything, and bars the instances it
preempts on from that pass's placements, so its placements assume the victims are gone. Applied
in the same order, the running sets the next pass sees never count a placement beside a victim
that was already let go, and in the service leaves before any placement of the same round is answered. vLLM's own scheduler does the
same: it frees room by preemption before it admits from its queue.

The executor is the only thing that differs between the two callers: the service resolves
waiting Place calls and sends Worker.Abort over gRPC; the simulator adds sequences to simulated
engines on its virtual clock (services/sim/runner.py). Pure: no I/O here.
"""

from __future__ import annotations

from typing import Protocol

from services.common.domain import Decision, Leg, Preemption, RequestSpec, ScheduleResult, Verdict


class Executor(Protocol):
    """What `apply` drives. Methods are called in the order documented on `apply`."""

    def preempt(self, preemption: Preemption) -> None:
        """Stop the victim where it runs and stop counting every leg it holds; it will be placed
        again (with the tokens it streamed). A victim that has already left is ignored."""

    def take(self, request_id: str) -> RequestSpec | None:
        """Take a decided request off the queue; None when it left meanwhile (cancelled, expired)."""

    def count(self, leg: Leg, spec: RequestSpec) -> None:
        """One leg of a placement joins its instance's running set (what the next pass budgets)."""

    def settle(self, decision: Decision, spec: RequestSpec) -> None:
        """Carry the verdict out: start the request (every leg already counted) or turn it away."""


def apply(result: ScheduleResult, executor: Executor) -> int:
    """Preemptions, then each decision: take it off the queue, count its legs unless it is a
    reject, settle it. Returns how many decisions were settled."""
    for preemption in result.preemptions:
        executor.preempt(preemption)
    settled = 0
    for decision in result.decisions:
        spec = executor.take(decision.request_id)
        if spec is None:
            continue
        if decision.verdict is not Verdict.REJECT:
            for leg in decision.stages():
                executor.count(leg, spec)
        executor.settle(decision, spec)
        settled += 1
    return settled
