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

def _pd_run(max_tokens: int = 8) -> RequestRun:
    run = _run(max_tokens)
    run.placement = run.last = scheduler_pb2.Placement(instance_id="d0", address="ad", legs=[
        scheduler_pb2.Leg(role=common_pb2.ROLE_PREFILL, instance_id="p0", address="ap"),
        scheduler_pb2.Leg(role=common_pb2.ROLE_DECODE, instance_id="d0", address="ad")])
    return run


def _staged_chunk(ids) -> worker_pb2.WorkerChunk:
    c = _chunk(ids, common_pb2.FINISH_REASON_LENGTH)
    c.kv_transfer.CopyFrom(worker_pb2.KvTransferParams(remote_address="p:1", transfer_id="t1", num_tokens=3,
                                                       num_blocks=1))
    return c


def test_a_split_request_prefills_on_p_then_decodes_on_d_with_ps_kv():
    run = _pd_run(max_tokens=8)
    assert run.split and run.address() == "ap"
    prefill = run.worker_request()
    assert prefill.kv_transfer.do_remote_decode and list(prefill.prompt_token_ids) == [1, 2, 3]
    run.started()
    assert run.phase is Phase.PREFILLING
    assert run.on_chunk(_staged_chunk([7]), 100.05)  # P's one token goes to the client at once
    assert run.phase is Phase.TRANSFERRING and run.address() == "ad" and run.staged_unread
    decode = run.worker_request()
    assert list(decode.prompt_token_ids) == [1, 2, 3, 7] and decode.sampling.max_tokens == 7
    assert decode.kv_transfer.do_remote_prefill and decode.kv_transfer.transfer_id == "t1"
    assert decode.kv_transfer.remote_address == "p:1" and decode.kv_transfer.num_tokens == 3
    run.decode_started()
    assert run.phase is Phase.RUNNING and not run.staged_unread
    run.on_chunk(_chunk([8, 9]), 100.08)
    assert run.handoff_ms == pytest.approx(30.0)
    run.on_chunk(_chunk([10], common_pb2.FINISH_REASON_LENGTH), 100.09)
    assert run.phase is Phase.FINISHED and run.generated == [7, 8, 9, 10] and run.instance_id == "d0"


def test_a_prefill_that_stops_or_uses_the_whole_budget_never_opens_a_decode_leg():
    stop = _pd_run(max_tokens=8)
    stop.started()
    stop.on_chunk(_chunk([2], common_pb2.FINISH_REASON_STOP), 100.05)  # EOS as the first token
    assert stop.phase is Phase.FINISHED and stop.finish is FinishReason.STOP
    one = _pd_run(max_tokens=1)
    one.started()
    one.on_chunk(_staged_chunk([7]), 100.05)
    assert one.phase is Phase.FINISHED and one.finish is FinishReason.LENGTH


def test_without_staged_kv_the_decode_leg_computes_the_prompt_itself():
    run = _pd_run()
    run.started()
    run.on_chunk(_chunk([7], common_pb2.FINISH_REASON_LENGTH), 100.05)  # P staged nothing
    assert run.phase is Phase.TRANSFERRING and not run.staged_unread
    assert not run.worker_request().HasField("kv_transfer")


def test_a_client_leaving_between_the_legs_leaves_ps_kv_to_release():
    run = _pd_run()
    run.started()
    run.on_chunk(_staged_chunk([7]), 100.05)
    run.stopped()
    assert run.phase is Phase.ABORTED and run.staged_unread
    assert run.outcome == scheduler_pb2.OUTCOME_ABORTED
    with pytest.raises(InvalidTransition):
        run.decode_started()


@pytest.mark.parametrize("how", ["failed", "preempted"])
def test_a_decode_leg_that_leaves_d_names_d_not_p(how):
    # The scheduler's placement names its first leg (P); the decode leg runs on D.
    run = _pd_run(max_tokens=8)
    run.placement = run.last = scheduler_pb2.Placement(instance_id="p0", address="ap", legs=run.placement.legs)
    run.failovers_left = 1
    run.started()
    run.on_chunk(_staged_chunk([7]), 100.05)
    run.decode_started()
    run.on_chunk(_chunk([8]), 100.08)
    if how == "failed":
        run.worker_failed("UNAVAILABLE: D died")
        assert run.phase is Phase.FAILING_OVER and run.failed_instances == ["d0"]
    else:
        run.on_chunk(_chunk([], common_pb2.FINISH_REASON_PREEMPTED), 100.09)
        assert run.phase is Phase.PREEMPTED
    assert run.left_from == "d0"
