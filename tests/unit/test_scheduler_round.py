"""The scheduler service's round: real policy, real state, no Redis, no network."""

import asyncio

from services.common import metrics
from services.common.domain import InstanceLoad, ScheduleResult, Slo, Verdict
from services.common.pb.hfx.v1 import common_pb2
from services.scheduler import registry_sync
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import make_policy
from services.scheduler.server import SchedulerServicer
from services.scheduler.state import Waiting
from tests.unit.helpers import make_spec


def servicer(policy="least-load", **config) -> SchedulerServicer:
    s = SchedulerServicer(SchedulerConfig(**config), make_policy(policy), cluster=None)
    s.state.set_instances([
        common_pb2.Instance(instance_id="i0", address="127.0.0.1:1", max_model_len=2048),
        common_pb2.Instance(instance_id="i1", address="127.0.0.1:2", max_model_len=2048),
    ])
    return s


def enqueue(s: SchedulerServicer, spec, now_s: float) -> Waiting:
    entry = Waiting(spec, now_s)
    s.state.waiting[spec.request_id] = entry
    return entry


def test_round_places_waiting_requests_and_counts_them_running():
    async def go():
        s = servicer()
        a, b = enqueue(s, make_spec(request_id="a"), 0.0), enqueue(s, make_spec(request_id="b"), 0.0)
        s.run_round(now_s=1.0)
        (da, addrs_a), (db, _) = a.future.result(), b.future.result()
        assert da.verdict is Verdict.ADMIT and db.verdict is Verdict.ADMIT
        assert {da.instance_id, db.instance_id} == {"i0", "i1"}  # least-load spreads them
        assert addrs_a == {da.instance_id: s.state.instances[da.instance_id].address}
        assert s.state.inflight_count() == 2 and not s.state.waiting
    asyncio.run(go())


def test_requests_waiting_too_long_are_rejected_with_a_reason():
    async def go():
        s = servicer(max_wait_s=5.0)
        s.state.instances.clear()  # nothing to place on
        entry = enqueue(s, make_spec(request_id="late"), 0.0)
        s.run_round(now_s=4.0)
        assert not entry.future.done()
        s.run_round(now_s=5.5)
        decision, addresses = entry.future.result()
        assert decision.verdict is Verdict.REJECT and "queue" in decision.reason and decision.retry_after_ms > 0
        assert addresses == {}
    asyncio.run(go())


def test_failed_instance_is_skipped_until_it_reports_again():
    async def go():
        s = servicer()
        s.state.quarantine("i0", now_s=100.0)
        for i in range(3):
            entry = enqueue(s, make_spec(request_id=f"r{i}"), 100.0)
            s.run_round(now_s=100.5)
            assert entry.future.result()[0].instance_id == "i1"
        s.state.set_load("i0", InstanceLoad(reported_s=99.0))   # older than the failure: still out
        assert "i0" not in {v.instance_id for v in s.state.snapshot().instances}
        s.state.set_load("i0", InstanceLoad(reported_s=101.0))  # fresh report: back in
        assert "i0" in {v.instance_id for v in s.state.snapshot().instances}
    asyncio.run(go())


def test_completion_frees_the_slot():
    async def go():
        s = servicer()
        entry = enqueue(s, make_spec(request_id="x"), 0.0)
        s.run_round(now_s=0.1)
        iid = entry.future.result()[0].instance_id
        assert s.state.complete(iid, "x") is not None and s.state.inflight_count() == 0
    asyncio.run(go())


class _Broken:
    name = "broken"

    def schedule(self, waiting, cluster, now_s):
        raise RuntimeError("bug in a policy")


def test_a_failing_policy_leaves_requests_queued_until_the_wait_limit():
    async def go():
        s = servicer(max_wait_s=5.0)
        s.policy = _Broken()
        entry = enqueue(s, make_spec(request_id="q"), 0.0)
        s.run_round(now_s=1.0)  # does not raise: the round loop must survive a policy bug
        assert not entry.future.done() and "q" in s.state.waiting
        s.run_round(now_s=6.0)
        assert entry.future.result()[0].verdict is Verdict.REJECT
    asyncio.run(go())


class _PreemptAll:
    name = "preempt-all"

    def schedule(self, waiting, cluster, now_s):
        from services.common.domain import Preemption, ScheduleResult
        return ScheduleResult((), tuple(Preemption(i.instance_id, r.spec.request_id, "test")
                                        for i in cluster.instances for r in i.running))


def test_preemption_the_worker_cannot_hear_keeps_the_request_counted():
    """Nothing waits, so only in-flight protection runs; the worker's address refuses connections,
    so the request keeps running there and must stay in the instance's running set."""
    from services.common import procs

    async def go():
        s = SchedulerServicer(SchedulerConfig(worker_call_timeout_s=1.0), _PreemptAll(), cluster=None)
        s.state.set_instances([common_pb2.Instance(instance_id="i0", address=f"127.0.0.1:{procs.free_port()}")])
        s.state.place("i0", make_spec(request_id="victim"), 0.0)
        s.run_round(now_s=1.0)
        assert s.state.inflight_count() == 0          # released at once, so the next round sees the room
        await s.background.drain()
        assert "victim" in s.state.running["i0"]      # restored: the worker was never told
    asyncio.run(go())


class _CountingPolicy:
    name = "counting"

    def __init__(self) -> None:
        self.calls: list[float] = []

    def schedule(self, waiting, cluster, now_s):
        from services.common.domain import ScheduleResult
        self.calls.append(now_s)
        return ScheduleResult((), ())


