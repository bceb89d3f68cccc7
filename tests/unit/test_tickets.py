"""Tickets (standing placements): the bounds drawn from recent requests, the policy's grants, the
guarantee that a covered request fits by the same test a pass would use, and the scheduler's desk
that hands each instance's ticket to one router link."""

from __future__ import annotations

import random
from dataclasses import replace

from services.common.domain import ClusterSnapshot, InstanceLoad, RequestSpec, Slo, TicketBound
from services.common.pb.hfx.v1 import scheduler_pb2
from services.scheduler.policy import IssuesTickets, PolicyConfig, make_policy
from services.scheduler.policy.fit import FitTable
from services.scheduler.policy.tickets import TTFT_SHARE, bounds_for
from services.scheduler.tickets import TicketDesk
from tests.unit.helpers_sched import make_instance, make_request

NOW = 100.0


def _spec(rid: str, prompt: int, out: int, ttft: float, tpot: float, at: float = NOW) -> RequestSpec:
    return make_request(request_id=rid, prompt_tokens=prompt, max_tokens=out, slo=Slo(ttft, tpot), arrival_s=at)


def test_the_envelope_covers_each_recent_request_and_the_median_is_tried_second():
    recent = [_spec("a", 100, 10, 500, 20), _spec("b", 400, 64, 200, 50), _spec("c", 120, 16, 300, 30)]
    envelope, median = bounds_for(recent)
    assert envelope == TicketBound(400, 64, TTFT_SHARE * 200, 20)
    assert median == TicketBound(120, 16, TTFT_SHARE * 300, 30)
    assert all(envelope.covers(s, NOW) for s in recent)
    assert bounds_for([]) == []
    assert bounds_for([replace(recent[0], resumed_tokens=5)]) == []


def test_a_bound_covers_smaller_and_looser_requests_only():
    bound = TicketBound(200, 32, 100.0, 20.0)
    assert bound.covers(_spec("ok", 200, 32, 100, 20), NOW)
    assert not bound.covers(_spec("long", 201, 32, 100, 20), NOW)
    assert not bound.covers(_spec("more", 200, 33, 100, 20), NOW)
    assert not bound.covers(_spec("tight-ttft", 200, 32, 99, 20), NOW)
    assert not bound.covers(_spec("tight-tpot", 200, 32, 100, 19.9), NOW)
    # time already spent before the check comes off the first-token SLO
    assert not bound.covers(_spec("late", 100, 8, 120, 50, at=NOW - 0.03), NOW)
    assert not bound.covers(replace(_spec("resumed", 50, 8, 500, 50), resumed_tokens=3), NOW)


def test_hfx_grants_instances_that_fit_the_bound_spread_first_and_none_that_do_not():
    policy = make_policy("hfx", PolicyConfig())
    assert isinstance(policy, IssuesTickets)
    busy = make_instance("busy", running=tuple(_spec(f"x{k}", 50, 50, 1000, 40, at=NOW - 1) for k in range(3)),
                         placed_s=NOW - 1)
    idle = make_instance("idle")
    draining = make_instance("draining", load=InstanceLoad(kv_capacity_tokens=10_000, draining=True))
    cluster = ClusterSnapshot((busy, idle, draining))
    grants = policy.tickets(cluster, [TicketBound(100, 10, 200.0, 40.0)], NOW)
    assert [g.instance_id for g in grants] == ["idle", "busy"]   # spread: the one with fewer decoding first
    assert all("ticket:" in g.reason and g.instance_id in g.reason for g in grants)
    # a TPOT below one step with the request added fits nowhere: no grant at all
    assert policy.tickets(cluster, [TicketBound(100, 10, 200.0, 1.0)], NOW) == []
    # a bound too big for the KV left
    small = make_instance("small", kv_capacity_tokens=100)
    assert policy.tickets(ClusterSnapshot((small,)), [TicketBound(100, 10, 200.0, 40.0)], NOW) == []


def test_tickets_rank_as_a_pass_chooses_queued_prefill_included():
    """Two instances decoding as many sequences: the one whose last request's prefill is still
    queued ranks second, as a pass's choose() (spread) would order them. An integer rank cut
    spread's fraction off, so the first-listed instance won that tie every time."""
    policy = make_policy("hfx", PolicyConfig())
    decoding = tuple(_spec(f"d{k}", 50, 50, 1000, 40, at=NOW - 1) for k in range(2))
    fresh = _spec("fresh", 100, 50, 1000, 40, at=NOW)   # placed just now: its prefill is queued
    first = make_instance("a", running=decoding + (fresh,), placed_s=NOW - 0.0005)
    second = make_instance("b", running=tuple(_spec(f"e{k}", 50, 50, 1000, 40, at=NOW - 1) for k in range(3)),
                           placed_s=NOW - 1)
    cluster = ClusterSnapshot((first, second))
    bound = TicketBound(100, 10, 500.0, 40.0)
    budgets = [policy._budget(inst, NOW) for inst in cluster.instances]
    table = FitTable(cluster.instances, budgets, PolicyConfig(), NOW, banned=set(), reported_step=False)
    ok, _ = table.fits_every_output(bound.probe("probe", NOW), NOW)
    assert ok.all() and table.n[0] == table.n[1] and table.backlog[0] > 0 == table.backlog[1]
    chosen = table.choose(ok, bound.min_tpot_ms)
    grants = policy.tickets(cluster, [bound], NOW)
    assert [g.instance_id for g in grants] == [table.ids[chosen], "a"] == ["b", "a"]
    assert [g.rank for g in grants] == [0, 1]


