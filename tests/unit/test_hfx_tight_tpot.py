"""HFX placement while a task class's TPOT is tight (issue 17, sixth pass; docs/SCHEDULING.md
"While a TPOT is tight").

Model (tests/unit/helpers_sched.py): step_ms = 2 + 0.01*p + 0.5*n + 0*kv, so one decoding
sequence alone steps in 2.5 ms. A class with TPOT 3.5 ms is tight (3.5 <= 1.6 x 2.5 = 4.0): two
sequences already make a 3.0-ms step, a third 3.5 ms. A request with TPOT >= 1.5 x 3.5 = 5.25 ms
is loose. Spread alone put long loose decodes on every instance and closed all of them to such a
class (family workload s2-w015: its 1.3x-TPOT class met 62% at 43 req/s, hfx 89.5%; 94.0% now).
"""

from __future__ import annotations

from services.common.domain import ClusterSnapshot, Slo
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.settings import check
from tests.unit.helpers_sched import make_instance, make_request, MODEL

import pytest

CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0)
TIGHT = Slo(1000.0, 3.5)
LOOSE = Slo(1000.0, 40.0)


def cluster(*instances):
    return ClusterSnapshot(tuple(instances))


def instances():
    """"streams" runs one tight-TPOT request (n = 1); "bulk" runs two loose ones (n = 2). Spread
    alone sends a newcomer to "streams" (fewer decoding sequences)."""
    streams = make_instance("streams", running=(make_request(request_id="s", task_class="stream", slo=TIGHT),),
                            placed_s=-10.0)
    bulk = make_instance("bulk", running=(make_request(request_id="b1", task_class="bulk", slo=LOOSE),
                                          make_request(request_id="b2", task_class="bulk", slo=LOOSE)),
                         placed_s=-10.0)
    return streams, bulk


def seen_tight_class(hfx) -> None:
    """One pass that sees a request of the tight class (it learns classes from its queue)."""
    hfx.schedule([make_request(request_id="t0", task_class="stream", slo=TIGHT)], cluster(make_instance("x")), 0.0)


def test_loose_request_keeps_off_the_tight_class_instance():
    hfx = make_policy("hfx", CFG)
    seen_tight_class(hfx)
    streams, bulk = instances()
    req = make_request(request_id="n", task_class="bulk", slo=LOOSE)
    (d,) = hfx.schedule([req], cluster(streams, bulk), 0.0).decisions
    # TPOT 40 >= 1.5 x 3.5: loose. "streams" runs a tight one -> band 1; "bulk" band 0
    assert d.instance_id == "bulk"
    assert "spread by TPOT affinity (a class's TPOT 3.5 ms is tight) -> bulk (2 fit)" in d.reason


def test_off_when_no_class_is_tight_or_disabled():
    """The same cluster and newcomer: spread (to "streams") when the policy has seen no tight
    class, when the tight class's TPOT is looser than lane_tightness x its unloaded step (a
    TPOT-10 class: 10 > 1.6 x 2.5), and with lane_tightness 0."""
    streams, bulk = instances()
    req = make_request(request_id="n", task_class="bulk", slo=LOOSE)
    (d,) = make_policy("hfx", CFG).schedule([req], cluster(streams, bulk), 0.0).decisions
    assert d.instance_id == "streams" and "spread -> streams" in d.reason

    hfx = make_policy("hfx", CFG)
    hfx.schedule([make_request(request_id="t0", task_class="stream", slo=Slo(1000.0, 10.0))],
                 cluster(make_instance("x")), 0.0)
    (d,) = hfx.schedule([req], cluster(streams, bulk), 0.0).decisions
    assert d.instance_id == "streams"

    off = make_policy("hfx", PolicyConfig(**{**CFG.__dict__, "lane_tightness": 0.0}))
    seen_tight_class(off)
    (d,) = off.schedule([req], cluster(streams, bulk), 0.0).decisions
    assert d.instance_id == "streams"


def test_a_tpot_out_of_reach_alone_does_not_count():
    """A class with TPOT 2.0 ms < the 2.5-ms unloaded step can never be met (it is served best
    effort from the start): no instance is kept for it."""
    hfx = make_policy("hfx", CFG)
    hfx.schedule([make_request(request_id="t0", task_class="stream", slo=Slo(1000.0, 2.0))],
                 cluster(make_instance("x")), 0.0)
    streams, bulk = instances()
    req = make_request(request_id="n", task_class="bulk", slo=LOOSE)
    (d,) = hfx.schedule([req], cluster(streams, bulk), 0.0).decisions
    assert d.instance_id == "streams"


def test_tight_request_goes_where_its_class_runs():
    """A tight newcomer prefers "streams" (band 0) over an empty instance (band 1), which spread
    alone would pick; the empty one stays free for loose work."""
    hfx = make_policy("hfx", CFG)
    seen_tight_class(hfx)
    streams, _ = instances()
    req = make_request(request_id="n", task_class="stream", slo=TIGHT)
    (d,) = hfx.schedule([req], cluster(make_instance("empty"), streams), 0.0).decisions
    assert d.instance_id == "streams"


def test_lane_factor_checked():
    with pytest.raises(ValueError, match="lane_factor"):
        check(PolicyConfig(lane_factor=0.5))


def test_while_no_tight_request_runs_the_shortest_step_is_kept_for_one():
    """No instance runs a tight request yet: a loose newcomer keeps off the instance with the
    shortest step ("one": a single loose sequence, 2.5 ms) and goes to "two" (3.0 ms), which
    spread alone would not pick; a tight newcomer then finds "one" with room (3.0 <= 3.5 ms).
    With no tight class seen, spread picks "one"."""
    one = make_instance("one", running=(make_request(request_id="b0", task_class="bulk", slo=LOOSE),),
                        placed_s=-10.0)
    two = make_instance("two", running=(make_request(request_id="b1", task_class="bulk", slo=LOOSE),
                                        make_request(request_id="b2", task_class="bulk", slo=LOOSE)),
                        placed_s=-10.0)
    req = make_request(request_id="n", task_class="bulk", slo=LOOSE)
    (d,) = make_policy("hfx", CFG).schedule([req], cluster(one, two), 0.0).decisions
    assert d.instance_id == "one"
    hfx = make_policy("hfx", CFG)
    seen_tight_class(hfx)
    (d,) = hfx.schedule([req], cluster(one, two), 0.0).decisions
    assert d.instance_id == "two"
    (d,) = hfx.schedule([make_request(request_id="t", task_class="stream", slo=TIGHT)],
                        cluster(one, two), 0.0).decisions
    assert d.instance_id == "one"
