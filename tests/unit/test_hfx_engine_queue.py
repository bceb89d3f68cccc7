"""What HFX knows of an instance's engine queue between steps (issue 17, tenth pass): a load report
taken between two steps names how many requests wait in the engine queue; those are the last ones
placed there, and their whole prompts run in the next steps. The queued first tokens are protected
then too (fit test (6)), and a newcomer's predicted first token counts at least those prompts, not
the estimate that drains from each placement on (a prompt placed behind a step has not started)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.domain import ClusterSnapshot, RunningRequest, Slo, StepInFlight, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.budget import summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from services.scheduler.policy.fit import FitTable, queued_since_step
from tests.unit.helpers_sched import MODEL, make_instance, make_request

# step_ms = 2 + 0.01*p + 0.5*n (c3 = 0); chunk 100 tokens; 10 output tokens until one is seen.
CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0)
NOW = 0.010


def between_steps(waiting: int = 1, q_ttft_ms: float = 1000.0):
    """i0 decodes a (placed long ago); q (L=90) was placed 5 ms ago, while a step ran. That step
    has just ended: the report (taken now) says no step runs and `waiting` requests wait in the
    engine queue. The estimate drains q's prompt from its placement on (98 tokens per 3.98 ms):
    after 5 ms it says nothing is queued, while q's prompt has not started."""
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(1000.0, 50.0))
    q = make_request(request_id="q", prompt_tokens=90, slo=Slo(q_ttft_ms, 50.0), arrival_s=0.005)
    inst = make_instance(running=(a,), placed_s=-10.0)
    load = replace(inst.load, reports_step=True, reported_s=NOW, step_in_flight=None, waiting_requests=waiting)
    return replace(inst, load=load, running=inst.running + (RunningRequest(q, 0.005),))


def table_of(inst):
    budget = summarise(inst, CFG, OutputLengthEstimator(CFG.prior_output_tokens))
    return FitTable([inst], [budget], CFG, NOW, banned=set())


def test_between_steps_the_engine_queue_is_the_last_requests_placed():
    """One waiting: q (the last placed), not a. None waiting: nothing queued. A request placed
    after the report queues too. Before the tenth pass a report between steps named no queue."""
    inst = between_steps(waiting=1)
    assert [r.spec.request_id for r in queued_since_step(inst)] == ["q"]
    assert queued_since_step(between_steps(waiting=0)) == []
    late = make_request(request_id="late", prompt_tokens=10)
    inst = replace(inst, running=inst.running + (RunningRequest(late, NOW + 0.001),))
    assert [r.spec.request_id for r in queued_since_step(inst)] == ["q", "late"]
    unknown = replace(inst, load=replace(inst.load, reports_step=False))
    assert queued_since_step(unknown) is None
    during = replace(inst, load=replace(inst.load, step_in_flight=StepInFlight(0.006, 0, 1, 0)))
    assert [r.spec.request_id for r in queued_since_step(during)] == ["late"]


def test_a_prompt_still_in_the_engine_queue_counts_in_the_predicted_first_token():
    """The estimated backlog on i0 has drained (0), but q's 90 tokens are known to be queued. x
    (L=50, TTFT 5 ms) is predicted ceil(140/98) * 3 + 0.01*140 = 7.4 ms > 5, so it is not placed
    there; before the tenth pass it was predicted ceil(50/98) * 3 + 0.01*50 = 3.5 ms and admitted,
    to come out behind q's prompt, late. With a TTFT of 10 ms it is admitted, predicted 7.4 ms.
    While the cluster is strained (`reserve`) the estimate alone counts, as before."""
    inst = between_steps(waiting=1)
    table = table_of(inst)
    assert table.backlog[0] == pytest.approx(0.0) and table.queued_tokens[0] == pytest.approx(90.0)
    assert table.ttft_ms(50.0, optimistic=False)[0] == pytest.approx(2 * 3.0 + 0.01 * 140)
    budget = summarise(inst, CFG, OutputLengthEstimator(CFG.prior_output_tokens))
    strained = FitTable([inst], [budget], CFG, NOW, banned=set(), reserve=True)   # as test (6): the estimate
    assert strained.ttft_ms(50.0, optimistic=False)[0] == pytest.approx(3.0 + 0.01 * 50)
    x = make_request(request_id="x", prompt_tokens=50, slo=Slo(5.0, 50.0), arrival_s=NOW)
    decisions = make_policy("hfx", CFG).schedule([x], ClusterSnapshot((inst,)), NOW).decisions
    assert all(d.verdict != Verdict.ADMIT for d in decisions)
    (d,) = make_policy("hfx", CFG).schedule([replace(x, slo=Slo(10.0, 50.0))], ClusterSnapshot((inst,)), NOW).decisions
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(7.4)


def test_between_steps_a_newcomer_does_not_make_a_queued_first_token_late():
    """q's TTFT 8.95 ms from its arrival 5 ms ago: 3.95 ms left, its first token predicted 3 +
    0.01*90 = 3.9 ms from now (in the next step): 0.05 ms of margin. A newcomer's prompt rides in
    that step (room 98 - 90 = 8 tokens) and slows it by 0.01 ms per token it puts there: 4 tokens
    fit, 6 make q late. Before the tenth pass test (6) did not apply between steps (no room)."""
    table = table_of(between_steps(waiting=1, q_ttft_ms=8.95))
    assert table.first_room[0] == pytest.approx(8.0)
    assert table.first_margin_ms[0] == pytest.approx(0.05)
    assert list(table.queued_first_ok(4.0)) == [True] and list(table.queued_first_ok(6.0)) == [False]
