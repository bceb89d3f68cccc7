"""While a task class's first token is tight (reachable on an idle instance, not behind one full-chunk
step in flight), prompts of a chunk or more keep off the instance with the least queued prefill, so
that an arrival of that class finds one instance not busy prefilling long prompts (issue 17,
seventh pass: FitTable.ttft_keep, Hfx._tight_ttft). Only a preference, never a refusal."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from services.common.domain import ClusterSnapshot, RunningRequest, Slo, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.budget import summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from services.scheduler.policy.fit import FitTable
from tests.unit.helpers_sched import MODEL, make_instance, make_request

# step_ms = 2 + 0.01*p + 0.5*n (c3 = 0); chunk 100 tokens: a full-chunk step is 2 + 0.5 + 1 = 3.5 ms.
CFG = PolicyConfig(default_latency_model=MODEL, chunk_tokens=100, prior_output_tokens=10, preempt_margin_ms=0.0)
LOOSE = Slo(1000.0, 50.0)


def cluster(*instances):
    return ClusterSnapshot(tuple(instances))


def busy(instance_id: str, prompt_tokens: int = 50, placed_s: float = -10.0):
    """An instance decoding one loose request placed long ago (its prefill done)."""
    a = make_request(request_id=f"a-{instance_id}", prompt_tokens=prompt_tokens, slo=LOOSE)
    return replace(make_instance(instance_id), running=(RunningRequest(a, placed_s),))


def table_of(*instances, lane: float | None):
    est = OutputLengthEstimator(CFG.prior_output_tokens)
    table = FitTable(list(instances), [summarise(i, CFG, est) for i in instances], CFG, 0.0, banned=set())
    table.lane_prompt_tokens = lane
    return table


def test_ttft_keep_marks_the_instance_with_the_least_queued_prefill_for_long_prompts_only():
    """i1 has a 500-token prompt queued (placed just now), i0 and i2 decode one request each, i3
    two: the kept one is i0 (no queue, fewest sequences, lower index). Prompts under the lane's
    length, no lane, or a single instance: nothing kept."""
    two = replace(busy("i3"), running=busy("i3").running + (RunningRequest(make_request(request_id="b"), -10.0),))
    table = table_of(busy("i0"), busy("i1", 500, placed_s=0.0), busy("i2"), two, lane=100.0)
    assert list(table.ttft_keep(100.0)) == [1.0, 0.0, 0.0, 0.0]
    assert list(table.ttft_keep(99.0)) == [0.0] * 4
    assert list(table_of(busy("i0"), busy("i1"), lane=None).ttft_keep(5000.0)) == [0.0, 0.0]
    assert list(table_of(busy("i0"), lane=100.0).ttft_keep(5000.0)) == [0.0]
    # A preference: with the kept instance the only one that fits, it is chosen.
    assert table.choose(np.array([True, False, False, False]), 50.0, 300.0) == 0
    assert table.choose(np.array([True, False, True, False]), 50.0, 300.0) == 2


def seen_tight_class(ttft_ms: float):
    """A policy that has seen one request of class "tight" (20-token prompts: 2.2 ms unloaded
    prefill) with TTFT `ttft_ms`, placed on an idle cluster (it has finished since)."""
    hfx = make_policy("hfx", CFG)
    t = make_request(request_id="t", prompt_tokens=20, slo=Slo(ttft_ms, 50.0), task_class="tight")
    hfx.schedule([t], cluster(make_instance("i0"), make_instance("i1")), 0.0)
    return hfx


def test_a_long_prompt_keeps_off_the_instance_kept_for_a_tight_first_token():
    """i0 idle, i1 decoding one request. A 300-token prompt goes to i0 by spread (less load)
    unless the policy has seen a class whose first token is tight: TTFT 4 ms is reachable alone
    (2.2 ms) but not behind a full-chunk step (2.2 + 3.5 = 5.7 ms); then it goes to i1 and i0
    stays free of its chunks. A TTFT of 6 ms (room for a step in flight) or 2 ms (out of reach
    even alone) switches nothing on."""
    x = make_request(request_id="x", prompt_tokens=300, slo=LOOSE, arrival_s=1.0)
    snapshot = cluster(make_instance("i0"), busy("i1"))
    for ttft_ms, where in ((4.0, "i1"), (6.0, "i0"), (2.0, "i0")):
        (d,) = seen_tight_class(ttft_ms).schedule([x], snapshot, 1.0).decisions
        assert (d.verdict, d.instance_id) == (Verdict.ADMIT, where), ttft_ms
        assert ("kept for a tight first token" in d.reason) == (where == "i1")
    (d,) = make_policy("hfx", CFG).schedule([x], snapshot, 1.0).decisions
    assert d.instance_id == "i0"
    short = replace(x, request_id="short", prompt_tokens=99)   # under a chunk: no lane for it
    (d,) = seen_tight_class(4.0).schedule([short], snapshot, 1.0).decisions
    assert d.instance_id == "i0"


def test_no_first_token_lane_while_a_tpot_lane_keeps_an_instance():
    """Once the policy has also seen a class whose TPOT is tight (3 ms against a 2.5-ms unloaded
    step: Hfx._tight_tpot_ms), the TPOT lane keeps loose requests off an instance with short
    steps, and the first-token lane is off: a second kept instance crowded the long prompts onto
    the rest (issue 17, eighth pass: s3-w009 at 17 req/s, 85.5% with both lanes, 90.0% with the
    TPOT lane alone). The long prompt goes where the TPOT lane alone sends it, and its reason no
    longer names an instance kept for a tight first token."""
    hfx = seen_tight_class(4.0)
    assert hfx._tight_ttft() == 100.0
    p = make_request(request_id="p", prompt_tokens=20, slo=Slo(1000.0, 3.0), task_class="tpot", arrival_s=0.5)
    hfx.schedule([p], cluster(make_instance("i0"), make_instance("i1")), 0.5)
    assert hfx._tight_tpot_ms() == 3.0
    assert hfx._tight_ttft() is None
    x = make_request(request_id="x", prompt_tokens=300, slo=LOOSE, arrival_s=1.0)
    (d,) = hfx.schedule([x], cluster(make_instance("i0"), busy("i1"), busy("i2")), 1.0).decisions
    assert d.verdict is Verdict.ADMIT and "kept for a tight first token" not in d.reason
    assert "TPOT affinity" in d.reason
