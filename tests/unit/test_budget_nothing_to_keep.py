"""A running request with no TPOT to keep (one token left, or no SLO) is load, not a deadline
(services/scheduler/policy/budget.py keeps_tpot; issue 9, eleventh session)."""

from __future__ import annotations

import math
from dataclasses import replace

from services.common.domain import ClusterSnapshot, LatencyModel, ReportedRun, RunningRequest, Slo, Verdict
from services.scheduler.inflight import reconcile
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.budget import summarise
from services.scheduler.policy.estimate import OutputLengthEstimator
from tests.unit.helpers_sched import make_instance, make_request

# The vLLM CPU worker of this machine as its scheduler refined it (step_ms ~ 4.5 ms).
MODEL = LatencyModel(4.5, 0.028, 0.1, 0.0005)


def _probe():
    return make_request(request_id="probe", prompt_tokens=8, max_tokens=2, slo=Slo(2000, 200), arrival_s=100.0)


def _place(running: RunningRequest):
    inst = replace(make_instance("w0", latency_model=MODEL), running=(running,))
    return make_policy("hfx", PolicyConfig()).schedule([_probe()], ClusterSnapshot((inst,)), 100.001).decisions


def test_a_direct_request_adopted_after_its_first_token_does_not_hold_the_instance():
    # mesh_overhead's direct probe (2 tokens, no SLO) as a load report caught it after its first
    # token: adopted resumed, 1 token left, TPOT inf. Its bank was 0 x inf = NaN, which failed fit
    # test (2) for every newcomer until the next report let it go (the router's probes waited
    # 40-210 ms at the scheduler).
    direct = ReportedRun("direct-1", prompt_tokens=8, max_tokens=2, output_tokens=1, slo=Slo(0, 0), priority=0,
                         started_s=99.99)
    (adopted,), _ = reconcile({}, [direct], reported_s=100.0)
    (d,) = _place(adopted)
    assert d.verdict is Verdict.ADMIT and d.instance_id == "w0"


def test_a_request_with_its_last_token_to_go_does_not_hold_the_instance():
    # max_tokens 1: no decode step to slow down, so nothing for a newcomer to keep; its bank was 0.
    one = make_request(request_id="one", prompt_tokens=8, max_tokens=1, slo=Slo(2000, 200), arrival_s=99.99)
    (d,) = _place(RunningRequest(one, 99.99))
    assert d.verdict is Verdict.ADMIT


def test_budgets_count_only_requests_with_a_tpot_to_keep_and_are_never_nan():
    keep = make_request(request_id="keep", prompt_tokens=8, max_tokens=10, slo=Slo(2000, 20))
    last = make_request(request_id="last", prompt_tokens=8, max_tokens=1, slo=Slo(2000, 20))
    free = make_request(request_id="free", prompt_tokens=8, max_tokens=1, slo=Slo(math.inf, math.inf))
    inst = make_instance("w0", running=(keep, last, free), latency_model=MODEL)
    b = summarise(inst, PolicyConfig(), OutputLengthEstimator(prior_tokens=100))
    assert len(b.banks_ms) == 1 and b.remaining == (9.0,)        # only "keep" is protected
    assert b.decode_seqs == 3                                     # all three still decode here (load)
    assert 0 < b.bank_ms < 9 * 20 and b.min_tpot_ms == 20
    assert not math.isnan(b.victim_bank_ms)
    b.add(last, 1, 0.0)                                           # placing one more 1-token request
    assert len(b.banks_ms) == 1 and not math.isnan(b.bank_ms)
