"""P/D scheduling, pure core: role filtering, whole vs split with reasons, stage placement,
budgets on both legs, the P/D baselines. Numbers worked by hand from the model below."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.domain import (ClusterSnapshot, LatencyModel, Leg, Role, RunningRequest, Slo, TicketBound,
                                    Verdict)
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.base import candidates, serving_gap
from services.scheduler.policy.budget import summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from tests.unit.helpers_sched import make_instance, make_request

# step_ms = 2 + 0.01*prefill + 0.5*decode_seqs (+ 0*kv); KV transfer 0.002 ms per token.
PD_MODEL = LatencyModel(2.0, 0.01, 0.5, 0.0, 0.002)
CFG = PolicyConfig(default_latency_model=PD_MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0)


def node(instance_id: str, role: Role, legs: tuple = (), **overrides):
    """An instance of `role`; legs: (spec, leg role) pairs running there."""
    inst = make_instance(instance_id, role=role, **{"latency_model": PD_MODEL, **overrides})
    return replace(inst, running=tuple(RunningRequest(spec, 0.0, leg) for spec, leg in legs))


def cluster(*instances):
    return ClusterSnapshot(tuple(instances))


def only(result):
    (d,) = result.decisions
    return d


def long_request(**overrides):
    return make_request(**{"request_id": "long", "prompt_tokens": 1000, "slo": Slo(1000.0, 10.0), **overrides})


def test_candidates_filter_by_role():
    c = cluster(node("c0", Role.COLOCATED), node("p0", Role.PREFILL), node("d0", Role.DECODE))
    assert [i.instance_id for i in candidates(c, CFG)] == ["c0"]
    assert [i.instance_id for i in candidates(c, CFG, Role.PREFILL)] == ["p0"]
    assert [i.instance_id for i in candidates(c, CFG, Role.DECODE)] == ["d0"]


def test_colocated_baselines_never_place_whole_requests_on_p_or_d():
    c = cluster(node("p0", Role.PREFILL), node("c0", Role.COLOCATED))
    for name in ("edf", "headroom"):
        d = only(make_policy(name, CFG).schedule([make_request()], c, 0.0))
        assert d.instance_id == "c0" and d.legs == ()


def test_long_prompt_is_split_with_transfer_charged_to_ttft():
    """L=1000, O=10. Prefill on idle D: 10 chunks * 2 ms + 0.01*1000 = 30 ms > transfer 0.002*1000
    = 2 ms: split. Predicted TTFT = P prefill 30 + transfer 2 + D's first step (recompute of the
    last prompt token: 2 + 0.01*1 = 2.01) = 34.01 ms."""
    d = only(make_policy("hfx", CFG).schedule([long_request()], cluster(node("p0", Role.PREFILL),
                                                                         node("d0", Role.DECODE)), 0.0))
    assert d.verdict is Verdict.ADMIT
    assert d.legs == (Leg(Role.PREFILL, "p0"), Leg(Role.DECODE, "d0")) and d.instance_id == "p0"
    assert d.predicted_ttft_ms == pytest.approx(34.01)
    assert "P/D: prefill 30.0 ms > KV transfer 2.0 ms" in d.reason
    assert "prefill -> p0" in d.reason and "decode -> d0" in d.reason


def test_ttft_deadline_counts_the_transfer():
    """Same request with TTFT 33 ms: 30 ms of prefill alone would fit, with the transfer and D's
    first step (34.01 ms) the split does not. Idle d0 prefills it itself (30 ms) instead; without
    local prefill it is not admitted."""
    req = long_request(slo=Slo(33.0, 10.0))
    pd = cluster(node("p0", Role.PREFILL), node("d0", Role.DECODE))
    d = only(make_policy("hfx", CFG).schedule([req], pd, 0.0))
    assert d.legs == () and d.instance_id == "d0" and d.predicted_ttft_ms == pytest.approx(30.0)
    assert "prefill on D: prefill 30.0 ms > KV transfer 2.0 ms; P/D did not fit" in d.reason
    result = make_policy("hfx", replace(CFG, pd_local_prefill=False)).schedule([req], pd, 0.0)
    assert not any(x.verdict is Verdict.ADMIT for x in result.decisions)


def test_short_prompt_is_prefilled_on_d_itself():
    d = only(make_policy("hfx", CFG).schedule([make_request(prompt_tokens=50)],
                                              cluster(node("p0", Role.PREFILL), node("d0", Role.DECODE)), 0.0))
    assert d.legs == () and d.instance_id == "d0"
    assert "prefill on D: short prompt (50 <= 64 tokens)" in d.reason


def test_short_prompt_goes_to_a_colocated_instance_first():
    c = cluster(node("c0", Role.COLOCATED), node("p0", Role.PREFILL), node("d0", Role.DECODE))
    d = only(make_policy("hfx", CFG).schedule([make_request(prompt_tokens=50)], c, 0.0))
    assert d.legs == () and d.instance_id == "c0" and "colocated: short prompt" in d.reason


def test_prompt_cheaper_to_prefill_than_to_move_stays_whole():
    """Transfer 1 ms/token: L=200 costs 200 ms to move, 2 chunks * 2 + 0.01*200 = 6 ms to prefill."""
    slow_link = replace(PD_MODEL, kv_transfer_ms_per_token=1.0)
    c = cluster(node("p0", Role.PREFILL, latency_model=slow_link), node("d0", Role.DECODE))
    d = only(make_policy("hfx", CFG).schedule([make_request(prompt_tokens=200, slo=Slo(1000.0, 10.0))], c, 0.0))
    assert d.legs == () and d.instance_id == "d0"
    assert "prefill 6.0 ms <= KV transfer 200.0 ms" in d.reason


def test_without_local_prefill_even_a_short_prompt_is_split():
    cfg = replace(CFG, pd_local_prefill=False)
    d = only(make_policy("hfx", cfg).schedule([make_request(prompt_tokens=50)],
                                              cluster(node("p0", Role.PREFILL), node("d0", Role.DECODE)), 0.0))
    assert d.legs == (Leg(Role.PREFILL, "p0"), Leg(Role.DECODE, "d0"))


def test_split_that_does_not_fit_falls_back_to_colocated_with_the_reason():
    """D's KV (500 tokens, 5% watermark) cannot hold L+O = 1010: the split fails, colocated wins."""
    c = cluster(node("c0", Role.COLOCATED), node("p0", Role.PREFILL), node("d0", Role.DECODE, kv_capacity_tokens=500))
    d = only(make_policy("hfx", CFG).schedule([long_request()], c, 0.0))
    assert d.legs == () and d.instance_id == "c0"
    assert "colocated: prefill 30.0 ms > KV transfer 2.0 ms; P/D did not fit" in d.reason


