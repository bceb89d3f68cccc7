"""One applier for a policy's ScheduleResult (services/scheduler/apply.py), the same order in the
scheduler service and the simulator: preemptions, then decisions."""

from __future__ import annotations

import asyncio

from services.common.domain import (Decision, Leg, Preemption, RequestSpec, Role, RunningRequest, ScheduleResult,
                                    Verdict)
from services.common.grpcutil import Background
from services.common.pb.hfx.v1 import common_pb2
from services.report.records import RequestRecord
from services.scheduler.apply import apply
from services.scheduler.config import SchedulerConfig
from services.scheduler.server import SchedulerServicer
from services.scheduler.state import Waiting
from services.sim.instance import SimSeq
from services.sim.profiles import get_profile
from services.sim.runner import Simulation
from tests.unit.helpers import make_spec


class Recorder:
    """An executor that writes down what it is asked, in order."""

    def __init__(self, queued: dict[str, RequestSpec]) -> None:
        self.queued = queued
        self.calls: list[tuple] = []

    def preempt(self, preemption: Preemption) -> None:
        self.calls.append(("preempt", preemption.request_id))

    def take(self, request_id: str) -> RequestSpec | None:
        self.calls.append(("take", request_id))
        return self.queued.pop(request_id, None)

    def count(self, leg: Leg, spec: RequestSpec) -> None:
        self.calls.append(("count", spec.request_id, leg.role.value, leg.instance_id))

    def settle(self, decision: Decision, spec: RequestSpec) -> None:
        self.calls.append(("settle", spec.request_id, decision.verdict.value))


def result() -> ScheduleResult:
    split = Decision("s", Verdict.ADMIT, "split", instance_id="p0",
                     legs=(Leg(Role.PREFILL, "p0"), Leg(Role.DECODE, "d0")))
    return ScheduleResult(
        decisions=(Decision("a", Verdict.ADMIT, "fits", instance_id="i0"), Decision("r", Verdict.REJECT, "hopeless"),
                   Decision("gone", Verdict.ADMIT, "fits", instance_id="i1"), split),
        preemptions=(Preemption("i1", "victim", "budget -80 ms"),))


def test_preemptions_go_first_then_each_decision_taken_counted_by_leg_and_settled():
    rec = Recorder({rid: make_spec(request_id=rid) for rid in ("a", "r", "s")})   # "gone" left the queue
    assert apply(result(), rec) == 3
    assert rec.calls == [
        ("preempt", "victim"),
        ("take", "a"), ("count", "a", "colocated", "i0"), ("settle", "a", "admit"),
        ("take", "r"), ("settle", "r", "reject"),                  # a reject holds no instance
        ("take", "gone"),                                          # left meanwhile: nothing more
        ("take", "s"), ("count", "s", "prefill", "p0"), ("count", "s", "decode", "d0"), ("settle", "s", "admit"),
    ]


class ScriptedPolicy:
    """Returns one fixed result on its first pass, nothing after."""

    name = "scripted"

    def __init__(self, first: ScheduleResult) -> None:
        self.first: ScheduleResult | None = first

    def schedule(self, waiting, cluster, now_s):
        out, self.first = self.first or ScheduleResult(), None
        return out


class NoWorker(Background):
    """The servicer's background calls, noted instead of made: there is no worker to abort here."""

    def __init__(self, placement: Waiting) -> None:
        super().__init__()
        self.placement = placement
        self.answered_before_abort: list[bool] = []

    def spawn(self, coro) -> None:
        self.answered_before_abort.append(self.placement.future.done())
        coro.close()


def test_the_scheduler_service_sends_the_abort_before_it_answers_the_round_s_placements():
    """The victim's Abort task is started before the placement's future is resolved, so it runs
    (and its call leaves) first; the victim no longer counts on its instance, the placement does."""

    async def go():
        policy = ScriptedPolicy(ScheduleResult(decisions=(Decision("new", Verdict.ADMIT, "fits", instance_id="i0"),),
                                               preemptions=(Preemption("i0", "old", "budget -80 ms"),)))
        s = SchedulerServicer(SchedulerConfig(tickets=False), policy, cluster=None)
        s.state.set_instances([common_pb2.Instance(instance_id="i0", address="127.0.0.1:1", max_model_len=2048)])
        s.state.place("i0", make_spec(request_id="old"), 0.0)
        entry = Waiting(make_spec(request_id="new"), 0.0)
        s.state.waiting["new"] = entry
        s.background = background = NoWorker(entry)
        s.run_round(now_s=1.0)
        assert background.answered_before_abort == [False] and entry.future.done()
        assert set(s.state.running["i0"]) == {"new"}
        assert entry.future.result()[1] == {"i0": "127.0.0.1:1"}

    asyncio.run(go())


def test_the_simulator_preempts_before_it_places_in_the_same_pass():
    """The same result through the simulator: the victim is off its engine and queued again
    (with its generated tokens) before the new request joins the engine."""
    sim = Simulation(ScriptedPolicy(ScheduleResult()), get_profile("cpu-tiny"), instances=1, seed=1)
    node = sim.nodes[0]
    iid = node.sim.instance_id
    old, new = make_spec(request_id="old"), make_spec(request_id="new")
    sim.records = {"old": RequestRecord(old, 8), "new": RequestRecord(new, 8)}
    node.placed["old"] = RunningRequest(old, 0.0)
    node.sim.add(SimSeq("old", old.prompt_tokens, 8))
    sim.waiting.add(new)
    sim._refresh_view(node, running_changed=True)
    sim.policy = ScriptedPolicy(ScheduleResult(decisions=(Decision("new", Verdict.ADMIT, "fits", instance_id=iid),),
                                               preemptions=(Preemption(iid, "old", "budget -80 ms"),)))
    sim._schedule()
    assert [s.request_id for s in node.sim.waiting] == ["new"]
    assert set(node.placed) == {"new"} and [s.request_id for s in sim.waiting] == ["old"]
    assert sim.records["old"].preemptions == 1 and sim.records["new"].verdict == "admit"
    assert sim.policy_preemptions == 1 and sim.decisions == 1
