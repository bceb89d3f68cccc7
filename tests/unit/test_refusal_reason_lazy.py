"""A miss's reason (why.py) is built only when a refusal reads it, and then says what it would
have said at the miss, even if the pass placed others on the table since (issue 9, thirteenth
session: why_not on every miss was ~5% of the policy's time in the simulator)."""

from __future__ import annotations

import copy

from services.common.domain import ClusterSnapshot, Slo
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy import hfx as hfx_module
from services.scheduler.policy import why as why_module
from services.scheduler.policy.budget import InstanceBudget
from services.scheduler.policy.fit import FitTable
from services.scheduler.policy.hfx import Hfx
from services.scheduler.policy.why import Miss, why_not
from tests.unit.test_refusal_reason import NOW, _instance, _newcomer, refused_after_waiting
from tests.unit.helpers_sched import make_request


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = why_module.why_not

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(why_module, "why_not", counted)
    monkeypatch.setattr(hfx_module, "why_not", counted, raising=False)  # where the policy called it before
    return calls


def test_a_miss_nobody_reads_is_never_explained(monkeypatch):
    calls = _counting(monkeypatch)
    policy = make_policy("hfx", PolicyConfig(best_effort_max_wait_ms=100.0))
    spec = _newcomer(9000)   # fits nowhere: test (2)
    for t in (NOW, NOW + 0.01, NOW + 0.02):
        assert not policy.schedule([spec], ClusterSnapshot((_instance(),)), t).decisions
    assert calls == []


def test_the_refusal_explains_its_last_miss_once(monkeypatch):
    calls = _counting(monkeypatch)
    assert "last tried with its SLO: w0: (2) a running request's budget" in refused_after_waiting().reason
    assert len(calls) == 1


def test_a_miss_read_after_the_table_changed_says_what_it_said_at_the_miss():
    policy = make_policy("hfx", PolicyConfig())
    assert isinstance(policy, Hfx)
    inst = _instance()
    table = FitTable([inst], [policy._budget(inst, NOW)], policy.config, NOW, banned=set())
    spec = _newcomer(9000)
    at_the_miss = why_not(table, spec, 10, NOW)
    miss = Miss(table, spec, 10, NOW)
    other = make_request(request_id="other", prompt_tokens=10, max_tokens=5, slo=Slo(1000.0, 50.0), arrival_s=NOW)
    table.place(0, other, 5, NOW, protected=True)
    assert why_not(table, spec, 10, NOW) != at_the_miss   # the placement changed the explanation...
    assert miss.text() == at_the_miss                      # ...but not the miss's
    assert miss.text() == at_the_miss                      # read twice: the same text


def test_a_budget_copy_is_copy_copy():
    policy = make_policy("hfx", PolicyConfig())
    assert isinstance(policy, Hfx)
    budget = policy._budget(_instance(), NOW)
    twin = budget.copy()
    assert type(twin) is InstanceBudget and twin is not budget
    assert twin.__dict__ == copy.copy(budget).__dict__
    twin.add(make_request(request_id="x", arrival_s=NOW), 5, NOW)
    assert twin != budget and budget == copy.copy(budget)   # the original is untouched