def test_an_instance_gets_the_widest_bound_that_fits_it():
    policy = make_policy("hfx", PolicyConfig())
    small = make_instance("small", kv_capacity_tokens=400)   # 300 + 64 fits under the watermark; 1000 + 64 does not
    wide, narrow = TicketBound(1000, 64, 500.0, 40.0), TicketBound(300, 64, 500.0, 40.0)
    grants = policy.tickets(ClusterSnapshot((small, make_instance("big"))), [wide, narrow], NOW)
    assert {g.instance_id: g.bound for g in grants} == {"big": wide, "small": narrow}


def test_every_request_a_grant_covers_fits_that_instance_by_the_passes_own_test():
    """The guarantee a router relies on: monotone in prompt, output and both SLOs."""
    rng = random.Random(7)
    config = PolicyConfig()
    checked = with_backlog = 0
    for trial in range(150):
        policy = make_policy("hfx", config)
        running = tuple(_spec(f"t{trial}-{k}", rng.randint(10, 300), rng.randint(2, 80), rng.uniform(100, 2000),
                              rng.uniform(8, 60), at=NOW - rng.uniform(0, 2)) for k in range(rng.randint(0, 6)))
        # placed just now: their prefills are still queued (backlog), which test (5) charges
        inst = make_instance("m", running=running, placed_s=NOW - rng.choice([1.0, 0.0005]),
                             kv_capacity_tokens=rng.choice([2000, 20_000]))
        bound = TicketBound(rng.randint(10, 600), rng.randint(2, 128), rng.uniform(30, 800), rng.uniform(6, 60))
        grants = policy.tickets(ClusterSnapshot((inst,)), [bound], NOW)
        if not grants:
            continue
        for k in range(20):
            spec = _spec(f"c{k}", rng.randint(1, bound.max_prompt_tokens), rng.randint(1, bound.max_tokens),
                         bound.min_ttft_ms * rng.uniform(1, 3), bound.min_tpot_ms * rng.uniform(1, 3))
            assert bound.covers(spec, NOW)
            table = FitTable([inst], [policy._budget(inst, NOW)], config, NOW, banned=set())
            ok, _ = table.fits(spec, spec.max_tokens, NOW, best_effort=False)
            assert ok[0], (trial, bound, spec)
            checked += 1
            with_backlog += bool(table.backlog[0] > 0)
    assert checked > 500 and with_backlog > 50


class _Link:
    def __init__(self) -> None:
        self.sets: list[list[scheduler_pb2.Ticket]] = []

    def offer_tickets(self, tickets: scheduler_pb2.TicketSet) -> None:
        self.sets.append(list(tickets.tickets))


def _grants(*ids, bound=TicketBound(100, 10, 90.0, 20.0)):
    policy = make_policy("hfx", PolicyConfig())
    return policy.tickets(ClusterSnapshot(tuple(make_instance(i) for i in ids)), [bound], NOW)


def test_the_desk_gives_each_instance_to_one_link_and_writes_only_on_change():
    desk = TicketDesk("hfx")
    a, b = _Link(), _Link()
    desk.attach(a)
    desk.attach(b)
    addresses = {"i0": "h:0", "i1": "h:1"}
    desk.refresh(_grants("i0", "i1"), addresses)
    held = [t.instance_id for t in a.sets[-1]] + [t.instance_id for t in b.sets[-1]]
    assert sorted(held) == ["i0", "i1"]                 # one each, none twice
    writes = len(a.sets) + len(b.sets)
    desk.refresh(_grants("i0", "i1"), addresses)
    assert len(a.sets) + len(b.sets) == writes          # unchanged: no message
    spent = a.sets[-1][0]
    iid, ticket = desk.redeem(a, spent.ticket_id)
    assert (iid, ticket.ticket_id) == (spent.instance_id, spent.ticket_id)
    assert desk.redeem(a, spent.ticket_id)[1] is None    # one use
    writes = len(a.sets)
    desk.refresh([], addresses)                          # something waits: all revoked
    assert b.sets[-1] == [] and desk.outstanding() == 0
    assert len(a.sets) == writes                         # a holds none (it spent its one): nothing to say
    # a ticket spent after its revocation still names its instance (the request runs there)
    assert desk.redeem(b, b.sets[-2][0].ticket_id)[0] == b.sets[-2][0].instance_id
    assert desk.redeem(b, "t-never")[0] == ""


def test_a_detached_link_loses_its_tickets_to_the_others():
    desk = TicketDesk("hfx")
    a, b = _Link(), _Link()
    desk.attach(a)
    desk.attach(b)
    addresses = {"i0": "h:0", "i1": "h:1"}
    desk.refresh(_grants("i0", "i1"), addresses)
    desk.detach(a)
    desk.refresh(_grants("i0", "i1"), addresses)
    assert sorted(t.instance_id for t in b.sets[-1]) == ["i0", "i1"]