def test_decode_leg_goes_to_the_d_with_most_tpot_headroom():
    """d0 runs 3 decode legs (step with one more: 2 + 0.5*4 = 4 ms), d1 runs 1 (3 ms): d1."""
    others = [make_request(request_id=f"o{i}", slo=Slo(1000.0, 50.0)) for i in range(3)]
    c = cluster(node("p0", Role.PREFILL),
                node("d0", Role.DECODE, legs=tuple((s, Role.DECODE) for s in others)),
                node("d1", Role.DECODE, legs=((others[0], Role.DECODE),)))
    d = only(make_policy("hfx", CFG).schedule([long_request()], c, 0.0))
    assert d.legs[1] == Leg(Role.DECODE, "d1") and "step 3.0 of TPOT 10 ms" in d.reason


def test_decode_leg_respects_tpot_and_kv_room():
    """TPOT 3.5 ms: d0 (one running: step 2 + 0.5*2 = 3 ms) fits, d1 (three: 4 ms) does not. Then
    with d0's KV too small for L+O, nothing fits."""
    others = [make_request(request_id=f"o{i}", slo=Slo(1000.0, 50.0)) for i in range(3)]
    req = long_request(slo=Slo(1000.0, 3.5))
    d0 = node("d0", Role.DECODE, legs=((others[0], Role.DECODE),))
    d1 = node("d1", Role.DECODE, legs=tuple((s, Role.DECODE) for s in others))
    d = only(make_policy("hfx", CFG).schedule([req], cluster(node("p0", Role.PREFILL), d1, d0), 0.0))
    assert d.legs[1].instance_id == "d0"
    small = replace(d0, load=replace(d0.load, kv_capacity_tokens=1100))   # 1045 usable < 110 held + 1010
    result = make_policy("hfx", CFG).schedule([req], cluster(node("p0", Role.PREFILL), d1, small), 0.0)
    assert not any(x.verdict is Verdict.ADMIT for x in result.decisions)


