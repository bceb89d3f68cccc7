"""P/D: what counts as out of reach, and who prefills a request (issue 10, ninth session).
Models shaped like the live 1 P + 1 D run where hfx refused a chat request the baselines served."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.domain import ClusterSnapshot, LatencyModel, Leg, Role, Slo, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.pd import fastest_prefill_ms, prefill_models, short_prompt_tokens
from tests.unit.helpers_sched import make_instance, make_request

# P prefills at 0.046 ms/token; D decodes faster (c0 + c2 smaller) but its c1 read 0.113.
P_MODEL = LatencyModel(2.5, 0.046, 0.077, 0.0, 0.0001)
D_MODEL = LatencyModel(2.35, 0.113, 0.065, 0.0, 0.0001)
CFG = PolicyConfig(chunk_tokens=2048, on_miss="reject")


def pd_cluster(**d_overrides) -> ClusterSnapshot:
    return ClusterSnapshot((make_instance("p0", role=Role.PREFILL, latency_model=P_MODEL),
                            make_instance("d0", role=Role.DECODE, **{"latency_model": D_MODEL, **d_overrides})))


def chat(**overrides):
    return make_request(**{"request_id": "chat", "prompt_tokens": 1427, "max_tokens": 140,
                           "slo": Slo(117.0, 6.4), **overrides})


def test_out_of_reach_is_judged_by_the_fastest_prefill_not_the_fastest_decode():
    """Idle P prefills 1,427 tokens in 2.5 + 0.046*1427 = 68.1 ms, inside TTFT 117 ms; on D it would
    take 2.35 + 0.113*1427 = 163.6 ms. D has the faster decode step, which used to make it the
    reference for 'unloaded prefill': the request was refused on arrival."""
    d = make_policy("hfx", CFG).schedule([chat()], pd_cluster(), 0.0).decisions
    assert [x.verdict for x in d] == [Verdict.ADMIT]
    assert d[0].legs == (Leg(Role.PREFILL, "p0"), Leg(Role.DECODE, "d0"))


def test_prefill_models_leave_out_d_only_where_it_may_not_prefill():
    c = pd_cluster()
    assert prefill_models(c.instances, CFG) == ((P_MODEL, 2048), (D_MODEL, 2048))
    assert prefill_models(c.instances, replace(CFG, pd_local_prefill=False)) == ((P_MODEL, 2048),)
    assert fastest_prefill_ms(((P_MODEL, 2048), (D_MODEL, 2048)), 1427) == pytest.approx(2.5 + 0.046 * 1427)
    assert fastest_prefill_ms((), 10) == float("inf")


def test_a_request_out_of_reach_everywhere_is_still_refused():
    """TTFT 60 ms < 68.1 ms on the fastest prefill: refused on arrival, with the bound in the reason."""
    d = make_policy("hfx", CFG).schedule([chat(slo=Slo(60.0, 6.4))], pd_cluster(), 0.0).decisions
    assert [x.verdict for x in d] == [Verdict.REJECT]
    assert "unloaded prefill 68 ms" in d[0].reason


def test_a_prompt_of_at_most_half_a_chunk_is_prefilled_on_d_itself():
    """chunk_tokens 2048: 539 tokens <= 1024 is short. On P a long prompt placed before its step
    began would ride in that step (up to 1,509 tokens of it, more than its own 539); on D it shares
    steps with decodes only. Old rule (share 0): split, as for any prompt over 64 tokens."""
    req = chat(prompt_tokens=539, max_tokens=265, slo=Slo(121.0, 6.6))
    d = make_policy("hfx", CFG).schedule([req], pd_cluster(latency_model=P_MODEL), 0.0).decisions[0]
    assert d.verdict is Verdict.ADMIT and d.legs == () and d.instance_id == "d0"
    assert "prefill on D: short prompt (539 <= 1024 tokens)" in d.reason
    old = make_policy("hfx", replace(CFG, pd_local_chunk_share=0.0)).schedule(
        [req], pd_cluster(latency_model=P_MODEL), 0.0).decisions[0]
    assert old.legs == (Leg(Role.PREFILL, "p0"), Leg(Role.DECODE, "d0"))


def test_a_long_prompt_is_still_split_and_a_short_one_split_when_d_cannot_take_it():
    long_doc = chat(request_id="doc", prompt_tokens=1953, max_tokens=94, slo=Slo(344.0, 16.0))
    d = make_policy("hfx", CFG).schedule([long_doc], pd_cluster(latency_model=P_MODEL), 0.0).decisions[0]
    assert d.legs == (Leg(Role.PREFILL, "p0"), Leg(Role.DECODE, "d0"))
    # TTFT 40 ms and a D that prefills at 0.08 ms/token: whole on D takes 2.5 + 0.08*539 = 45.6 ms,
    # late; through P 2.5 + 0.046*539 + 0.05 + D's first step 2.58 = 29.9 ms: split after all.
    tight = chat(prompt_tokens=539, max_tokens=265, slo=Slo(40.0, 6.6))
    slow_d = LatencyModel(2.5, 0.08, 0.077, 0.0, 0.0001)
    d = make_policy("hfx", CFG).schedule([tight], pd_cluster(latency_model=slow_d), 0.0).decisions[0]
    assert d.legs == (Leg(Role.PREFILL, "p0"), Leg(Role.DECODE, "d0"))
    assert "P/D: short prompt (539 <= 1024 tokens); prefill on D did not fit" in d.reason


def test_the_chunk_share_applies_only_where_d_may_prefill():
    assert short_prompt_tokens(CFG) == 1024
    assert short_prompt_tokens(replace(CFG, pd_local_prefill=False)) == 64
    assert short_prompt_tokens(replace(CFG, pd_local_chunk_share=0.0)) == 64
