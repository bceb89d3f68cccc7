"""What HFX predicts of the prefill queued on an instance (issue 17, fifth pass): a newcomer may not
ride in the step that yields a queued first token when that makes it late (fit test (6)), and the
queue a finished request held others behind stays predicted after it leaves (carry_backlog). And
a request out of reach on arrival says nothing about the load: it sets no pressure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.domain import ClusterSnapshot, RunningRequest, Slo, StepInFlight, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.budget import summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from services.scheduler.policy.fit import FitTable
from tests.unit.helpers_sched import MODEL, make_instance, make_request

# step_ms = 2 + 0.01*p + 0.5*n (c3 = 0); chunk 100 tokens; 10 output tokens until one is seen.
CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0)


def cluster(*instances):
    return ClusterSnapshot(tuple(instances))


def busy_with_queued_first(queued_ttft_ms: float):
    """i0 decodes a (placed long ago); its step in flight (1 decode, 2.5 ms by the model) began 2
    ms ago, so 0.5 ms is left. q (L=20) was placed 1 ms ago, after that step began: it waits for
    the next one. Budget: n = 2 (a, q), s = 3 ms, C' = 98; q's first token comes out of step 1
    after the step in flight: 0.5 + 3 + 0.01*20 = 3.7 ms from now. Its deadline is
    queued_ttft_ms after its arrival (1 ms ago)."""
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(1000.0, 50.0))
    q = make_request(request_id="q", prompt_tokens=20, slo=Slo(queued_ttft_ms, 50.0), arrival_s=-0.001)
    inst = make_instance(running=(a,), placed_s=-10.0)
    load = replace(inst.load, reports_step=True, reported_s=-0.002, step_in_flight=StepInFlight(-0.002, 0, 1, 0))
    return replace(inst, load=load, running=inst.running + (RunningRequest(q, -0.001),))


def test_a_newcomer_does_not_make_a_queued_first_token_late():
    """q's TTFT 5.2 ms: deadline 4.2 ms from now, predicted 3.7: 0.5 ms of margin. A newcomer's
    prompt rides in q's step (room 98 - 20 = 78 tokens) and slows it by 0.01 ms per token it puts
    there: 60 tokens (0.6 ms) would make q late, so x waits (before the fifth pass it was placed,
    and q missed); 30 tokens (0.3 ms) fit. With 40 ms of TTFT q has room for any newcomer."""
    x = make_request(request_id="x", prompt_tokens=60, slo=Slo(1000.0, 50.0))
    assert make_policy("hfx", CFG).schedule([x], cluster(busy_with_queued_first(5.2)), 0.0).decisions == ()
    small = replace(x, request_id="small", prompt_tokens=30)
    (d,) = make_policy("hfx", CFG).schedule([small], cluster(busy_with_queued_first(5.2)), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and d.instance_id == "i0"
    (d,) = make_policy("hfx", CFG).schedule([x], cluster(busy_with_queued_first(40.0)), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and d.instance_id == "i0"


def test_under_strain_the_queued_first_token_test_steps_aside():
    """As above (q keeps 0.5 ms), but a second request waits too ("big", 20,000 tokens: it fits
    nowhere), so more are queued than there are instances: the cluster is strained, and x, refused,
    would wait behind a queue and likely miss itself. Test (6) applies only while the cluster
    keeps up (like test (2)'s exact charge): x is placed on i0."""
    x = make_request(request_id="x", prompt_tokens=60, slo=Slo(1000.0, 50.0))
    big = make_request(request_id="big", prompt_tokens=20_000, slo=Slo(100_000.0, 50.0))
    decisions = make_policy("hfx", CFG).schedule([x, big], cluster(busy_with_queued_first(5.2)), 0.0).decisions
    assert [(d.request_id, d.verdict, d.instance_id) for d in decisions] == [("x", Verdict.ADMIT, "i0")]


def test_the_queued_first_token_test_in_numbers():
    """FitTable's view of the instance above: room R = 78 tokens, least margin 4.2 - 3.7 = 0.5 ms.
    A request placed in the same pass joins the queue (Q = 50, R = 48, margin of the 30-token one
    ... the step now ends 0.3 ms later, so q keeps 0.2 ms). Without a known step in flight (no
    report) there is nothing to test."""
    inst = busy_with_queued_first(5.2)
    budget = summarise(inst, CFG, OutputLengthEstimator(CFG.prior_output_tokens))
    table = FitTable([inst], [budget], CFG, 0.0, banned=set())
    assert table.first_room[0] == pytest.approx(78.0)
    assert table.first_margin_ms[0] == pytest.approx(0.5)
    assert list(table.queued_first_ok(60.0)) == [False] and list(table.queued_first_ok(30.0)) == [True]
    small = make_request(request_id="small", prompt_tokens=30, slo=Slo(1000.0, 50.0))
    table.place(0, small, 10, 0.0, protected=True)
    assert table.first_room[0] == pytest.approx(47.0)   # n = 3 now: C' = 97, Q = 50
    assert table.first_margin_ms[0] == pytest.approx(4.2 - (0.5 + 3.5 + 0.01 * 50))
    unknown = replace(inst, load=replace(inst.load, reports_step=False, step_in_flight=None))
    budget = summarise(unknown, CFG, OutputLengthEstimator(CFG.prior_output_tokens))
    assert list(FitTable([unknown], [budget], CFG, 0.0, banned=set()).queued_first_ok(1000.0)) == [True]


def test_the_queue_a_finished_request_held_stays_predicted():
    """head (L=2000) was placed at 0, b (L=1000) 1 ms later, behind it. With both running (n = 2,
    C' = 98, s = 3 ms) prefill drains at 98 / 3.98 tokens per ms: at 90 ms 3000 - 2216 = 784
    tokens are still queued (b's, head's prefill is done). Then head finishes. Summarised from
    scratch, b alone looks as if it had prefilled since it was placed: nothing queued. x (L=100,
    TTFT 30 ms) would be predicted 2.5 (the step in flight) + ceil(100/99) * 2.5 + 0.01*100 = 8.5
    ms and admitted, behind 784 queued tokens (~35 ms: a miss). A policy that saw the queue before
    keeps it: ceil(884/99) * 2.5 + 0.01*884 = 31.3 ms > 30 before the step in flight, so x is
    not placed there. A policy that never saw it cannot know (the old prediction)."""
    head = make_request(request_id="head", prompt_tokens=2000, slo=Slo(1000.0, 50.0))
    b = make_request(request_id="b", prompt_tokens=1000, slo=Slo(1000.0, 50.0))
    before = replace(make_instance(), running=(RunningRequest(head, 0.0), RunningRequest(b, 0.001)))
    after = replace(before, running=(RunningRequest(b, 0.001),))
    x = make_request(request_id="x", prompt_tokens=100, slo=Slo(30.0, 10.0), arrival_s=0.09)
    hfx = make_policy("hfx", CFG)
    assert hfx.schedule([], cluster(before), 0.002).decisions == ()
    assert hfx.schedule([x], cluster(after), 0.09).decisions == ()
    (d,) = make_policy("hfx", CFG).schedule([x], cluster(after), 0.09).decisions
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(2.5 + 2 * 2.5 + 1.0)


def test_a_request_out_of_reach_on_arrival_puts_no_pressure_on_the_cluster():
    """"gone" (TTFT 1 ms, unloaded prefill 2 + 0.01*100 = 3 ms) cannot make its first token even on
    an idle instance: hopeless on arrival, demoted. That says nothing about the load: "loose" (TTFT
    5 s) is placed in the same pass, and gone goes best effort on the spare room at once. Before
    the fifth pass gone put the cluster under pressure for 500 ms: loose was deferred and gone held
    back. A request that became hopeless while it waited still puts the cluster under pressure."""
    idle = cluster(make_instance("i0"), make_instance("i1"))
    gone = make_request(request_id="gone", slo=Slo(1.0, 50.0))
    loose = make_request(request_id="loose", slo=Slo(5000.0, 50.0))
    decisions = {d.request_id: d for d in make_policy("hfx", CFG).schedule([gone, loose], idle, 0.0).decisions}
    assert decisions["loose"].verdict == Verdict.ADMIT
    assert decisions["gone"].verdict == Verdict.BEST_EFFORT
    waited = replace(gone, slo=Slo(50.0, 50.0), arrival_s=-0.1)
    assert make_policy("hfx", CFG).schedule([waited, loose], idle, 0.0).decisions == ()