def test_prefill_leg_goes_to_the_p_with_most_ttft_slack():
    """p0 has 2000 prompt tokens queued (a prefill leg): its TTFT is far later than idle p1's."""
    busy = make_request(request_id="b", prompt_tokens=2000)
    c = cluster(node("p0", Role.PREFILL, legs=((busy, Role.PREFILL),)), node("p1", Role.PREFILL),
                node("d0", Role.DECODE))
    d = only(make_policy("hfx", CFG).schedule([long_request()], c, 0.0))
    assert d.legs[0] == Leg(Role.PREFILL, "p1") and d.instance_id == "p1"


def test_budgets_count_each_leg_where_it_runs():
    """A decode leg (L=1000, O=10, TPOT 10) on D: one decoding sequence, bank (10-1)*(10-2.5) =
    67.5 ms, KV L+O, no prefill queued. A prefill leg on P: prefill queued, KV L+1, no decode,
    nothing to protect (bank inf)."""
    leg = long_request()
    est = OutputLengthEstimator(10)
    on_d = summarise(node("d0", Role.DECODE, legs=((leg, Role.DECODE),)), CFG, est)
    assert on_d.decode_seqs == 1 and on_d.bank_ms == pytest.approx(67.5)
    assert on_d.kv_peak_tokens == 1010 and on_d.backlog_tokens(0.0) == 0
    on_p = summarise(node("p0", Role.PREFILL, legs=((leg, Role.PREFILL),)), CFG, est)
    assert on_p.decode_seqs == 0 and on_p.bank_ms == float("inf") and on_p.victim_id == ""
    assert on_p.kv_peak_tokens == 1001 and on_p.backlog_tokens(0.0) == pytest.approx(1000)


def test_a_pass_counts_the_legs_it_placed():
    """Two long requests in one pass, one P and one D. a: 34.01 ms as above. b's prefill queues
    behind a's 1000 tokens on p0: wait for the step in flight 2 + 0.01*100 = 3, then 20 chunks * 2 +
    0.01*2000 = 60; transfer 2; on d0 (a's decode leg now there: step 2.5 ms) the step in flight
    2.5, then its first step 2.5 + 0.01 = 2.51: 3 + 60 + 2 + 2.5 + 2.51 = 70.01 ms."""
    reqs = [long_request(request_id="a"), long_request(request_id="b", arrival_s=0.001)]
    result = make_policy("hfx", CFG).schedule(reqs, cluster(node("p0", Role.PREFILL), node("d0", Role.DECODE)), 0.0)
    a, b = result.decisions
    assert a.legs and b.legs
    assert a.predicted_ttft_ms == pytest.approx(34.01) and b.predicted_ttft_ms == pytest.approx(70.01)


def test_in_flight_protection_preempts_decode_legs_on_d_only():
    """Two decode legs with TPOT 2.6 ms on d0: step 2 + 0.5*2 = 3 ms > 2.6, bank < 0: preempt one.
    The same two as prefill legs on p0: nothing decodes there, nothing to protect."""
    legs = [make_request(request_id=f"t{i}", slo=Slo(1000.0, 2.6)) for i in range(2)]
    c = cluster(node("p0", Role.PREFILL, legs=tuple((s, Role.PREFILL) for s in legs)),
                node("d0", Role.DECODE, legs=tuple((s, Role.DECODE) for s in legs)))
    result = make_policy("hfx", CFG).schedule([], c, 0.0)
    assert [p.instance_id for p in result.preemptions] == ["d0"]
    assert result.preemptions[0].request_id in {"t0", "t1"}


