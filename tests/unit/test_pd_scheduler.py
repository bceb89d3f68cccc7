"""P/D in the scheduler service (real policy, real state, no Redis, no network), the worker and
`hfx up` role flags, and the scaler's role pools."""

from __future__ import annotations

import asyncio

import pytest

from services.cli import build_parser, parse_args
from services.common import convert, metrics
from services.common.domain import Leg, Role, Verdict
from services.common.errors import Unavailable
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2
from services.scaler.reconcile import pool_of, pool_slots, reconcile_set, slot_name
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.policy.base import gap_after_grace, gap_since
from services.scheduler.server import SchedulerServicer
from services.scheduler.state import Waiting
from tests.unit.helpers import make_spec


def servicer(*instances, policy="hfx", local_prefill=True, config=SchedulerConfig()) -> SchedulerServicer:
    cfg = PolicyConfig(pd_local_prefill=local_prefill)
    s = SchedulerServicer(config, make_policy(policy, cfg), cluster=None, policy_config=cfg)
    s.state.set_instances([common_pb2.Instance(instance_id=iid, address=f"127.0.0.1:{port}", role=role,
                                               max_model_len=8192)
                           for iid, port, role in instances])
    return s


PD = (("p0", 1, common_pb2.ROLE_PREFILL), ("d0", 2, common_pb2.ROLE_DECODE))


def place_now(s: SchedulerServicer, spec, now_s: float = 0.0):
    entry = Waiting(spec, now_s)
    s.state.waiting[spec.request_id] = entry
    s.run_round(now_s)
    return entry.future.result()


def test_split_placement_carries_both_legs_with_addresses_and_counts_on_both():
    async def go():
        s = servicer(*PD, policy="fcfs")
        decision, addresses = place_now(s, make_spec(request_id="x", prompt_tokens=2000))
        assert decision.legs == (Leg(Role.PREFILL, "p0"), Leg(Role.DECODE, "d0"))
        assert addresses == {"p0": "127.0.0.1:1", "d0": "127.0.0.1:2"}
        placement = convert.decision_to_placement(decision, addresses["p0"], "fcfs", addresses)
        assert (placement.instance_id, placement.address) == ("p0", "127.0.0.1:1")
        assert [(leg.role, leg.instance_id, leg.address) for leg in placement.legs] == [
            (common_pb2.ROLE_PREFILL, "p0", "127.0.0.1:1"), (common_pb2.ROLE_DECODE, "d0", "127.0.0.1:2")]
        assert s.state.running["p0"]["x"].role is Role.PREFILL and s.state.running["d0"]["x"].role is Role.DECODE
        # The prefill leg ends: only P is freed.
        s.complete(scheduler_pb2.CompleteRequest(request_id="x", instance_id="p0", leg=common_pb2.ROLE_PREFILL,
                                                 outcome=scheduler_pb2.OUTCOME_FINISHED))
        assert "x" not in s.state.running["p0"] and "x" in s.state.running["d0"]
        assert s.state.snapshot().get("p0").prefill_done_s > 0   # P's queue restarts from now
        # The request ends (the router may name the first leg): D is freed too.
        s.complete(scheduler_pb2.CompleteRequest(request_id="x", instance_id="p0",
                                                 outcome=scheduler_pb2.OUTCOME_FINISHED, output_tokens=5))
        assert s.state.inflight_count() == 0 and not s.state.held
    asyncio.run(go())


def test_a_request_ended_before_its_prefill_leg_frees_both():
    async def go():
        s = servicer(*PD, policy="fcfs")
        place_now(s, make_spec(request_id="y", prompt_tokens=2000))
        s.complete(scheduler_pb2.CompleteRequest(request_id="y", instance_id="d0",
                                                 outcome=scheduler_pb2.OUTCOME_ABORTED))
        assert s.state.inflight_count() == 0
    asyncio.run(go())


def test_hfx_placement_reason_reaches_the_placement():
    async def go():
        s = servicer(*PD)
        split_before = metrics.PLACEMENTS.labels("hfx", "split")._value.get()
        decision, addresses = place_now(s, make_spec(request_id="z", prompt_tokens=2000, max_tokens=16))
        assert metrics.PLACEMENTS.labels("hfx", "split")._value.get() == split_before + 1
        assert decision.verdict is Verdict.ADMIT and len(decision.legs) == 2
        assert "P/D: prefill" in decision.reason and "KV transfer" in decision.reason
        assert set(addresses) == {"p0", "d0"}
    asyncio.run(go())


