"""HFX turns a request away only when that buys attainment for others (issue 17): priority orders,
it never decides alone; a running request is charged only for the steps a newcomer decodes beside
it; a request on its last chance is not rejected for the worst-case step in flight."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.domain import ClusterSnapshot, Slo, StepInFlight, TicketBound, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from tests.unit.helpers_sched import MODEL, make_instance, make_request

# step_ms = 2 + 0.01*p + 0.5*n (c3 = 0); chunk 100 tokens; 10 output tokens until one is seen.
CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0)


def cluster(*instances):
    return ClusterSnapshot(tuple(instances))


def test_a_low_priority_request_competes_once_its_own_slack_is_due():
    """As in test_loose_requests_deferred_while_slo_requests_are_turned_away: "tight" does not fit
    beside r (bank 9.9 ms) and puts the cluster under pressure. "patient" (priority 1, L=100, TTFT
    303 ms: slack 300 ms > 200) is deferred and stops the ranked pass. "low" (priority 0, TTFT
    150 ms: own slack 147 ms <= 200, credited 647 ms) sits behind it in the heap; before issue 17 it
    was deferred on its credited slack until it was hopeless. Now it is due and gets its try: it
    fits (9.9 - 9*0.5 - 0.01*100 = 4.4 >= 0)."""
    r = make_request(request_id="r", slo=Slo(1000.0, 3.6))
    inst = make_instance(running=(r,), placed_s=-10.0)
    tight = make_request(request_id="tight", prompt_tokens=600, slo=Slo(100.0, 50.0))
    patient = make_request(request_id="patient", slo=Slo(303.0, 50.0))
    low = make_request(request_id="low", priority=0, slo=Slo(150.0, 50.0), task_class="batch")
    hfx = make_policy("hfx", CFG)
    (d,) = hfx.schedule([tight, patient, low], cluster(inst), 0.0).decisions
    assert d.request_id == "low" and d.verdict == Verdict.ADMIT and hfx.deferrals == 1
    # With plenty of its own slack a low-priority request still waits out the pressure.
    hfx = make_policy("hfx", CFG)
    calm = make_request(request_id="calm", priority=0, slo=Slo(5000.0, 50.0), task_class="batch")
    assert hfx.schedule([tight, calm], cluster(inst), 0.0).decisions == ()


def test_a_short_output_is_charged_only_for_the_steps_it_decodes():
    """r: O=100 (max_tokens 100, prior 100), TPOT 3.0 ms, alone at step 2.5 ms: bank 99*0.5 = 49.5
    ms. x (L=100) makes the step 3.0 ms for as long as it decodes. With O=2 that costs r 2*0.5 +
    0.01*100 = 2 ms: fits (the old charge, 99*0.5 + 1 = 50.5 > 49.5, refused it). With O=100 it
    costs 99*0.5 + 1 = 50.5 ms > 49.5: no fit."""
    cfg = PolicyConfig(**{**CFG.__dict__, "prior_output_tokens": 100})
    r = make_request(request_id="r", max_tokens=100, slo=Slo(1000.0, 3.0))
    inst = make_instance(running=(r,), placed_s=-10.0)
    short = make_request(request_id="short", max_tokens=2, slo=Slo(1000.0, 50.0))
    long_ = make_request(request_id="long", max_tokens=100, slo=Slo(1000.0, 50.0))
    (d,) = make_policy("hfx", cfg).schedule([short], cluster(inst), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and "budget 50 ms" in d.reason
    assert make_policy("hfx", cfg).schedule([long_], cluster(inst), 0.0).decisions == ()


def test_last_chance_placement_ignores_the_step_in_flight():
    """Busy i0 (a, b as in the worked example, long drained: no backlog, step s = 3 ms). x (L=50):
    unloaded prefill 2 + 0.5 = 2.5 ms; on i0 1 step * 3 + 0.5 = 3.5 ms, plus the step in flight
    (3 ms) = 6.5 ms. With 5 ms left its slack is 2.5 ms <= the longest step (3 ms): on its last
    chance it is admitted at its own risk (3.5 <= 5). With 6 ms left (slack 3.5 ms) it is not on
    its last chance and waits (6.5 > 6)."""
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(100.0, 10.0))
    b = make_request(request_id="b", prompt_tokens=200, slo=Slo(100.0, 8.0))
    busy = make_instance(running=(a, b), placed_s=-10.0)
    last = make_request(request_id="x", prompt_tokens=50, arrival_s=0.0, slo=Slo(5.0, 10.0))
    (d,) = make_policy("hfx", CFG).schedule([last], cluster(busy), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(3.5)
    assert "last chance" in d.reason and "least TTFT" in d.reason
    waits = make_request(request_id="y", prompt_tokens=50, arrival_s=0.0, slo=Slo(6.0, 10.0))
    assert make_policy("hfx", CFG).schedule([waits], cluster(busy), 0.0).decisions == ()


def test_each_running_request_is_charged_only_for_its_own_remaining_steps():
    """Fit test (2) per request. "a_long" (O=100, TPOT 50 ms) and "b_short" (O=3, TPOT 4 ms) run
    at step s = 2 + 0.5*2 = 3 ms. b_short banks 2*(4-3) = 2 ms (nothing placed after it);
    a_long 99*(50-3) - 0.01*100 = 4652 ms. Newcomer x (L=10, O=100) makes the step 3.5 ms: it
    slows b_short for b_short's 2 remaining steps only: 2 - 2*0.5 - 0.1 = 0.9 >= 0, a fit. Before
    issue 17's second pass the least bank (b_short's) was charged for the longest remaining run
    (a_long's 99 steps): 2 - 99*0.5 - 0.1 < 0, so x waited until hopeless although it harmed
    nobody. b_short's bank still binds: y (L=150) costs it 1 + 1.5 = 2.5 > 2 ms."""
    cfg = PolicyConfig(**{**CFG.__dict__, "prior_output_tokens": 100})
    long_ = make_request(request_id="a_long", max_tokens=100, slo=Slo(1000.0, 50.0))
    short = make_request(request_id="b_short", max_tokens=3, slo=Slo(1000.0, 4.0))
    inst = make_instance(running=(long_, short), placed_s=-10.0)
    x = make_request(request_id="x", prompt_tokens=10, max_tokens=100, slo=Slo(1000.0, 50.0))
    (d,) = make_policy("hfx", cfg).schedule([x], cluster(inst), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and "budget 2 ms" in d.reason
    y = make_request(request_id="y", prompt_tokens=150, max_tokens=100, slo=Slo(1000.0, 50.0))
    assert make_policy("hfx", cfg).schedule([y], cluster(inst), 0.0).decisions == ()
    # Strained (more queued than instances: "big" can never fit, its prompt exceeds the KV): the
    # conservative charge keeps room back, 2 - 99*0.5 - 0.1 < 0, and x waits.
    big = make_request(request_id="big", prompt_tokens=20_000, slo=Slo(100_000.0, 50.0))
    assert make_policy("hfx", cfg).schedule([x, big], cluster(inst), 0.0).decisions == ()


def test_a_tight_first_token_takes_its_last_chance_at_once():
    """Busy i0 (a, b as above: step s = 3 ms, no backlog). x (L=300, TTFT 16 ms): unloaded
    prefill 3 steps * 2 + 3 = 9 ms, so its slack is 7 ms, more than the longest step (3 ms): not
    on its last chance by that rule, and it waited, though on i0 it needs 4 steps * 3 + 3 = 15 ms
    plus the step in flight (3 ms) = 18 > 16 wherever it waits. Its first token is tight (slack 7
    <= (tight_ttft_factor 2 - 1) * 9 ms) and the cluster keeps up: it is placed now at its own
    risk (15 <= 16). With TTFT
    30 ms (slack 21 ms) the full test passes (18 <= 30): an ordinary admission."""
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(100.0, 10.0))
    b = make_request(request_id="b", prompt_tokens=200, slo=Slo(100.0, 8.0))
    busy = make_instance(running=(a, b), placed_s=-10.0)
    tight = make_request(request_id="x", prompt_tokens=300, slo=Slo(16.0, 10.0))
    (d,) = make_policy("hfx", CFG).schedule([tight], cluster(busy), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(15.0)
    assert "last chance" in d.reason
    # Strained (a second request queued on one instance): it waits its turn instead.
    big = make_request(request_id="big", prompt_tokens=20_000, slo=Slo(100_000.0, 50.0))
    assert make_policy("hfx", CFG).schedule([tight, big], cluster(busy), 0.0).decisions == ()
    loose = make_request(request_id="y", prompt_tokens=300, slo=Slo(30.0, 10.0))
    (d,) = make_policy("hfx", CFG).schedule([loose], cluster(busy), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(18.0) and "last chance" not in d.reason


def test_what_pressure_held_back_is_released_paced_not_all_at_once():
    """Issue 17, third pass (family workload s1-w034): loose requests deferred for a whole pressure
    window were then placed on every instance in one pass, just before a burst of a tight class
    that found every prefill lane taken. "gone" (arrived 100 ms ago, TTFT 50 ms, unloaded prefill 3
    ms) waited until it was hopeless: pressure until t=0.5. Two loose requests (L=100: unloaded prefill 2 + 0.01*100 = 3 ms;
    TTFT 5 s) wait it out. At t=0.6 the first goes; the next only release_spacing (2) x 3 ms / 2
    instances = 3 ms later. Once the release window (another 500 ms) is over, no pacing."""
    idle = cluster(make_instance("i0"), make_instance("i1"))
    gone = make_request(request_id="gone", slo=Slo(50.0, 50.0), arrival_s=-0.1)
    a, b = (make_request(request_id=n, slo=Slo(5000.0, 50.0)) for n in ("a", "b"))
    hfx = make_policy("hfx", CFG)
    assert [d.request_id for d in hfx.schedule([gone, a, b], idle, 0.0).decisions] == []
    (d,) = [d for d in hfx.schedule([gone, a, b], idle, 0.6).decisions if d.request_id in ("a", "b")]
    assert d.request_id == "a" and d.verdict == Verdict.ADMIT
    assert "released after pressure, the next loose one in 3 ms" in d.reason
    assert [d for d in hfx.schedule([gone, b], idle, 0.602).decisions if d.request_id == "b"] == []
    (d,) = [d for d in hfx.schedule([gone, b], idle, 0.6035).decisions if d.request_id == "b"]
    assert d.verdict == Verdict.ADMIT
    # release_spacing 0: both at once when the pressure ends (the flood).
    hfx = make_policy("hfx", replace(CFG, release_spacing=0.0))
    hfx.schedule([gone, a, b], idle, 0.0)
    placed = [d.request_id for d in hfx.schedule([gone, a, b], idle, 0.6).decisions if d.request_id in ("a", "b")]
    assert placed == ["a", "b"]
    # After the release window loose requests go at once again.
    hfx = make_policy("hfx", CFG)
    hfx.schedule([gone, a, b], idle, 0.0)
    placed = [d.request_id for d in hfx.schedule([gone, a, b], idle, 1.1).decisions if d.request_id in ("a", "b")]
    assert placed == ["a", "b"]


def test_the_reported_step_in_flight_replaces_the_worst_case_wait():
    """Busy i0 (a, b as above: step s = 3 ms, no backlog). x (L=50, TTFT 6 ms): 1 step * 3 +
    0.5 = 3.5 ms of its own, slack 3.5 ms (not its last chance). Without a report of the step in
    flight it is charged a whole step: 6.5 > 6, it waits (as in the last-chance test). When the
    load report says a step of 2 decodes (2 + 0.5*2 = 3 ms by the model) began 2 ms ago, 1 ms is
    left: 4.5 <= 6, admitted now. A reported step past its predicted end (began 5 ms ago) or a
    "between steps" report older than step_report_max_age_ms cannot tell: the whole step again.
    A fresh "between steps" report: nothing to wait for, 3.5 ms."""
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(100.0, 10.0))
    b = make_request(request_id="b", prompt_tokens=200, slo=Slo(100.0, 8.0))
    x = make_request(request_id="x", prompt_tokens=50, slo=Slo(6.0, 10.0))

    def busy(**load):
        inst = make_instance(running=(a, b), placed_s=-10.0)
        return replace(inst, load=replace(inst.load, **load))

    def place(inst):
        return make_policy("hfx", CFG).schedule([x], cluster(inst), 0.0).decisions

    assert place(busy()) == ()
    (d,) = place(busy(reports_step=True, reported_s=-0.002, step_in_flight=StepInFlight(-0.002, 0, 2, 0)))
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(4.5) and "last chance" not in d.reason
    assert place(busy(reports_step=True, reported_s=-0.005, step_in_flight=StepInFlight(-0.005, 0, 2, 0))) == ()
    assert place(busy(reports_step=True, reported_s=-0.01)) == ()
    (d,) = place(busy(reports_step=True, reported_s=0.0))
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(3.5)
    # Tickets are spent later, behind whatever step runs then: they keep the whole-step charge.
    probe = TicketBound(50, 10, 6.0, 10.0)
    assert make_policy("hfx", CFG).tickets(cluster(busy(reports_step=True, reported_s=0.0)), [probe], 0.0) == []
    (g,) = make_policy("hfx", CFG).tickets(cluster(busy(reports_step=True, reported_s=0.0)),
                                           [replace(probe, min_ttft_ms=7.0)], 0.0)
    assert g.predicted_ttft_ms == pytest.approx(6.5)


def test_a_request_is_not_held_by_pressure_it_alone_caused():
    """Issue 9, eighth session: a code request due on arrival that fit nowhere opened a pressure
    window, turned hopeless a few ms later and, best effort, waited out the window its own miss
    opened. Busy i0 (a, b as above: step 3 ms). x (L=300, TTFT 12 ms): unloaded prefill 9 ms,
    slack 3 ms, due; on i0 it needs 15 ms even on its last chance: no fit, pressure. At t=4 ms it
    is hopeless and demoted: the pressure is its own, so it goes best effort at once on the spare
    room (before: at t=504 ms). A loose request deferred in the same pass keeps the room (x
    waits). When y (same shape) also failed, in between, the pressure is y's too: x waits out
    y's window (until t=502 ms)."""
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(100.0, 10.0))
    b = make_request(request_id="b", prompt_tokens=200, slo=Slo(100.0, 8.0))
    busy = cluster(make_instance(running=(a, b), placed_s=-10.0))
    x = make_request(request_id="x", prompt_tokens=300, slo=Slo(12.0, 10.0))
    y = make_request(request_id="y", prompt_tokens=300, slo=Slo(12.0, 10.0), arrival_s=0.002)
    loose = make_request(request_id="loose", slo=Slo(5000.0, 50.0), arrival_s=0.003)
    hfx = make_policy("hfx", CFG)
    assert hfx.schedule([x], busy, 0.0).decisions == ()
    (d,) = hfx.schedule([x], busy, 0.004).decisions
    assert d.request_id == "x" and d.verdict == Verdict.BEST_EFFORT
    hfx = make_policy("hfx", CFG)
    assert hfx.schedule([x], busy, 0.0).decisions == ()
    assert hfx.schedule([x, loose], busy, 0.004).decisions == () and hfx.deferrals == 1
    hfx = make_policy("hfx", CFG)
    assert hfx.schedule([x], busy, 0.0).decisions == ()
    assert hfx.schedule([x, y], busy, 0.002).decisions == ()
    assert hfx.schedule([x], busy, 0.004).decisions == ()     # y's pressure: held
    assert hfx.schedule([x], busy, 0.5015).decisions == ()
    (d,) = hfx.schedule([x], busy, 0.5025).decisions            # y's window over; x's own remains
    assert d.request_id == "x" and d.verdict == Verdict.BEST_EFFORT


def test_the_last_chance_still_counts_a_step_in_flight_that_the_load_report_names():
    """Issue 17, ninth pass: the last chance leaves out the step in flight because it may be about
    to end; where the load report says how much of it is left, that much is charged still (in the
    family, 25 of 26 such placements at four near-miss points missed their first token). Busy i0
    (a, b as above: step 3 ms). x (L=50, TTFT 5 ms): 3.5 ms of its own, slack 2.5 ms <= the
    longest step: its last chance. No report: admitted at its own risk (3.5 <= 5). A step of 2
    decodes (3 ms) that began 0.5 ms ago: 2.5 ms left, 3.5 + 2.5 = 6 > 5, so not placed. One
    that began 2 ms ago: 1 ms left, 4.5 <= 5, an ordinary admission. One past its predicted end
    (began 5 ms ago): the report cannot tell, so the last chance leaves it out again."""
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(100.0, 10.0))
    b = make_request(request_id="b", prompt_tokens=200, slo=Slo(100.0, 8.0))
    x = make_request(request_id="x", prompt_tokens=50, slo=Slo(5.0, 10.0))

    def place(began_s=None):
        inst = make_instance(running=(a, b), placed_s=-10.0)
        if began_s is not None:
            inst = replace(inst, load=replace(inst.load, reports_step=True, reported_s=began_s,
                                              step_in_flight=StepInFlight(began_s, 0, 2, 0)))
        return make_policy("hfx", CFG).schedule([x], cluster(inst), 0.0).decisions

    (d,) = place()
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(3.5) and "last chance" in d.reason
    assert place(-0.0005) == ()
    (d,) = place(-0.002)
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(4.5) and "last chance" not in d.reason
    (d,) = place(-0.005)
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(3.5) and "last chance" in d.reason
