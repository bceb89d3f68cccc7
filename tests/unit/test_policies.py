"""Scheduling policies: the HFX budget arithmetic, ranking, demotion, placement, preemption, baselines."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from services.common.domain import ClusterSnapshot, Slo, Verdict
from services.scheduler.policy import PolicyConfig, make_policy, observe_completion, policy_names
from services.scheduler.policy.budget import prefill_ms, summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from tests.unit.helpers_sched import MODEL, make_instance, make_request

CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0)


def cluster(*instances):
    return ClusterSnapshot(tuple(instances))


def test_budget_worked_by_hand():
    """Model step_ms = 2 + 0.01*p + 0.5*n; chunk 100 tokens.

    Running on i0 (placed at t=0, in this order): a (L=100, O=10, TPOT 10 ms), b (L=200, O=10, TPOT 8 ms).
    n = 2, so steady step s = 2 + 0.5*2 = 3 ms; C' = 100 - 2 = 98 prefill tokens per step.
    bank_a = (10-1)*(10-3) - 0.01*200 (b's prompt came after a) = 63 - 2 = 61 ms
    bank_b = (10-1)*(8-3)  - 0                                   = 45 ms   -> budget 45 ms
    Backlog: rate = 98 / (3 + 0.01*98) ms = 24.62 tokens/ms; at t=0 all 300 tokens are queued.
    """
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(100.0, 10.0))
    b = make_request(request_id="b", prompt_tokens=200, slo=Slo(100.0, 8.0))
    budget = summarise(make_instance(running=(a, b)), CFG, OutputLengthEstimator(10))
    assert budget.decode_seqs == 2 and budget.steady_ms() == pytest.approx(3.0)
    assert budget.bank_ms == pytest.approx(45.0)
    assert budget.min_tpot_ms == 8.0
    assert budget.backlog_tokens(0.0) == pytest.approx(300.0)
    assert budget.prefill_rate_tps == pytest.approx(98 / 3.98 * 1000)
    # Most slack and same priority: a is the one to preempt first.
    assert budget.victim_id == "a"


def test_prefill_ms_counts_chunks():
    # 250 tokens at 100 per step on an empty instance: 3 steps of 2 ms + 0.01*250 = 8.5 ms.
    assert prefill_ms(MODEL, 250, 100) == pytest.approx(8.5)


def test_fit_checks_own_ttft_including_queue():
    """New request x (L=100) behind 300 queued prompt tokens on i0 (budget as above): it first
    waits for the step in flight, w = 3 + 0.01*min(300, 98) = 3.98 ms, then
    ceil(400/98)=5 steps * 3 ms + 0.01*400 = 19 ms: ttft = 22.98 ms. A 15 ms TTFT SLO cannot
    fit; 30 ms fits."""
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(100.0, 10.0))
    b = make_request(request_id="b", prompt_tokens=200, slo=Slo(100.0, 8.0))
    inst = make_instance(running=(a, b))
    tight = make_request(request_id="x", slo=Slo(15.0, 10.0))
    hfx = make_policy("hfx", CFG)
    result = hfx.schedule([tight], cluster(inst), 0.0)
    assert not any(d.verdict == Verdict.ADMIT for d in result.decisions)
    loose = make_request(request_id="y", slo=Slo(30.0, 10.0))
    result = make_policy("hfx", CFG).schedule([loose], cluster(inst), 0.0)
    (d,) = result.decisions
    assert d.verdict == Verdict.ADMIT and d.instance_id == "i0"
    assert d.predicted_ttft_ms == pytest.approx(22.98)
    assert "predicted TTFT 23" in d.reason and "budget 45" in d.reason and "i0" in d.reason


def test_the_step_in_flight_is_charged_on_a_busy_instance_only():
    """Idle instance: x (L=100) gets its first token after prefill alone, 1 step * 2 ms + 0.01*100
    = 3 ms. The same request with 20 ms of TTFT on i0 above (22.98 ms with the step in flight,
    18.98 without) fits only when the wait for the step in flight is ignored."""
    idle = make_instance(instance_id="idle")
    (d,) = make_policy("hfx", CFG).schedule([make_request(request_id="x")], cluster(idle), 0.0).decisions
    assert d.predicted_ttft_ms == pytest.approx(3.0)
    a = make_request(request_id="a", prompt_tokens=100, slo=Slo(100.0, 10.0))
    b = make_request(request_id="b", prompt_tokens=200, slo=Slo(100.0, 8.0))
    busy = make_instance(running=(a, b))
    x = make_request(request_id="x", slo=Slo(20.0, 10.0))
    assert not any(d.verdict == Verdict.ADMIT for d in make_policy("hfx", CFG).schedule([x], cluster(busy), 0.0).decisions)
    ignore = PolicyConfig(**{**CFG.__dict__, "inflight_step_share": 0.0})
    (d,) = make_policy("hfx", ignore).schedule([x], cluster(busy), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(19.0)


def test_fit_protects_running_tpot():
    """Running r has TPOT 3.6 ms and O=10 at steady step 2.5 ms: bank = 9*(3.6-2.5) = 9.9 ms.
    A new prompt of 100 tokens makes the step 3.0 ms: bank after = 9.9 - 9*0.5 - 0.01*100 = 4.4 >= 0,
    but 3.0 ms <= 3.6 holds too, so it fits; a 600-token prompt costs 6 ms of interference: no fit."""
    r = make_request(request_id="r", slo=Slo(1000.0, 3.6))
    inst = make_instance(running=(r,), placed_s=-10.0)
    small = make_request(request_id="s", prompt_tokens=100, slo=Slo(1000.0, 50.0))
    big = make_request(request_id="b", prompt_tokens=600, max_tokens=10, slo=Slo(1000.0, 50.0))
    assert [d.request_id for d in make_policy("hfx", CFG).schedule([small], cluster(inst), 0.0).decisions] == ["s"]
    assert make_policy("hfx", CFG).schedule([big], cluster(inst), 0.0).decisions == ()


def test_kv_watermark_blocks_placement():
    inst = make_instance(kv_capacity_tokens=1000)
    fits = make_request(request_id="f", prompt_tokens=900, max_tokens=40, slo=Slo(1000.0, 50.0))
    too_big = make_request(request_id="t", prompt_tokens=950, max_tokens=40, slo=Slo(1000.0, 50.0))
    assert len(make_policy("hfx", CFG).schedule([fits], cluster(inst), 0.0).decisions) == 1
    # 950 + 10 estimated output > 1000 * 0.95 watermark
    assert make_policy("hfx", CFG).schedule([too_big], cluster(inst), 0.0).decisions == ()


def test_ranking_least_slack_first_with_priority_credit_and_fcfs_tiebreak():
    cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, max_requests_per_instance=1)
    late = make_request(request_id="late", arrival_s=0.0, slo=Slo(500.0, 10.0))
    urgent = make_request(request_id="urgent", arrival_s=0.0, slo=Slo(100.0, 10.0))
    assert make_policy("hfx", cfg).schedule([late, urgent], cluster(make_instance()), 0.0).decisions[0].request_id == "urgent"
    # priority 2 earns 500 ms of credit: it now outranks the 100 ms request.
    vip = make_request(request_id="vip", priority=2, slo=Slo(500.0, 10.0))
    assert make_policy("hfx", cfg).schedule([urgent, vip], cluster(make_instance()), 0.0).decisions[0].request_id == "vip"
    # equal slack: first come first served.
    first, second = make_request(request_id="first"), make_request(request_id="second")
    assert make_policy("hfx", cfg).schedule([first, second], cluster(make_instance()), 0.0).decisions[0].request_id == "first"


def test_hopeless_request_rejected_with_reason_and_retry_after():
    cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, reject_classes=("chat",))
    late = make_request(request_id="late", arrival_s=0.0, slo=Slo(50.0, 10.0))
    (d,) = make_policy("hfx", cfg).schedule([late], cluster(make_instance()), 1.0).decisions
    assert d.verdict == Verdict.REJECT and d.retry_after_ms >= cfg.retry_after_ms
    assert "cannot meet TTFT 50 ms" in d.reason and "slack" in d.reason


def test_hopeless_request_demoted_to_best_effort_then_placed_on_spare_room():
    """Demotion at t=1.0 is itself a sign of pressure, but its own: nobody else's SLO is at stake,
    so it takes the spare room at once (issue 9, eighth session; it used to wait out the 500 ms
    window until t=1.5). Behind another request's pressure it waits out the other's window."""
    late = make_request(request_id="late", arrival_s=0.0, slo=Slo(50.0, 10.0), task_class="batch")
    hfx = make_policy("hfx", CFG)
    (d,) = hfx.schedule([late], cluster(make_instance()), 1.0).decisions
    assert d.verdict == Verdict.BEST_EFFORT and d.instance_id == "i0" and "best effort" in d.reason
    other = make_request(request_id="other", arrival_s=0.0, slo=Slo(50.0, 10.0), task_class="batch")
    hfx = make_policy("hfx", CFG)
    (d,) = hfx.schedule([other], cluster(make_instance()), 0.9).decisions   # its own: at once
    assert d.request_id == "other" and d.verdict == Verdict.BEST_EFFORT
    assert hfx.schedule([late], cluster(make_instance()), 1.0).decisions == ()   # other's, until 1.4
    (d,) = hfx.schedule([late], cluster(make_instance()), 1.41).decisions
    assert d.request_id == "late" and d.verdict == Verdict.BEST_EFFORT


def test_best_effort_rejected_after_wait_limit():
    """Demoted at t=1.0 and never given room (the instance is full): at t=2.0 it has waited
    1000 ms = best_effort_max_wait_ms, so it is rejected with retry-after and the numbers."""
    cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, max_requests_per_instance=0,
                       best_effort_max_wait_ms=1000.0)
    late = make_request(request_id="late", arrival_s=0.0, slo=Slo(50.0, 10.0), task_class="batch")
    hfx = make_policy("hfx", cfg)
    assert hfx.schedule([late], cluster(make_instance()), 1.0).decisions == ()
    assert hfx.schedule([late], cluster(make_instance()), 1.99).decisions == ()
    (d,) = hfx.schedule([late], cluster(make_instance()), 2.0).decisions
    assert d.verdict == Verdict.REJECT and d.retry_after_ms == cfg.retry_after_ms
    assert "best effort for 1000 ms > limit 1000 ms" in d.reason
    # 0 disables the limit: it waits on.
    hfx = make_policy("hfx", PolicyConfig(default_latency_model=MODEL, chunk_tokens=100,
                                          max_requests_per_instance=0, best_effort_max_wait_ms=0.0))
    hfx.schedule([late], cluster(make_instance()), 1.0)
    assert hfx.schedule([late], cluster(make_instance()), 60.0).decisions == ()


def test_loose_requests_deferred_while_slo_requests_are_turned_away():
    """Running r (TPOT 3.6 ms, O=10, step 2.5 ms) banks 9*(3.6-2.5) = 9.9 ms. A 600-token prompt
    costs it 0.01*600 = 6 ms plus 9*0.5 = 4.5 ms of slower steps = 10.5 > 9.9, so "tight" (TTFT
    100 ms; unloaded prefill 6 steps * 2 + 0.01*600 = 18 ms; slack 82 ms < defer_slack_ms 200, so
    it is tried) does not fit -> pressure for 500 ms. "loose" (L=100, TTFT 5000 ms; unloaded prefill
    2 + 1 = 3 ms; slack 4997 ms > 200) would fit (9.9 - 4.5 - 1 = 4.4 >= 0) but is deferred while
    the pressure lasts; at t=0.6 the window (0.5 s) is over and it is admitted."""
    r = make_request(request_id="r", slo=Slo(1000.0, 3.6))
    inst = make_instance(running=(r,), placed_s=-10.0)
    tight = make_request(request_id="tight", prompt_tokens=600, slo=Slo(100.0, 50.0))
    loose = make_request(request_id="loose", prompt_tokens=100, slo=Slo(5000.0, 50.0))
    hfx = make_policy("hfx", CFG)
    assert hfx.schedule([tight, loose], cluster(inst), 0.0).decisions == ()
    assert hfx.deferrals == 1
    (d,) = hfx.schedule([loose], cluster(inst), 0.6).decisions
    assert d.request_id == "loose" and d.verdict == Verdict.ADMIT
    # Without deferral the loose one takes the room at once.
    cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, defer_slack_ms=0.0)
    (d,) = make_policy("hfx", cfg).schedule([tight, loose], cluster(inst), 0.0).decisions
    assert d.request_id == "loose"


def test_a_loose_request_that_fits_nowhere_yet_defers_nobody():
    """Issue 17, fourth pass: pressure comes from a request that cannot wait, or a queue. Two
    instances each running r. "big" (L=600, like "tight" above it does not fit beside r: 10.5 >
    9.9 ms) has a 5-s TTFT (slack ~4982 ms > defer_slack_ms): it can wait its turn, so with two
    queued on two instances its failed fit defers nobody and "loose" (it fits) is admitted in the
    same pass. Before, one failed fit of anyone deferred every loose request for 500 ms, at a
    load where everyone fits. "tight" (slack 82 ms) failing still does, and so does big's once
    more are queued than there are instances (three)."""
    r = make_request(request_id="r", slo=Slo(1000.0, 3.6))
    two = cluster(make_instance("i0", running=(r,), placed_s=-10.0),
                  make_instance("i1", running=(replace(r, request_id="r1"),), placed_s=-10.0))
    big = make_request(request_id="big", prompt_tokens=600, slo=Slo(5000.0, 50.0))
    loose = make_request(request_id="loose", prompt_tokens=100, slo=Slo(5010.0, 50.0))
    hfx = make_policy("hfx", CFG)
    (d,) = hfx.schedule([big, loose], two, 0.0).decisions
    assert d.request_id == "loose" and d.verdict == Verdict.ADMIT and hfx.deferrals == 0
    tight = make_request(request_id="tight", prompt_tokens=600, slo=Slo(100.0, 50.0))
    hfx = make_policy("hfx", CFG)
    assert hfx.schedule([tight, loose], two, 0.0).decisions == () and hfx.deferrals == 1
    other = make_request(request_id="other", prompt_tokens=100, slo=Slo(5020.0, 50.0))
    hfx = make_policy("hfx", CFG)
    assert hfx.schedule([big, loose, other], two, 0.0).decisions == () and hfx.deferrals == 1


def test_placement_best_fit_consolidates_spread_balances():
    busy = make_instance("busy", running=(make_request(request_id="x", slo=Slo(1000.0, 50.0)),), placed_s=-10.0)
    idle = make_instance("idle")
    req = make_request(request_id="n", slo=Slo(1000.0, 50.0))
    assert PolicyConfig().placement == "spread"
    for placement, expect in (("best_fit", "busy"), ("spread", "idle")):
        cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, placement=placement, affinity_tolerance=1.0)
        (d,) = make_policy("hfx", cfg).schedule([req], cluster(busy, idle), 0.0).decisions
        assert d.instance_id == expect, placement
        assert f"{placement} -> {expect}" in d.reason


def test_spread_counts_queued_prefill_as_load():
    """"prefilling" runs one request whose 2,000-token prompt was placed just now (2000/99 = 20
    steps of prefill queued); "decoding" runs two short ones placed long ago (nothing queued).
    Counting decoding sequences alone, the newcomer went where the long prompt was still being
    prefilled, and ran its own prefill in that request's first decode steps (family workload
    s1-w034: 3-6-token outputs with a 14-ms TPOT missed it so). Now it goes to "decoding"."""
    loose = Slo(5000.0, 1000.0)
    prefilling = make_instance("prefilling", running=(make_request(request_id="long", prompt_tokens=2000, slo=loose),))
    decoding = make_instance("decoding", running=(make_request(request_id="a", slo=loose),
                                                  make_request(request_id="b", slo=loose)), placed_s=-10.0)
    cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, affinity_tolerance=1.0)
    req = make_request(request_id="n", prompt_tokens=1000, slo=loose)
    (d,) = make_policy("hfx", cfg).schedule([req], cluster(prefilling, decoding), 0.0).decisions
    assert d.instance_id == "decoding" and "spread -> decoding (2 fit)" in d.reason


def test_slo_affinity_groups_requests_by_tpot():
    """tolerance 1.25 (ln 1.25 = 0.223): "tight" runs requests with TPOT 10 ms, "loose" with 40 ms.
    A TPOT-10 request: tight |ln(10/10)| = 0 -> band 0; empty -> band 1; loose |ln 4|/0.223 = 6.2
    -> band 7. So it goes to "tight" even though spread alone would pick the empty instance; a
    TPOT-40 request goes to "loose", and a TPOT-20 one (ln 2 / 0.223 = 3.1 from both) to "empty"."""
    tight = make_instance("tight", running=(make_request(request_id="a", slo=Slo(1000.0, 10.0)),), placed_s=-10.0)
    loose = make_instance("loose", running=(make_request(request_id="b", slo=Slo(1000.0, 40.0)),), placed_s=-10.0)
    empty = make_instance("empty")
    for tpot, expect in ((10.0, "tight"), (40.0, "loose"), (20.0, "empty")):
        req = make_request(request_id=f"n{tpot:.0f}", slo=Slo(1000.0, tpot))
        cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, affinity_tolerance=1.25)
        (d,) = make_policy("hfx", cfg).schedule([req], cluster(tight, loose, empty), 0.0).decisions
        assert d.instance_id == expect, tpot
    # Off by default: plain spread picks the empty instance.
    req = make_request(request_id="n", slo=Slo(1000.0, 10.0))
    (d,) = make_policy("hfx", CFG).schedule([req], cluster(tight, loose, empty), 0.0).decisions
    assert d.instance_id == "empty"


def test_preempts_most_slack_on_negative_budget():
    # Steady step with 3 running = 3.5 ms > 3 ms TPOT of "tight": its bank is 9*(3-3.5) = -4.5 ms.
    tight = make_request(request_id="tight", slo=Slo(1000.0, 3.0))
    loose = make_request(request_id="loose", slo=Slo(1000.0, 100.0))
    low = make_request(request_id="low", priority=0, slo=Slo(1000.0, 100.0))
    inst = make_instance(running=(tight, loose, low), placed_s=-10.0)
    result = make_policy("hfx", CFG).schedule([], cluster(inst), 0.0)
    (p,) = result.preemptions
    assert p.request_id == "low" and p.instance_id == "i0" and "budget -4" in p.reason


def test_output_estimate_learned_online():
    hfx = make_policy("hfx", CFG)
    observe_completion(hfx, "chat", 40)
    assert hfx.estimator.estimate(make_request(max_tokens=100)) == 40
    assert hfx.estimator.estimate(make_request(max_tokens=20)) == 20   # capped by max_tokens


def test_incremental_queue_resyncs_on_unexpected_removal():
    hfx = make_policy("hfx", PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, max_requests_per_instance=0))
    reqs = [make_request(request_id=f"q{i}") for i in range(5)]
    hfx.schedule(reqs, cluster(make_instance()), 0.0)
    hfx.schedule(reqs + [make_request(request_id="q5")], cluster(make_instance()), 0.0)
    assert hfx.queue.resyncs == 0 and len(hfx.queue.known) == 6
    hfx.schedule(reqs[1:], cluster(make_instance()), 0.0)   # q0 aborted, q5 gone: counts differ
    assert hfx.queue.resyncs == 1 and set(hfx.queue.known) == {"q1", "q2", "q3", "q4"}


@pytest.mark.parametrize("name", ["fcfs", "least-load", "edf", "headroom", "hfx"])
def test_every_policy_selectable_and_places(name):
    assert name in policy_names()
    reqs = [make_request(request_id=f"r{i}", slo=Slo(1000.0, 50.0), arrival_s=i * 0.001) for i in range(4)]
    result = make_policy(name, CFG).schedule(reqs, cluster(make_instance("a"), make_instance("b")), 0.01)
    assert sorted(d.request_id for d in result.decisions) == ["r0", "r1", "r2", "r3"]
    assert all(d.reason and d.instance_id in ("a", "b") for d in result.decisions)


def test_edf_orders_by_deadline_and_headroom_picks_most_headroom():
    cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, max_requests_per_instance=1)
    late, soon = make_request(request_id="late", slo=Slo(900.0, 50.0)), make_request(request_id="soon", slo=Slo(90.0, 50.0))
    (d,) = make_policy("edf", cfg).schedule([late, soon], cluster(make_instance()), 0.0).decisions
    assert d.request_id == "soon"
    busy = make_instance("busy", running=(make_request(request_id="x", prompt_tokens=2000),))
    (d,) = make_policy("headroom", CFG).schedule([make_request(request_id="n")], cluster(busy, make_instance("idle")), 0.0).decisions
    assert d.instance_id == "idle" and "headroom" in d.reason


def test_unknown_policy_and_bad_config_rejected():
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        make_policy("nope")
    with pytest.raises(ValueError, match="placement"):
        make_policy("hfx", PolicyConfig(placement="random"))
    assert math.isinf(summarise(make_instance(), CFG, OutputLengthEstimator(10)).bank_ms)


def test_preempted_request_resumes_and_is_never_rejected():
    """A request preempted after streaming tokens comes back with resumed_tokens > 0. Even in a
    reject class and past its deadline it is not turned away: with no room it waits at the head of
    the ranking; with room it is placed best effort (its SLO is out of reach)."""
    cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, reject_classes=("chat",),
                       max_requests_per_instance=1)
    fresh = make_request(request_id="fresh", arrival_s=0.0, slo=Slo(50.0, 10.0))
    resumed = make_request(request_id="back", arrival_s=0.0, slo=Slo(50.0, 10.0), resumed_tokens=4,
                           prompt_tokens=104)
    full = make_instance(running=(make_request(request_id="x"),), placed_s=-10.0)
    hfx = make_policy("hfx", cfg)
    # At t = 1 s both deadlines (50 ms) have passed and the only instance is full.
    result = hfx.schedule([fresh, resumed], cluster(full), 1.0)
    assert [(d.request_id, d.verdict) for d in result.decisions] == [("fresh", Verdict.REJECT)]
    # Room appears: the resumed one is placed, best effort; nothing expires it meanwhile.
    (d,) = hfx.schedule([resumed], cluster(make_instance()), 5.0).decisions
    assert d.request_id == "back" and d.verdict == Verdict.BEST_EFFORT and d.instance_id == "i0"


def test_resumed_best_effort_request_is_not_expired():
    """Best effort that waited past best_effort_max_wait_ms is rejected, unless it is a resumed
    (preempted) request: that one goes back to the ranking. Its TPOT (1 ms) is below one unloaded
    step (2.5 ms), which would make a new request best effort from the start."""
    cfg = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, max_requests_per_instance=1,
                       best_effort_max_wait_ms=100.0)
    new = make_request(request_id="new", slo=Slo(50.0, 1.0))
    back = make_request(request_id="back", slo=Slo(50.0, 1.0), resumed_tokens=3, prompt_tokens=103)
    full = make_instance(running=(make_request(request_id="x"),), placed_s=-10.0)
    hfx = make_policy("hfx", cfg)
    result = hfx.schedule([new, back], cluster(full), 1.0)
    assert [(d.request_id, d.verdict) for d in result.decisions] == [("new", Verdict.REJECT)]
    assert not hfx.schedule([back], cluster(full), 2.0).decisions
    (d,) = hfx.schedule([back], cluster(make_instance()), 3.0).decisions
    assert d.request_id == "back" and d.verdict == Verdict.BEST_EFFORT


def test_queued_prefill_counts_against_a_new_requests_own_tpot():
    """Model step_ms = 2 + 0.01*p + 0.5*n. "busy" has 2000 prompt tokens queued for prefill (placed
    at t=0, nothing done yet): B = 2000, c1*B = 20 ms. A new request with O = 10 and TPOT 4 ms:
    s' = 2 + 0.5*2 = 3 ms on busy, so (O-1)*(TPOT-s') = 9 ms < 20 ms: it does not fit there (its
    prefill may jump the queue, and the queued chunks then slow its decode); "idle" takes it.
    With backlog_interferes off (FIFO prefill) busy fits as well, and spread picks by load."""
    queued = make_request(request_id="long", prompt_tokens=2000, max_tokens=10, slo=Slo(10_000.0, 1000.0))
    busy, idle = make_instance("busy", running=(queued,)), make_instance("idle", running=(make_request(
        request_id="short", prompt_tokens=1, slo=Slo(10_000.0, 1000.0)),), placed_s=-10.0)
    req = make_request(request_id="n", prompt_tokens=10, slo=Slo(10_000.0, 4.0))
    (d,) = make_policy("hfx", CFG).schedule([req], cluster(busy, idle), 0.0).decisions
    assert d.instance_id == "idle" and "(1 fit)" in d.reason
    fifo = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, backlog_interferes=False)
    (d,) = make_policy("hfx", fifo).schedule([req], cluster(busy, idle), 0.0).decisions
    assert "(2 fit)" in d.reason


def test_an_idle_instance_budget_is_not_carried_over_from_an_earlier_pass():
    """An idle instance's running set is the empty tuple, one object in every snapshot, so the
    budget cache hits on it pass after pass. A pass that places mutates its budget (FitTable.place):
    if that mutated budget were the cached one, every later pass would see the requests placed on
    the idle instance earlier as if they still ran, and its bank would shrink until nothing fit
    (seen live: 165 of 200 short requests refused on two idle engines). Each pass must start from
    the instance as the snapshot shows it."""
    hfx = make_policy("hfx", CFG)
    fresh = summarise(make_instance(), CFG, OutputLengthEstimator(CFG.prior_output_tokens))
    for k in range(50):  # each request places on the idle instance, finishes before the next pass
        (d,) = hfx.schedule([make_request(request_id=f"r{k}", arrival_s=float(k))], cluster(make_instance()),
                            float(k)).decisions
        assert d.verdict == Verdict.ADMIT, (k, d.reason)
        assert hfx._budget(make_instance(), 0.0).bank_ms == fresh.bank_ms == math.inf


def test_a_tpot_one_instance_cannot_meet_is_not_best_effort_when_another_can():
    """MODEL's decode step is 2.5 ms; "slow" runs 4x that (contention, calibrated online). A new
    request with TPOT 5 ms is below one step on "slow" but not on "fast": it is an SLO request
    placed on "fast", whichever instance the snapshot lists first (issue 9, seventh session)."""
    slow_model = replace(MODEL, c0_ms=4 * MODEL.c0_ms, c2_ms_per_decode_seq=4 * MODEL.c2_ms_per_decode_seq)
    slow, fast = make_instance("slow", latency_model=slow_model), make_instance("fast")
    req = make_request(request_id="tight", prompt_tokens=10, slo=Slo(1000.0, 5.0))
    for order in ((slow, fast), (fast, slow)):
        (d,) = make_policy("hfx", CFG).schedule([req], cluster(*order), 0.0).decisions
        assert (d.verdict, d.instance_id) == (Verdict.ADMIT, "fast")