def test_decode_only_cluster_without_local_prefill_is_unavailable_with_reason():
    async def go():
        s = servicer(("d0", 2, common_pb2.ROLE_DECODE), local_prefill=False,
                     config=SchedulerConfig(serving_gap_grace_s=0.0))
        with pytest.raises(Unavailable, match="no prefill capacity.*d0"):
            await s.place(scheduler_pb2.PlaceRequest(request_id="q", prompt_tokens=10, max_tokens=4), None)
        assert not s.state.waiting
    asyncio.run(go())


def test_a_serving_gap_refuses_only_once_it_has_lasted_the_grace():
    grace = SchedulerConfig().serving_gap_grace_s
    s = servicer(("p0", 1, common_pb2.ROLE_PREFILL))
    # Seen at 100 s: within the grace the cluster counts as starting (requests wait).
    assert s._serving_gap(100.0) == ""
    assert s._serving_gap(100.0 + grace - 0.1) == ""
    # Another P registers: still the same gap, its clock keeps running.
    s.state.set_instances(list(s.state.instances.values()) + [common_pb2.Instance(
        instance_id="p1", address="127.0.0.1:3", role=common_pb2.ROLE_PREFILL)])
    assert s._serving_gap(100.0 + grace).startswith("no decode capacity")
    # A D closes it; a later gap gets its own grace.
    s.state.set_instances(list(s.state.instances.values()) + [common_pb2.Instance(
        instance_id="d0", address="127.0.0.1:4", role=common_pb2.ROLE_DECODE)])
    assert s._serving_gap(200.0) == ""
    del s.state.instances["d0"]
    assert s._serving_gap(300.0) == "" and s._serving_gap(300.0 + grace).startswith("no decode capacity")


def test_gap_rules_keep_the_first_gaps_start_and_wait_out_the_grace():
    assert gap_since("", 5.0, "no decode capacity", 9.0) == 9.0            # a new gap starts now
    assert gap_since("no decode capacity", 5.0, "no prefill capacity", 9.0) == 5.0   # gap follows gap
    assert gap_since("no decode capacity", 5.0, "", 9.0) == 9.0            # closed
    assert gap_after_grace("gap", 5.0, 6.9, 2.0) == "" and gap_after_grace("gap", 5.0, 7.0, 2.0) == "gap"
    assert gap_after_grace("", 0.0, 100.0, 2.0) == ""


def test_refusals_are_kept_for_the_role_loop_only_when_it_runs():
    for on in (False, True):
        s = servicer(("p0", 1, common_pb2.ROLE_PREFILL), ("d0", 2, common_pb2.ROLE_DECODE),
                     config=SchedulerConfig(role_changes=on))
        s.refused.append(make_spec())
        assert len(s.refused) == (1 if on else 0)


def test_worker_role_flag_parses_and_refuses_unknown_roles(capsys):
    args = parse_args(build_parser(), ["worker", "--instance-id", "w", "--role", "decode"])
    assert args.role is Role.DECODE
    with pytest.raises(SystemExit) as exit_:
        parse_args(build_parser(), ["worker", "--instance-id", "w", "--role", "middle"])
    assert exit_.value.code == 2
    assert "unknown role 'middle'; choose one of colocated, prefill, decode" in capsys.readouterr().err


@pytest.mark.parametrize("argv, problem", [
    (["--decode", "2", "--no-pd-local-prefill"], "no prefill capacity"),
    (["--prefill", "2"], "no decode capacity"),
    (["--workers", "0"], "no workers"),
])
def test_up_refuses_worker_mixes_that_cannot_serve(argv, problem, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(build_parser(), ["up", *argv])
    assert exit_.value.code == 2 and problem in capsys.readouterr().err


def test_up_counts_default_to_one_colocated_or_none_beside_pd():
    assert parse_args(build_parser(), ["up"]).workers == 1
    args = parse_args(build_parser(), ["up", "--prefill", "1", "--decode", "2"])
    assert (args.workers, args.prefill, args.decode) == (0, 1, 2)
    assert parse_args(build_parser(), ["up", "--decode", "1"]).workers == 0   # D prefills itself


def test_scaler_role_pools_are_apart():
    assert [slot_name("hfx", i) for i in sorted(pool_slots("prefill", 2) | pool_slots("decode", 1))] == \
        ["hfx-p0", "hfx-p1", "hfx-d0"]
    assert slot_name("hfx", 3) == "hfx-w3" and pool_of(2001) == "decode"
    # Reconciling the P/D pool never touches a colocated slot (they are not in its slot list).
    actions = reconcile_set(pool_slots("prefill", 1), [], 0.0)
    assert actions.start == (1000,)