def test_round_robin_baseline_splits_round_robin_per_stage():
    c = cluster(node("p0", Role.PREFILL), node("p1", Role.PREFILL),
                node("d0", Role.DECODE), node("d1", Role.DECODE), node("d2", Role.DECODE))
    result = make_policy("fcfs", CFG).schedule([make_request(request_id=f"r{i}") for i in range(6)], c, 0.0)
    assert [d.legs[0].instance_id for d in result.decisions] == ["p0", "p1"] * 3
    assert [d.legs[1].instance_id for d in result.decisions] == ["d0", "d1", "d2"] * 2
    assert all(d.instance_id == d.legs[0].instance_id and "P/D round-robin" in d.reason for d in result.decisions)


def test_least_load_baseline_picks_the_least_loaded_on_each_stage():
    busy = make_request(request_id="busy")
    c = cluster(node("p0", Role.PREFILL, legs=((busy, Role.PREFILL),)), node("p1", Role.PREFILL),
                node("d0", Role.DECODE), node("d1", Role.DECODE, legs=((busy, Role.DECODE),)))
    d = only(make_policy("least-load", CFG).schedule([make_request()], c, 0.0))
    assert d.legs == (Leg(Role.PREFILL, "p1"), Leg(Role.DECODE, "d0")) and "P/D least load" in d.reason


def test_serving_gap_names_what_is_missing():
    decode_only = cluster(node("d0", Role.DECODE), node("d1", Role.DECODE))
    assert serving_gap(decode_only, CFG) == ""     # D may prefill short prompts itself
    gap = serving_gap(decode_only, replace(CFG, pd_local_prefill=False))
    assert gap.startswith("no prefill capacity") and "d0, d1" in gap
    assert serving_gap(cluster(node("p0", Role.PREFILL)), CFG).startswith("no decode capacity")
    assert serving_gap(cluster(node("c0", Role.COLOCATED), node("d0", Role.DECODE)),
                       replace(CFG, pd_local_prefill=False)) == ""


def test_tickets_only_for_requests_the_policy_would_run_whole():
    """Tickets (standing placements) start a request whole on a colocated instance: a bound of
    long prompts, which HFX would split over P and D, gets none; a bound of short ones does."""
    c = cluster(node("c0", Role.COLOCATED), node("p0", Role.PREFILL), node("d0", Role.DECODE))
    hfx = make_policy("hfx", CFG)
    assert hfx.tickets(c, [TicketBound(1000, 10, 1000.0, 10.0)], 0.0) == []
    (grant,) = hfx.tickets(c, [TicketBound(50, 10, 1000.0, 10.0)], 0.0)
    assert grant.instance_id == "c0"


def test_prefill_queue_on_p_starts_no_earlier_than_the_last_leg_that_ended():
    """A 1000-token prefill leg placed at t=0 on p0 waited behind a leg that ended at t=0.5 s (and
    left the running set). P prefills 100 tokens per 2 + 0.01*100 = 3 ms step: 33.3 tokens/ms. At
    t=0.51 s 1000 - 333.3 = 666.7 tokens remain; without the end time the queue would look
    drained since t=0.03 s."""
    leg = long_request()
    p0 = node("p0", Role.PREFILL, legs=((leg, Role.PREFILL),))
    est = OutputLengthEstimator(10)
    assert summarise(p0, CFG, est).backlog_tokens(0.51) == 0
    waited = replace(p0, prefill_done_s=0.5)
    assert summarise(waited, CFG, est).backlog_tokens(0.51) == pytest.approx(1000 - 100 / 3 * 10)


def test_split_requests_use_only_linked_pairs():
    """P-D links (issue 11): with a link table, a split request goes over a linked pair only, for
    HFX and the stage baselines alike; with none linked it is not split at all."""
    nodes = (node("p0", Role.PREFILL), node("p1", Role.PREFILL), node("d0", Role.DECODE), node("d1", Role.DECODE))
    linked = ClusterSnapshot(nodes, links=frozenset({("p1", "d1")}))
    for name in ("hfx", "fcfs", "least-load"):
        d = only(make_policy(name, CFG).schedule([long_request()], linked, 0.0))
        assert d.legs == (Leg(Role.PREFILL, "p1"), Leg(Role.DECODE, "d1")), name
    unlinked = ClusterSnapshot(nodes, links=frozenset())
    d = only(make_policy("hfx", CFG).schedule([long_request()], unlinked, 0.0))
    assert d.legs == () and d.instance_id in ("d0", "d1")   # prefilled on D itself, never an unlinked pair
