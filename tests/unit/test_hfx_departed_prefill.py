"""A request's TPOT bank stays charged for the prefill of requests placed behind it that have since
left its instance (issue 17, seventh pass: budget.departed_prefill). Summarised from scratch, the
walk over the running set sees only who is still there, so a departure gave back a bank the
leaver's prompt had already spent, and a later long prompt was admitted on the strength of it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.domain import ClusterSnapshot, Role, RunningRequest, Slo, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.budget import departed_prefill, summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from tests.unit.helpers_sched import MODEL, make_instance, make_request

# step_ms = 2 + 0.01*p + 0.5*n (c3 = 0); chunk 100 tokens; 10 output tokens until one is seen.
CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0)


def cluster(*instances):
    return ClusterSnapshot(tuple(instances))


def run(spec, placed_s, role=Role.COLOCATED):
    return RunningRequest(spec, placed_s, role)


A = make_request(request_id="a", prompt_tokens=100, slo=Slo(1000.0, 4.0))       # the protected one
D = make_request(request_id="d", prompt_tokens=500, slo=Slo(1000.0, 50.0))      # placed behind a
BEFORE = replace(make_instance(), running=(run(A, 0.0), run(D, 0.001)))
AFTER = replace(make_instance(), running=(run(A, 0.0),))


def test_departed_prefill_charges_those_placed_before_the_leaver_only():
    """d (500 tokens) leaves: a, placed before it, decoded while d's prompt was prefilled and is
    charged 500 tokens; e, placed after d, was not slowed by it. A DECODE leg prefilled nothing
    here: its departure charges no one. The leaver's own entry is forgotten."""
    e = make_request(request_id="e", prompt_tokens=50)
    leg = make_request(request_id="leg", prompt_tokens=3000)
    est = OutputLengthEstimator(CFG.prior_output_tokens)
    interfered = {"d": 7.0}
    departed_prefill((run(A, 0.0), run(D, 0.001), run(e, 0.002), run(leg, 0.0005, Role.DECODE)),
                     (run(A, 0.0), run(e, 0.002)), interfered, est, 0.01)
    assert interfered == {"a": 500.0}
    departed_prefill((run(A, 0.0), run(e, 0.002)), (run(A, 0.0),), interfered, est, 0.02)   # e's 50 reach a
    assert interfered == {"a": 550.0}
    departed_prefill((run(A, 0.0),), (), interfered, est, 0.03)
    assert interfered == {}


def test_nothing_is_carried_for_a_request_that_outlived_its_estimate():
    """a's estimated life at its SLO pace: TTFT 1000 ms + (10 - 1) x 4 ms = 1.036 s after its
    placement. Still running later, it has more tokens than its bank counts (or has missed
    already): its carried charge is dropped, and a departure then charges it nothing."""
    est = OutputLengthEstimator(CFG.prior_output_tokens)
    interfered = {"a": 500.0}
    departed_prefill((run(A, 0.0), run(D, 0.001)), (run(A, 0.0),), interfered, est, 1.03)
    assert interfered == {"a": 1000.0}
    departed_prefill((run(A, 0.0), run(D, 0.001)), (run(A, 0.0),), interfered, est, 1.04)
    assert interfered == {}


def test_summarise_keeps_the_departed_interference_in_the_bank():
    """a alone: n = 1, s = 2.5 ms, bank (10 - 1) x (4.0 - 2.5) = 13.5 ms; with d's 500 tokens
    (0.01 ms each) already spent, 8.5 ms."""
    est = OutputLengthEstimator(CFG.prior_output_tokens)
    assert summarise(AFTER, CFG, est).bank_ms == pytest.approx(13.5)
    assert summarise(AFTER, CFG, est, (), {"a": 500.0}).bank_ms == pytest.approx(8.5)


def test_a_long_prompt_is_not_admitted_on_a_bank_a_departure_gave_back():
    """x (700 tokens, loose SLOs) arrives after d has left. Placed beside a it adds a decode
    sequence (s 2.5 -> 3.0 ms for a's 9 steps: 4.5 ms) and 7 ms of prefill: 11.5 ms. A policy that
    saw d run behind a knows a has 8.5 ms left: x waits. Judged from the running set alone (before
    this pass, and a policy that never saw d), a has 13.5 ms and x is admitted (a would miss)."""
    x = make_request(request_id="x", prompt_tokens=700, slo=Slo(1000.0, 50.0), arrival_s=0.1)
    hfx = make_policy("hfx", CFG)
    assert hfx.schedule([], cluster(BEFORE), 0.002).decisions == ()
    assert hfx.schedule([x], cluster(AFTER), 0.1).decisions == ()
    (d,) = make_policy("hfx", CFG).schedule([x], cluster(AFTER), 0.1).decisions
    assert d.verdict == Verdict.ADMIT and d.instance_id == "i0"
    small = replace(x, request_id="small", prompt_tokens=300)   # 4.5 + 3 ms <= 8.5: fits both ways
    (d,) = hfx.schedule([small], cluster(AFTER), 0.1).decisions
    assert d.verdict == Verdict.ADMIT and d.instance_id == "i0"
