"""A request at its last chance may push a running request's predicted decode time past its TPOT
budget by up to PolicyConfig.last_chance_bank_share of it (fit test (2)); a refusal says which test
held it back (policy/why.py). Issue 9, twelfth session."""

from __future__ import annotations

from services.common.domain import ClusterSnapshot, Slo, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.fit import FitTable
from services.scheduler.policy.hfx import Hfx
from services.scheduler.policy.pressure import MAX_PASS_GAP_MS, PassGap
from services.scheduler.policy.why import why_not
from tests.unit.helpers_sched import make_instance, make_request

NOW = 10.0
# Running: 11 tokens at TPOT 10 ms on step_ms = 2 + 0.01*p + 0.5*n (helpers_sched.MODEL): its bank
# is 10 decode steps x (10 - 2.5) = 75 ms, its decode budget 10 x 10 = 100 ms.
RUNNING = make_request(request_id="run", prompt_tokens=100, max_tokens=11, slo=Slo(1000.0, 10.0))


def _newcomer(prompt_tokens: int, ttft_ms: float = 150.0):
    # 10 output tokens slow the running one's steps by 0.5 ms each (5 ms), its prompt by 0.01 ms a
    # token: 7,500 tokens leave it -5 ms, 9,000 tokens -20 ms. Unloaded prefill ~105 ms: with a
    # 150-ms TTFT its slack (~45 ms) is below that, its last chance.
    return make_request(request_id="new", prompt_tokens=prompt_tokens, max_tokens=10,
                        slo=Slo(ttft_ms, 50.0), arrival_s=NOW)


def _decide(newcomer, share: float):
    inst = make_instance("w0", running=(RUNNING,), kv_capacity_tokens=100_000)
    policy = make_policy("hfx", PolicyConfig(last_chance_bank_share=share))
    return policy.schedule([newcomer], ClusterSnapshot((inst,)), NOW).decisions


def test_a_last_chance_short_of_a_running_budget_by_less_than_the_share_is_placed():
    (d,) = _decide(_newcomer(7500), share=0.1)          # -5 ms, within 10% of 100 ms
    assert d.verdict is Verdict.ADMIT and d.instance_id == "w0"
    assert "last chance" in d.reason and "within 10%" in d.reason


def test_without_the_share_or_beyond_it_the_request_waits():
    assert _decide(_newcomer(7500), share=0.0) == ()
    assert _decide(_newcomer(9000), share=0.1) == ()    # -20 ms: beyond 10 ms


def test_the_share_is_only_for_a_last_chance():
    # The same shortfall with a loose first token (slack far above its prefill): it waits.
    assert _decide(_newcomer(7500, ttft_ms=5000.0), share=0.1) == ()


def test_why_not_names_the_failed_test_per_instance():
    inst = make_instance("w0", running=(RUNNING,), kv_capacity_tokens=100_000)
    policy = make_policy("hfx", PolicyConfig(last_chance_bank_share=0.1))
    assert isinstance(policy, Hfx)
    budget = policy._budget(inst, NOW)
    table = FitTable([inst], [budget], policy.config, NOW, banned=set())
    spec = _newcomer(9000)
    text = why_not(table, spec, 10, NOW)
    assert text.startswith("w0: (2) a running request's budget -20 ms")
    assert why_not(table, spec, 10, NOW, optimistic=True).startswith("w0: (2) a running request's budget -10 ms")
    assert why_not(table, _newcomer(10), 10, NOW) == ""                    # it fits: nothing to explain


def test_a_refusal_after_waiting_says_why_it_never_fitted():
    # Best effort that never found room is refused after best_effort_max_wait_ms; the reason
    # carries its last try with its SLO.
    inst = make_instance("w0", running=(RUNNING,), kv_capacity_tokens=100_000)
    policy = make_policy("hfx", PolicyConfig(last_chance_bank_share=0.0, best_effort_max_wait_ms=100.0))
    spec = _newcomer(9000)
    assert policy.schedule([spec], ClusterSnapshot((inst,)), NOW).decisions == ()
    decisions = []
    for t in (NOW + 0.05, NOW + 0.1, NOW + 0.2, NOW + 0.4):
        decisions += policy.schedule([spec], ClusterSnapshot((inst,)), t).decisions
    (d,) = [d for d in decisions if d.verdict is Verdict.REJECT]
    assert "last tried with its SLO: w0: (2) a running request's budget" in d.reason


def test_pass_gap_follows_the_gaps_between_passes_while_requests_wait():
    gap = PassGap()
    for i in range(30):
        gap.observe(NOW + 0.04 * i, waiting=True)
    assert 38.0 < gap.gap_ms <= 40.0
    gap.observe(NOW + 100.0, waiting=True)               # an idle spell counts as MAX_PASS_GAP_MS at most
    assert gap.gap_ms <= 40.0 + 0.2 * (MAX_PASS_GAP_MS - 40.0) + 1e-9
    gap.observe(NOW + 101.0, waiting=False)
    assert gap.last_s is None                            # nothing waits: the next gap starts afresh


def test_a_last_chance_reaches_as_far_as_the_gap_between_passes():
    # Strained (two waiting, one instance: no tight-TTFT window, no test-(2) share). A 100-token
    # newcomer: unloaded prefill 3 ms, 3.5 ms behind the running one's step; charged 3 x that
    # 2.5-ms step for the step in flight (inflight_step_share 3) it predicts 11 ms, over its 8-ms
    # TTFT. Its slack, 5 ms, is more than one step: by the step alone no last chance, and it
    # waits, to turn hopeless before the next pass. With passes 40 ms apart, it is its last chance.
    inst = make_instance("w0", running=(RUNNING,), kv_capacity_tokens=100_000)
    blocker = make_request(request_id="big", prompt_tokens=200_000, max_tokens=10, slo=Slo(1e6, 50.0), arrival_s=0.0)
    newcomer = _newcomer(100, ttft_ms=8.0)
    config = PolicyConfig(inflight_step_share=3.0)

    def final_pass(policy) -> tuple:
        return policy.schedule([blocker, newcomer], ClusterSnapshot((inst,)), NOW).decisions

    assert final_pass(make_policy("hfx", config)) == ()
    policy = make_policy("hfx", config)
    for i in range(30, 0, -1):                           # passes 40 ms apart, the blocker waiting
        assert policy.schedule([blocker], ClusterSnapshot((inst,)), NOW - 0.04 * i).decisions == ()
    (d,) = final_pass(policy)
    assert d.request_id == "new" and d.verdict is Verdict.ADMIT and "last chance" in d.reason


def test_under_strain_a_last_chance_has_no_share_of_the_running_budgets():
    inst = make_instance("w0", running=(RUNNING,), kv_capacity_tokens=100_000)
    blocker = make_request(request_id="big", prompt_tokens=200_000, max_tokens=10, slo=Slo(1e6, 50.0), arrival_s=0.0)
    policy = make_policy("hfx", PolicyConfig(last_chance_bank_share=0.1))
    # The newcomer of the first test (-5 ms, within 10%), now with another request queued.
    assert policy.schedule([blocker, _newcomer(7500)], ClusterSnapshot((inst,)), NOW).decisions == ()
