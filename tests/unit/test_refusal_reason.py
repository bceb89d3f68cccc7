"""A refusal says which fit test held its request back at its last try with its SLO, per instance
(services/scheduler/policy/why.py; issue 9, twelfth session)."""

from __future__ import annotations

from services.common.domain import ClusterSnapshot, Slo, Verdict
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.fit import FitTable
from services.scheduler.policy.hfx import Hfx
from services.scheduler.policy.why import why_not
from tests.unit.helpers_sched import make_instance, make_request

NOW = 10.0
# Running: 11 tokens at TPOT 10 ms on step_ms = 2 + 0.01*p + 0.5*n (helpers_sched.MODEL): its bank
# is 10 decode steps x (10 - 2.5) = 75 ms.
RUNNING = make_request(request_id="run", prompt_tokens=100, max_tokens=11, slo=Slo(1000.0, 10.0))


def _newcomer(prompt_tokens: int):
    # 10 output tokens slow the running one's steps by 0.5 ms each (5 ms), its prompt by 0.01 ms a
    # token: 9,000 tokens leave it 75 - 5 - 90 = -20 ms.
    return make_request(request_id="new", prompt_tokens=prompt_tokens, max_tokens=10, slo=Slo(150.0, 50.0),
                        arrival_s=NOW)


def _instance():
    return make_instance("w0", running=(RUNNING,), kv_capacity_tokens=100_000)


def test_why_not_names_the_failed_test_per_instance():
    policy = make_policy("hfx", PolicyConfig())
    assert isinstance(policy, Hfx)
    inst = _instance()
    table = FitTable([inst], [policy._budget(inst, NOW)], policy.config, NOW, banned=set())
    assert why_not(table, _newcomer(9000), 10, NOW).startswith("w0: (2) a running request's budget -20 ms")
    assert why_not(table, _newcomer(10), 10, NOW) == ""                 # it fits: nothing to explain


def refused_after_waiting():
    """A newcomer that fits nowhere (test (2)), turns hopeless, waits best_effort_max_wait_ms as
    best effort and is refused: that refusal."""
    policy = make_policy("hfx", PolicyConfig(best_effort_max_wait_ms=100.0))
    spec = _newcomer(9000)
    decisions = []
    for t in (NOW, NOW + 0.05, NOW + 0.1, NOW + 0.2, NOW + 0.4):
        decisions += policy.schedule([spec], ClusterSnapshot((_instance(),)), t).decisions
    (d,) = [d for d in decisions if d.verdict is Verdict.REJECT]
    return d


def test_a_refusal_after_waiting_says_why_it_never_fitted():
    assert "last tried with its SLO: w0: (2) a running request's budget" in refused_after_waiting().reason
