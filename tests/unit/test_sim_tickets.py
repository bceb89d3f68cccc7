"""Tickets in the simulator (services/sim/tickets.py), as the live mesh runs them: granted while
nothing waits, spent on arrival by the router's rule, revoked when a request queues."""

from __future__ import annotations

from services.common.domain import ClusterSnapshot, Decision, Preemption, ScheduleResult, Slo, Verdict
from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import policy_config
from services.scheduler.tickets import outdated_by
from services.sim.cli import DEFAULT_WORKLOAD
from services.sim.profiles import get_profile
from services.sim.runner import Simulation, simulate
from services.sim.tickets import SimTickets
from services.sim.workload import generate, load_workload
from tests.unit.helpers import make_instance, make_spec

PROFILE = get_profile("cpu-tiny")


def run(policy: str, tickets: bool, rate: float = 8.0):
    wl = load_workload(DEFAULT_WORKLOAD)
    reqs = generate(wl, rate, 300, 5, PROFILE.model, PROFILE.chunk_tokens)
    return simulate(make_policy(policy, policy_config(PROFILE, wl.classes)), PROFILE, reqs, 2, 5, tickets=tickets)


def on_ticket(result) -> int:
    return sum(r.reason.startswith("ticket:") for r in result.records)


def test_hfx_starts_requests_on_tickets_at_light_load_and_every_request_is_still_settled():
    with_tickets, without = run("hfx", True), run("hfx", False)
    assert on_ticket(with_tickets) > 0 and on_ticket(without) == 0
    assert all(r.verdict for r in with_tickets.records) and all(r.finish_s is not None for r in with_tickets.records)
    key = lambda res: [(r.spec.request_id, r.verdict, r.reason, r.first_token_s) for r in res.records]  # noqa: E731
    assert key(run("hfx", True)) == key(with_tickets)          # deterministic, tickets included


def test_a_policy_that_grants_none_is_unchanged_by_tickets():
    a, b = run("fcfs", True), run("fcfs", False)
    assert on_ticket(a) == 0
    assert [(r.spec.request_id, r.first_token_s) for r in a.records] == [(r.spec.request_id, r.first_token_s)
                                                                          for r in b.records]


def test_a_ticket_is_spent_once_only_on_a_request_it_covers_and_revoked_when_a_request_queues():
    tickets = SimTickets(make_policy("hfx", policy_config(PROFILE)))
    cluster = ClusterSnapshot((make_instance("i0", latency_model=PROFILE.model),
                               make_instance("i1", latency_model=PROFILE.model)))
    for i in range(4):
        tickets.saw(make_spec(request_id=f"seen{i}", prompt_tokens=100, max_tokens=50, slo=Slo(1000, 100)))
    assert tickets.refresh(cluster, queued=False, now_s=0.0) is None
    assert len(tickets.router.tickets) == 2
    too_long = make_spec(request_id="long", prompt_tokens=5000, max_tokens=50, slo=Slo(1000, 100))
    assert tickets.take(too_long, 0.0) is None
    first = tickets.take(make_spec(request_id="a", prompt_tokens=80, slo=Slo(1000, 100)), 0.0)
    assert first is not None and first.instance_id in {"i0", "i1"} and first.reason.startswith("ticket:")
    assert len(tickets.router.tickets) == 1 and tickets.spent == 1
    assert tickets.refresh(cluster, queued=False, now_s=0.01) == 0.05   # not due: deferred to refresh_s
    assert tickets.refresh(cluster, queued=True, now_s=0.01) is None    # a queue revokes at once
    assert tickets.router.tickets == [] and tickets.take(make_spec(request_id="b"), 0.01) is None


def test_the_simulation_runs_tickets_by_default_as_the_live_scheduler_does():
    sim = Simulation(make_policy("hfx", policy_config(PROFILE)), PROFILE, instances=1, seed=1)
    assert sim.tickets is not None and sim.tickets.on
    no = Simulation(make_policy("hfx", policy_config(PROFILE)), PROFILE, instances=1, seed=1, tickets=False)
    assert no.tickets is None


def test_tickets_are_out_of_date_after_a_round_that_placed_or_preempted():
    """A ticket is granted on its instance as a round found it: a pass that then placed a long
    prompt there made it wrong (family workload s1-w034: a 51-ms-TTFT request spent it and missed).
    Both the simulator and the scheduler service re-grant at once after such a round."""
    admit = Decision("a", Verdict.ADMIT, "fits", instance_id="i0")
    reject = Decision("b", Verdict.REJECT, "cannot meet TTFT")
    assert outdated_by(ScheduleResult(decisions=(admit,)))
    assert outdated_by(ScheduleResult(preemptions=(Preemption("i0", "c", "budget"),)))
    assert not outdated_by(ScheduleResult(decisions=(reject,))) and not outdated_by(ScheduleResult())
