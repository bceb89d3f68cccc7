"""The router's per-request state machine (services/router/request_run.py), event by event."""

from __future__ import annotations

import pytest

from services.common.domain import FinishReason, Sampling, Slo
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2, worker_pb2
from services.router.metrics import StreamTimer
from services.router.request_run import InvalidTransition, Phase, RequestRun
from services.router.validate import ValidRequest
from tests.unit.helpers import make_spec


def _run(max_tokens: int = 8) -> RequestRun:
    spec = make_spec(max_tokens=max_tokens, slo=Slo(1000, 100), arrival_s=100.0)
    valid = ValidRequest((1, 2, 3), Sampling(max_tokens=max_tokens), spec.slo, 1, "chat", "", "", "reject")
    return RequestRun(spec, valid, scheduler_pb2.Placement(instance_id="i0", address="a0"), StreamTimer(100.0))


def _chunk(ids, finish=None) -> worker_pb2.WorkerChunk:
    c = worker_pb2.WorkerChunk(token_ids=ids, text="x" * len(ids))
    if finish is not None:
        c.finished, c.finish_reason = True, finish
    return c


def test_a_request_that_runs_to_its_end_finishes_with_the_engines_reason():
    run = _run()
    run.started()
    assert run.on_chunk(_chunk([7]), 100.01) and run.phase is Phase.RUNNING
    assert run.on_chunk(_chunk([8, 9], common_pb2.FINISH_REASON_LENGTH), 100.02)
    assert run.phase is Phase.FINISHED and run.finish is FinishReason.LENGTH
    assert run.outcome == scheduler_pb2.OUTCOME_FINISHED and run.slo_met
    assert run.generated == [7, 8, 9] and run.timer.tokens == 3
    run.stopped()  # the driver's cleanup: no effect on a terminal phase
    assert run.phase is Phase.FINISHED


def test_a_preempted_request_resumes_with_its_tokens_in_the_prompt():
    run = _run(max_tokens=8)
    run.started()
    run.on_chunk(_chunk([7, 8]), 100.01)
    run.on_chunk(_chunk([], common_pb2.FINISH_REASON_PREEMPTED), 100.02)
    assert run.phase is Phase.PREEMPTED and run.placement is None   # no Complete for the old instance
    run.placed_again(scheduler_pb2.Placement(instance_id="i1", address="a1"))
    assert run.phase is Phase.PLACED and run.last.instance_id == "i1"
    req = run.worker_request()
    assert list(req.prompt_token_ids) == [1, 2, 3, 7, 8] and req.sampling.max_tokens == 6


def test_failures_and_aborts_are_terminal_with_their_outcome():
    run = _run()
    run.started()
    run.worker_failed("UNAVAILABLE: gone")
    assert run.phase is Phase.FAILED and run.outcome == scheduler_pb2.OUTCOME_FAILED
    assert "instance i0 failed after 0 tokens: UNAVAILABLE: gone" == run.error and not run.slo_met

    run = _run()
    run.started()
    run.on_chunk(_chunk([], common_pb2.FINISH_REASON_PREEMPTED), 100.01)
    run.not_placed_again("no room")
    assert run.phase is Phase.FAILED and run.error == "no room"

    run = _run()
    run.started()
    run.stopped()
    assert run.phase is Phase.ABORTED and run.outcome == scheduler_pb2.OUTCOME_ABORTED
    assert run.finish is FinishReason.ABORT


def test_events_out_of_order_are_programming_errors():
    run = _run()
    with pytest.raises(InvalidTransition):
        run.on_chunk(_chunk([1]), 100.0)          # not started
    run.started()
    with pytest.raises(InvalidTransition):
        run.placed_again(scheduler_pb2.Placement())  # not preempted
    with pytest.raises(InvalidTransition):
        run.started()                             # already running


def test_an_instance_failing_under_a_request_fails_it_over_with_its_tokens_until_none_are_left():
    spec = make_spec(max_tokens=8, slo=Slo(1000, 100), arrival_s=100.0)
    valid = ValidRequest((1, 2, 3), Sampling(max_tokens=8), spec.slo, 1, "chat", "", "", "reject")
    run = RequestRun(spec, valid, scheduler_pb2.Placement(instance_id="i0", address="a0"), StreamTimer(100.0),
                     failovers_left=1)
    run.started()
    run.on_chunk(_chunk([7, 8]), 100.01)
    run.worker_failed("UNAVAILABLE: gone")
    assert run.phase is Phase.FAILING_OVER and run.failed_instances == ["i0"]
    assert run.placement is None        # the failure is told now; no Complete for i0 at the end
    run.placed_again(scheduler_pb2.Placement(instance_id="i1", address="a1"))
    req = run.worker_request()
    assert list(req.prompt_token_ids) == [1, 2, 3, 7, 8] and req.sampling.max_tokens == 6
    run.started()
    run.on_chunk(_chunk([9]), 100.02)
    run.worker_failed("sent nothing for 30s")   # no failover left: the request fails, saying where
    assert run.phase is Phase.FAILED and run.failed_instances == ["i0", "i1"]
    assert run.error.startswith("instance i1 failed after 3 tokens") and run.outcome == scheduler_pb2.OUTCOME_FAILED


def test_a_failover_that_finds_no_instance_fails_with_both_reasons():
    spec = make_spec(max_tokens=8, slo=Slo(1000, 100), arrival_s=100.0)
    valid = ValidRequest((1, 2, 3), Sampling(max_tokens=8), spec.slo, 1, "chat", "", "", "reject")
    run = RequestRun(spec, valid, scheduler_pb2.Placement(instance_id="i0", address="a0"), StreamTimer(100.0),
                     failovers_left=2)
    run.started()
    run.worker_failed("UNAVAILABLE: gone")
    run.not_placed_again("failed over after 0 tokens; scheduler unavailable")
    assert run.phase is Phase.FAILED and "instance i0 failed" in run.error and "scheduler unavailable" in run.error
    with pytest.raises(InvalidTransition):
        run.placed_again(scheduler_pb2.Placement(instance_id="i1"))


def test_a_request_the_worker_refused_itself_does_not_fail_over():
    spec = make_spec(max_tokens=8, slo=Slo(1000, 100), arrival_s=100.0)
    valid = ValidRequest((1, 2, 3), Sampling(max_tokens=8), spec.slo, 1, "chat", "", "", "reject")
    run = RequestRun(spec, valid, scheduler_pb2.Placement(instance_id="i0", address="a0"), StreamTimer(100.0),
                     failovers_left=2)
    run.started()
    run.worker_failed("INVALID_ARGUMENT: prompt too long", retryable=False)
    assert run.phase is Phase.FAILED and run.failovers_left == 2
