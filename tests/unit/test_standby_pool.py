"""The standby pool's pure rules (plan, cost), its flags, hand-out order, and the SIMULATED
engine's pull (a real stream, received and checked, then dropped)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from services.common.model import ensure_default_model
from services.scaler.autoscale import AutoscaleConfig, Autoscaler, InstanceSignal, Phase, Signals, Start, StartKind
from services.scaler.autoscale.cost import CostMeter, fleet_cost
from services.scaler.standby import Standby, StandbyPool, plan_pool, standby_equivalents
from services.scaler.standby_cli import MAX_POOL, standby_check
from services.worker.engine.sim_weights import STORAGE, pull_and_drop
from services.worker.weights.source import CheckpointSource
from services.worker.weights.transport import transport_for


def test_plan_starts_only_the_missing_standbys_and_says_so():
    assert plan_pool(2, alive=0, ready=0).start == 2
    assert plan_pool(2, alive=1, ready=1) == plan_pool(2, 1, 1)
    plan = plan_pool(2, alive=1, ready=1)
    assert plan.start == 1 and plan.reason == "standby pool: 1 ready + 0 starting of 2; start 1"
    assert plan_pool(2, alive=2, ready=1).start == 0
    assert plan_pool(1, alive=3, ready=3).start == 0   # never negative


def test_pool_cost_is_its_rss_in_serving_instances_or_one_each_until_measured():
    assert standby_equivalents(0, 0, 500) == 0.0
    assert standby_equivalents(2, 0, 0) == 2.0                     # no serving worker measured yet
    # Two standbys of 300 MiB against a 1200 MiB serving worker: half an instance in all.
    assert standby_equivalents(2, 600 * 2**20, 1200 * 2**20) == pytest.approx(0.5)


def flags(**overrides) -> argparse.Namespace:
    base = {"standby_pool": 0, "d2d": False, "device": "cpu", "engine": "vllm"}
    return argparse.Namespace(**{**base, **overrides})


def test_flag_rules():
    assert standby_check(flags()) is None
    assert standby_check(flags(d2d=True, standby_pool=2)) is None          # vLLM engines
    assert standby_check(flags(d2d=True, standby_pool=2, engine="sim")) is None
    assert "needs --d2d" in standby_check(flags(standby_pool=1))
    assert f"at most {MAX_POOL}" in standby_check(flags(d2d=True, standby_pool=MAX_POOL + 1))
    assert "device cpu only" in standby_check(flags(d2d=True, device="cuda"))


def test_take_hands_out_the_oldest_ready_standby_and_none_when_none_is_ready():
    pool = StandbyPool(3, "hfx", spawn=lambda name, port: None)
    sleeper = subprocess.Popen([sys.executable, "-c", "pass"])
    sleeper.wait()
    pool.members = [Standby("hfx-s0", 1, sleeper, 0.0, ready_s=None),
                    Standby("hfx-s1", 2, sleeper, 1.0, ready_s=9.0),
                    Standby("hfx-s2", 3, sleeper, 2.0, ready_s=5.0)]
    assert pool.take().instance_id == "hfx-s2"
    assert pool.take().instance_id == "hfx-s1"
    assert pool.take() is None and [m.instance_id for m in pool.members] == ["hfx-s0"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return ensure_default_model(tmp_path_factory.mktemp("model") / "tiny")


def test_the_simulated_engine_receives_and_checks_the_real_stream(model_dir):
    source = CheckpointSource.load(model_dir)
    handle = transport_for("cpu").serve(source, "127.0.0.1", 0)
    try:
        for mode in ("tcp", "shm"):
            report = pull_and_drop(str(model_dir), handle.address, mode=mode)
            assert report["source"] == "donor" and report["transport"] == mode, report
            assert report["tensors"] == source.tensor_count and report["bytes"] == sum(e.info.nbytes for e in source.entries())
    finally:
        handle.close()
    # The donor is gone: the simulated engine reports storage and why, as vLLM's falls back.
    gone = pull_and_drop(str(model_dir), handle.address, mode="tcp", stall_timeout_s=1.0)
    assert gone["source"] == STORAGE and gone["failure"].startswith("donor-lost"), gone


# -- the pool in the autoscaler's cost model ----------------------------------------------------


def test_fleet_cost_counts_every_launched_instance_at_its_price_and_the_pool_by_its_memory_share():
    insts = [InstanceSignal("a", Phase.READY, device="cpu"), InstanceSignal("b", Phase.STARTING, device="big"),
             InstanceSignal("c", Phase.DRAINING, device="cpu")]
    paid, per_s = fleet_cost({"cpu": 1.0, "big": 4.0}, insts, standby_equivalents=0.5, standby_device="cpu")
    assert paid == pytest.approx(3.5) and per_s == pytest.approx(1 + 4 + 1 + 0.5)


def test_the_meter_integrates_each_interval_at_the_fleet_that_began_it():
    meter = CostMeter()
    meter.add(0.0, {"paid_instances": 2.5, "standby_equivalents": 0.5, "cost_per_s": 2.5})
    meter.add(10.0, {"paid_instances": 3.5, "standby_equivalents": 0.5, "cost_per_s": 3.5})
    meter.add(12.0, {})
    assert meter.instance_seconds == pytest.approx(25 + 7)
    assert meter.standby_instance_seconds == pytest.approx(5 + 1)
    assert meter.cost == pytest.approx(32)


def test_with_a_ready_standby_the_policy_starts_from_it_and_its_plan_carries_the_pool_cost():
    config = AutoscaleConfig(min_replicas=1, max_replicas=4, capacity_rps={"cpu": 10.0},
                             ready_times_s={StartKind.COLD: 60.0, StartKind.STANDBY: 3.0})
    one = (InstanceSignal("w0", Phase.READY, -1000.0, "cpu", 0, 0, 10.0),)
    plan = Autoscaler(config).on_tick(Signals(one, 30.0, start_kinds=(StartKind.STANDBY, StartKind.COLD),
                                              standby_equivalents=0.4), 0.0)
    starts = [a for a in plan.actions if isinstance(a, Start)]
    assert starts and all(a.start_kind is StartKind.STANDBY for a in starts), plan.reason
    assert "cpu/standby" in starts[0].reason
    assert plan.details["paid_instances"] == pytest.approx(1.4) and plan.details["standby_equivalents"] == 0.4
    # Without the pool: a cold start, and only the serving instance is paid for.
    plan = Autoscaler(config).on_tick(Signals(one, 30.0), 0.0)
    assert [a.start_kind for a in plan.actions if isinstance(a, Start)][0] is StartKind.COLD
    assert plan.details["paid_instances"] == pytest.approx(1.0)


# -- telling ready standbys their donor ahead (PrepareWeights, over real gRPC) ------------------


def test_each_ready_standby_is_told_its_donor_once_and_keeps_it_while_it_is_one():
    import asyncio

    import grpc

    from services.common.pb.hfx.v1 import common_pb2, worker_pb2_grpc
    from services.scaler.donor import DonorCandidate, choose_donor
    from services.worker.server import WorkerServicer
    from tests.unit.test_standby import PreparingEngine

    async def scenario():
        engine = PreparingEngine(prepared=True)
        server = grpc.aio.server()
        worker_pb2_grpc.add_WorkerServicer_to_server(WorkerServicer(engine, common_pb2.Instance(instance_id="hfx-s1"),
                                                                    standby=True), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        sleeper = subprocess.Popen([sys.executable, "-c", "pass"])
        sleeper.wait()
        pool = StandbyPool(2, "hfx", spawn=lambda name, port: None)
        starting, ready = Standby("hfx-s0", 1, sleeper, 0.0), Standby("hfx-s1", port, sleeper, 1.0, ready_s=2.0)
        pool.members = [starting, ready]
        donors = [DonorCandidate("busy", "m", "127.0.0.1:7001", running=4), DonorCandidate("idle", "m", "127.0.0.1:7002")]
        try:
            for _ in range(3):  # every scaler loop asks; the standby is told once
                pool.prepare(lambda prepared: choose_donor(donors, "m", prepared=prepared))
                await asyncio.gather(*pool._loads)
            assert engine.prepares == ["127.0.0.1:7002"] and ready.prepared_for == "127.0.0.1:7002"
            assert starting.prepare_asked == ""  # not up yet: nothing to tell
            donors[1] = DonorCandidate("idle", "m", "127.0.0.1:7002", running=9)  # now the busier one
            pool.prepare(lambda prepared: choose_donor(donors, "m", prepared=prepared))
            await asyncio.gather(*pool._loads)
            assert engine.prepares == ["127.0.0.1:7002"]  # it keeps the donor it mapped
            donors.pop()  # that donor is gone: the standby is told the other one
            pool.prepare(lambda prepared: choose_donor(donors, "m", prepared=prepared))
            await asyncio.gather(*pool._loads)
            assert engine.prepares == ["127.0.0.1:7002", "127.0.0.1:7001"] and ready.prepared_for == "127.0.0.1:7001"
        finally:
            await server.stop(None)

    asyncio.run(scenario())
