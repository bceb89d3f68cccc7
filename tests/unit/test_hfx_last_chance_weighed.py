"""At its last chance a request refused only by a running request's bank (fit test (2)) is placed
when that costs the running requests less than the sure miss refusing costs it (issue 17,
twelfth pass: s1-w042 @ 67, loose requests refused for banks of a few ms until hopeless)."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.domain import ClusterSnapshot, Slo, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.lastchance import weigh
from tests.unit.helpers_sched import MODEL, make_instance, make_request

# step_ms = 2 + 0.01*p + 0.5*n (c3 = 0); chunk 100 tokens; 10 output tokens until one is seen.
CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0,
                   last_chance_slip=0.1)


def busy(tpot_ms: float):
    """r (O=10, TPOT tpot_ms) alone, long drained: step s = 2.5 ms, bank 9 x (tpot_ms - 2.5)."""
    r = make_request(request_id="r", slo=Slo(1000.0, tpot_ms))
    return ClusterSnapshot((make_instance(running=(r,), placed_s=-10.0),))


def test_a_last_chance_refused_for_a_sliver_of_bank_is_placed():
    """r: TPOT 3.09 ms, bank 9 x 0.59 = 5.31 ms. x (L=90, O=10) makes the step 3.0 ms for r's 9
    steps and prefills 90 tokens: 9 x 0.5 + 0.9 = 5.4 ms > 5.31, so test (2) refuses it (deficit
    0.09 ms). x's TTFT 5 ms: unloaded prefill 2 + 0.9 = 2.9 ms, slack 2.1 ms <= the step (2.5 ms):
    its last chance; on i0 its first token comes after 2.5 + 0.9 = 3.4 ms <= 5. Refusing is a sure
    miss; placing costs r 0.09 / (0.1 x 9 x 3.09) = 0.03 of a miss: placed, and the reason says so.
    On main x got no decision (then missed)."""
    x = make_request(request_id="x", prompt_tokens=90, slo=Slo(5.0, 10.0))
    (d,) = make_policy("hfx", CFG).schedule([x], busy(3.09), 0.0).decisions
    assert d.verdict == Verdict.ADMIT and d.instance_id == "i0"
    assert d.predicted_ttft_ms == pytest.approx(3.4)
    assert "last chance weighed" in d.reason and "pushes 1 running below its bank (worst -0.1 ms over 9 tokens)" in d.reason
    assert "0.03 of a miss" in d.reason


def test_not_before_its_last_chance_nor_when_switched_off():
    """The same x with TTFT 10 ms (slack 7.1 ms > the step) waits, as on main; with
    last_chance_slip 0 the last chance is refused by test (2) as before."""
    waits = make_request(request_id="x", prompt_tokens=90, slo=Slo(10.0, 10.0))
    assert make_policy("hfx", CFG).schedule([waits], busy(3.09), 0.0).decisions == ()
    off = PolicyConfig(**{**CFG.__dict__, "last_chance_slip": 0.0})
    x = make_request(request_id="x", prompt_tokens=90, slo=Slo(5.0, 10.0))
    assert make_policy("hfx", off).schedule([x], busy(3.09), 0.0).decisions == ()


def test_a_deep_cut_into_a_bank_outweighs_the_miss():
    """r: TPOT 2.6 ms -> bank 0.9 ms, and x's step 3.0 ms > 2.6 already fails test (3): refused.
    With TPOT 2.8 ms (bank 2.7 ms), x (L=90) costs 5.4 ms: deficit 2.7 ms >= 0.1 x 9 x 2.8 = 2.52
    ms, a whole miss: refusing loses no more than placing, so x is refused."""
    x = make_request(request_id="x", prompt_tokens=90, slo=Slo(5.0, 10.0))
    assert make_policy("hfx", CFG).schedule([x], busy(2.6), 0.0).decisions == ()
    assert make_policy("hfx", CFG).schedule([x], busy(2.8), 0.0).decisions == ()


def test_weigh_counts_only_requests_pushed_below_their_bank():
    """Four running requests: one stays above its bank (no cost), one was below it already (lost
    either way: no cost), one is pushed 1 ms below with 10 steps of TPOT 5 ms left (1 / (0.1 x 50)
    = 0.2 of a miss), one 10 ms below with 4 steps of TPOT 5 ms (10 / 2 -> capped at 1)."""
    w = weigh(before_ms=np.array([20.0, -3.0, 4.0, 8.0]), after_ms=np.array([15.0, -8.0, -1.0, -10.0]),
              remaining=np.array([30.0, 30.0, 10.0, 4.0]), tpots_ms=np.array([5.0, 5.0, 5.0, 5.0]), slip=0.1)
    assert w.pushed == 2 and w.cost == pytest.approx(1.2)
    assert w.worst_ms == pytest.approx(10.0) and w.remaining == 4.0
    assert weigh(np.array([5.0]), np.array([1.0]), np.array([9.0]), np.array([3.0]), 0.1).cost == 0.0


def test_a_bank_already_below_zero_is_lost_either_way():
    """A running request whose bank is -0.05 ms before the newcomer misses its TPOT either way:
    taking it to -5.5 ms costs nothing, and the reason says that none is pushed below its bank."""
    w = weigh(np.array([-0.05]), np.array([-5.5]), np.array([9.0]), np.array([2.55]), 0.1)
    assert w.pushed == 0 and w.cost == 0.0 and "pushes none below its bank" in w.reason()


def test_under_strain_each_is_charged_for_the_longest_run_left():
    """r (O=4, TPOT 4.1 ms) then r2 (O=10, TPOT 50 ms) run at step 3.0 ms; r2's prompt placed after
    r costs it 1 ms: bank 3 x 1.1 - 1 = 2.3 ms. x (L=90, O=10) makes the step 3.5 ms; on its last
    chance (TTFT 5 ms, slack 2.1 ms <= 3 ms; first token after 3.0 + 0.9 = 3.9 ms). Alone in the
    queue, r is charged for its own 3 steps: 2.3 - 1.5 - 0.9 = -0.1 ms, 0.1 / (0.1 x 3 x 4.1) =
    0.08 of a miss: placed. With a second request queued (more than instances: strain), r is
    charged as test (2) charges then, for r2's 9 steps: 2.3 - 4.5 - 0.9 = -3.1 ms, a whole miss:
    x is refused (s2-w008 @ 62 lost 7 of 200 when strain was not counted)."""
    r = make_request(request_id="r", max_tokens=4, slo=Slo(1000.0, 4.1))
    r2 = make_request(request_id="r2", slo=Slo(1000.0, 50.0))
    inst = ClusterSnapshot((make_instance(running=(r, r2), placed_s=-10.0),))
    x = make_request(request_id="x", prompt_tokens=90, slo=Slo(5.0, 10.0))
    (d,) = make_policy("hfx", CFG).schedule([x], inst, 0.0).decisions
    assert d.verdict == Verdict.ADMIT and d.predicted_ttft_ms == pytest.approx(3.9)
    assert "worst -0.1 ms over 3 tokens), 0.08 of a miss" in d.reason
    later = make_request(request_id="later", prompt_tokens=90, slo=Slo(1000.0, 10.0))
    decisions = make_policy("hfx", CFG).schedule([x, later], inst, 0.0).decisions
    assert [d.request_id for d in decisions if d.request_id == "x"] == []