def test_with_nothing_queued_protection_rounds_run_at_a_bounded_rate():
    policy = _CountingPolicy()
    s = SchedulerServicer(SchedulerConfig(protect_interval_s=0.2), policy, cluster=None)
    s.state.set_instances([common_pb2.Instance(instance_id="i0", address="127.0.0.1:1")])
    s.state.place("i0", make_spec(request_id="running"), 0.0)
    for now_s in (1.0, 1.05, 1.1, 1.19, 1.21, 1.3, 1.45):  # wakes from completions and load reports
        s.run_round(now_s)
    assert policy.calls == [1.0, 1.21, 1.45]

    async def queue_one() -> None:
        s.state.waiting["queued"] = Waiting(make_spec(request_id="queued"), 1.42)
        s.run_round(1.43)                                  # something waits: the round runs at once
    asyncio.run(queue_one())
    assert policy.calls[-1] == 1.43


def test_hfx_budgets_reach_the_instance_budget_gauge():
    from services.common import metrics

    async def go():
        s = servicer(policy="hfx")
        entry = enqueue(s, make_spec(request_id="b1"), 0.0)
        s.run_round(now_s=0.01)
        iid = entry.future.result()[0].instance_id
        registry_sync.export_instances(s)
        placed = metrics.REGISTRY.get_sample_value("hfx_instance_budget_ms", {"instance": iid})
        assert placed is not None and 0 < placed < float("inf")   # a protected request runs there
        assert s.policy.budgets_ms()[iid] == placed
        s.state.instances.pop(iid)                                 # gone: its series goes too
        registry_sync.export_instances(s)
        assert metrics.REGISTRY.get_sample_value("hfx_instance_budget_ms", {"instance": iid}) is None
    asyncio.run(go())


def test_place_refuses_a_negative_resumed_token_count_by_name():
    import pytest

    from services.common import convert
    from services.common.errors import InvalidArgument

    class Context:
        def invocation_metadata(self):
            return ()

    async def go():
        s = servicer(policy="hfx")
        msg = convert.spec_to_pb(make_spec(request_id="x"))
        msg.resumed_tokens = -1
        with pytest.raises(InvalidArgument, match="resumed_tokens"):
            await s.Place(msg, Context())
        assert not s.state.waiting
    asyncio.run(go())


def test_an_instance_the_scaler_drains_takes_no_new_placements():
    from services.common.domain import InstanceLoad
    from services.common.pb.hfx.v1 import common_pb2
    from services.scheduler.state import ClusterState

    state = ClusterState()
    state.set_instances([common_pb2.Instance(instance_id=i, address=f"a{i}") for i in ("w0", "w1")])
    state.set_load("w1", InstanceLoad(running_requests=2, reported_s=1.0))
    state.draining = {"w1"}
    views = {v.instance_id: v for v in state.snapshot().instances}
    assert views["w0"].accepting and not views["w1"].accepting
    assert views["w1"].load.running_requests == 2      # still seen, so its running requests are protected


class _Router:
    """A ticket holder that keeps every set it was offered."""

    def __init__(self) -> None:
        self.offered: list[set[str]] = []

    def offer_tickets(self, tickets) -> None:
        self.offered.append({t.instance_id for t in tickets.tickets})


def test_a_round_that_placed_grants_tickets_again_at_once():
    """A ticket is the fit test on its instance as a round found it. Before issue 17's third pass
    a round that placed a request there left the ticket standing until the next refresh (50 ms),
    and a request spending it queued behind the prompt the round had just placed."""
    async def go():
        s = servicer("hfx")
        router = _Router()
        s.desk.attach(router)
        for i in range(4):
            s.desk.saw(make_spec(request_id=f"seen{i}", prompt_tokens=100, max_tokens=20, slo=Slo(60.0, 100.0)))
        s.refresh_tickets(0.0)
        assert router.offered[-1] == {"i0", "i1"}
        long = enqueue(s, make_spec(request_id="long", prompt_tokens=2000, max_tokens=20, slo=Slo(5000.0, 100.0)), 0.0)
        s.run_round(now_s=0.01)      # before the refresh is due
        where = long.future.result()[0].instance_id
        assert router.offered[-1] == {"i0", "i1"} - {where}
    asyncio.run(go())


class _Deferring:
    """A policy stand-in that defers every waiting request (what hfx's pressure deferral does to
    the ones it holds back) and counts it, as the Defers protocol declares."""

    name = "deferring"

    def __init__(self) -> None:
        self.deferrals = 0

    def schedule(self, waiting, cluster, now_s):
        self.deferrals += len(waiting)
        return ScheduleResult()


def test_deferrals_are_exported_as_a_counter_by_their_increase_per_round():
    def exported() -> float:
        return metrics.REGISTRY.get_sample_value("hfx_scheduler_deferrals_total", {"policy": "deferring"}) or 0.0

    async def go():
        s = SchedulerServicer(SchedulerConfig(), _Deferring(), cluster=None)
        s.state.set_instances([common_pb2.Instance(instance_id="i0", address="127.0.0.1:1", max_model_len=2048)])
        before = exported()
        enqueue(s, make_spec(request_id="a"), 0.0)
        enqueue(s, make_spec(request_id="b"), 0.0)
        s.run_round(now_s=1.0)
        assert exported() - before == 2          # both held back once
        s.run_round(now_s=2.0)
        assert exported() - before == 4          # the count's increase, not its total, each round
    asyncio.run(go())
