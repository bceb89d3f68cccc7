"""The role-flip policy core (services/scheduler/roles), pure: snapshots and times in, decisions
with reasons out. Also the link plan and the one serving-gap rule for role changes."""

from __future__ import annotations

import math

from services.common.domain import ClusterSnapshot, LatencyModel, Role, RunningRequest, Slo
from services.scaler.links import plan_links
from services.scheduler.policy.base import PolicyConfig, role_change_gap
from services.scheduler.roles import RoleConfig, RolePolicy, stage_pressure
from tests.unit.helpers import make_instance, make_spec

MODEL = LatencyModel(3.0, 0.02, 0.15, 0.0005)
# D may not prefill here: the prefill stage is P alone (the local-prefill case has its own tests)
CONFIG = PolicyConfig(default_latency_model=MODEL, pd_local_prefill=False)
LOCAL = PolicyConfig(default_latency_model=MODEL)


def _cluster(p_legs: int = 0, d_legs: int = 0, n_p: int = 2, n_d: int = 2, prompt: int = 4000,
             tpot_ms: float = 5.0) -> ClusterSnapshot:
    """n_p prefill and n_d decode instances; each P has p_legs prefill legs of `prompt` tokens
    queued (TTFT 500 ms), each D d_legs decodes running with TPOT `tpot_ms`."""
    insts = []
    for i in range(n_p):
        legs = tuple(RunningRequest(make_spec(request_id=f"p{i}-{k}", prompt_tokens=prompt, slo=Slo(500, 50)), 0.0,
                                    Role.PREFILL) for k in range(p_legs))
        insts.append(make_instance(f"p{i}", role=Role.PREFILL, running=legs, latency_model=MODEL))
    for i in range(n_d):
        legs = tuple(RunningRequest(make_spec(request_id=f"d{i}-{k}", prompt_tokens=200, max_tokens=100,
                                              slo=Slo(500, tpot_ms)), 0.0, Role.DECODE) for k in range(d_legs))
        insts.append(make_instance(f"d{i}", role=Role.DECODE, running=legs, latency_model=MODEL))
    return ClusterSnapshot(tuple(insts))


IDLE = _cluster()
# Queued at the scheduler: long prompts an idle D could decode (they wait for a prefill), and
# tight-TPOT requests no loaded D can take (they wait for decode room).
WAIT_P = [make_spec(request_id=f"wp{k}", prompt_tokens=4000, max_tokens=50, slo=Slo(500, 50)) for k in range(3)]
WAIT_D = [make_spec(request_id=f"wd{k}", prompt_tokens=200, max_tokens=50, slo=Slo(500, 5.0)) for k in range(3)]


def test_pressure_by_hand():
    s = stage_pressure(_cluster(p_legs=4, n_d=1), [], CONFIG)
    # 4 legs x 4000 tokens on each of 2 P: 16000 tokens per P x (0.02 + 3/512) ms/token / 500 ms
    assert math.isclose(s.prefill, 16000 * (0.02 + 3 / 512) / 500)
    assert s.decode == 0.0 and (s.n_prefill, s.n_decode) == (2, 1)
    d = stage_pressure(_cluster(d_legs=10, n_p=1), [], CONFIG)
    # 10 decodes of 200 + 100/2 KV tokens: step 3 + 1.5 + 0.0005*2500 = 5.75 ms over a 5 ms TPOT
    assert math.isclose(d.decode, 5.75 / 5.0)


def test_with_local_prefill_decode_instances_count_as_prefill_capacity():
    # 2 P + 2 idle D: 4 instances' worth of prefill, so half the pressure of P alone
    s = stage_pressure(_cluster(p_legs=4), [], LOCAL)
    assert math.isclose(s.prefill, 2 * 16000 * (0.02 + 3 / 512) / 500 / 4)
    # moving an idle D to P adds no prefill capacity and takes a D: nothing to gain
    prefill, decode = s.after_flip(Role.PREFILL)
    assert math.isclose(prefill, s.prefill) and decode == 0.0
    decision = RolePolicy(RoleConfig(high=0.1), LOCAL).on_tick(_cluster(p_legs=4), WAIT_P, 100.0)
    assert not decision.flip and "gains" in decision.reason


def test_queued_requests_count_for_the_stage_that_holds_them_back():
    s = stage_pressure(_cluster(d_legs=10, tpot_ms=20.0), WAIT_P + WAIT_D, CONFIG)
    # D with WAIT_P added: 3 + 0.15*11 + 0.0005*(2500 + 4025) = 7.9 ms <= 20: it could go there;
    # with a WAIT_D: 3 + 1.65 + 0.0005*2725 = 6.0 ms > its own 5 ms TPOT: it waits for decode room
    assert (s.waiting_prefill, s.waiting_decode) == (3, 3)
    assert s.queued_prefill_tokens == 3 * 4000


def test_prefill_pressure_flips_the_decode_instance_with_least_work_left_and_says_why():
    cluster = _cluster(p_legs=8)
    busy = (RunningRequest(make_spec(request_id="x", max_tokens=100), 99.9, Role.DECODE),)   # placed 0.1 s ago
    insts = tuple(i if i.instance_id != "d0" else make_instance("d0", role=Role.DECODE, running=busy,
                                                                latency_model=MODEL) for i in cluster.instances)
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(ClusterSnapshot(insts), WAIT_P, 100.0)
    assert decision.flip and decision.instance_id == "d1"   # d0 still decodes; d1 has nothing left
    assert (decision.from_role, decision.to_role) == (Role.DECODE, Role.PREFILL)
    assert decision.reason.startswith("prefill pressed, to prefill") and "d1 has the least decode work left" in decision.reason
    assert decision.gain > 0


def test_decode_pressure_flips_a_prefill_instance():
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(_cluster(d_legs=30), WAIT_D, 100.0)
    assert decision.flip and decision.to_role is Role.DECODE and decision.instance_id in ("p0", "p1")


def test_no_flip_when_both_stages_hold_their_slos():
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(IDLE, [], 100.0)
    assert not decision.flip and "both below" in decision.reason and decision.held_by == "below_high"


def test_no_flip_for_a_full_stage_that_nothing_waits_for():
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(_cluster(p_legs=8), [], 100.0)
    assert not decision.flip and "prefill is full but nothing waits for it" in decision.reason
    assert decision.held_by == "nothing_waits"


def test_a_stage_is_never_emptied():
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(_cluster(p_legs=8, n_p=1, n_d=1), WAIT_P, 100.0)
    assert not decision.flip and "no stage can give up an instance" in decision.reason
    assert decision.held_by == "no_donor_stage"


def test_no_flip_when_the_gain_does_not_pay_for_the_change():
    # Barely over `high` on the prefill side: one more P (of 8) gains less than min_gain + cost.
    cfg = RoleConfig(high=0.3, min_gain=0.5)
    decision = RolePolicy(cfg, CONFIG).on_tick(_cluster(p_legs=4, n_p=8, n_d=8), WAIT_P, 100.0)
    assert not decision.flip and "gains" in decision.reason and "cost" in decision.reason
    assert decision.held_by == "gain_below_cost"


def test_an_alternating_signal_flips_an_instance_at_most_once_per_hold_time():
    cfg = RoleConfig(hold_s=30.0, cooldown_s=1.0, reverse_s=10.0, smoothing=1.0)
    policy = RolePolicy(cfg, CONFIG)
    roles = {i.instance_id: i.role for i in _cluster(n_p=3, n_d=3).instances}
    flips: dict[str, list[float]] = {}
    directions: list[tuple[float, Role]] = []
    for tick in range(240):                      # 4 minutes of 1 s ticks, signal flipping every tick
        heavy, waiting = ((_cluster(p_legs=8, n_p=3, n_d=3), WAIT_P) if tick % 2 == 0
                          else (_cluster(d_legs=40, n_p=3, n_d=3), WAIT_D))
        # the same load over the instances' current roles
        insts = tuple(_with_role(i, roles) for i in heavy.instances)
        d = policy.on_tick(ClusterSnapshot(insts), waiting, float(tick))
        if d.flip:
            roles[d.instance_id] = d.to_role
            flips.setdefault(d.instance_id, []).append(float(tick))
            directions.append((float(tick), d.to_role))
    assert len(directions) >= 3 and {r for _, r in directions} == {Role.PREFILL, Role.DECODE}, \
        "the signal is strong enough to flip both ways"
    for times in flips.values():
        assert all(b - a >= cfg.hold_s for a, b in zip(times, times[1:]))
    for (t0, r0), (t1, r1) in zip(directions, directions[1:]):
        assert t1 - t0 >= (cfg.reverse_s if r1 is not r0 else cfg.cooldown_s)


def _with_role(inst, roles):
    from dataclasses import replace
    legs = tuple(replace(r, role=Role.PREFILL if roles[inst.instance_id] is Role.PREFILL else Role.DECODE)
                 for r in inst.running)
    return replace(inst, role=roles[inst.instance_id], running=legs)


def test_role_change_gap_is_serving_gap_after_the_change():
    cluster = _cluster(n_p=1, n_d=1)
    assert "no decode capacity" in role_change_gap(cluster, "d0", Role.PREFILL, LOCAL)
    assert role_change_gap(cluster, "p0", Role.DECODE, LOCAL) == ""   # D may prefill itself
    strict = PolicyConfig(pd_local_prefill=False)
    assert "no prefill capacity" in role_change_gap(cluster, "p0", Role.DECODE, strict)
    assert role_change_gap(cluster, "p0", Role.COLOCATED, strict) == ""


def test_link_plan_links_every_prefill_to_every_decode_and_drops_gone_or_reroled_ends():
    roles = {"p0": Role.PREFILL, "p1": Role.PREFILL, "d0": Role.DECODE, "c0": Role.COLOCATED}
    plan = plan_links(roles, [("p0", "d0"), ("p1", "dx"), ("d0", "p0")], gone={"p1"})
    assert plan.add == ()
    assert dict(plan.remove) == {("d0", "p0"): "d0 is now decode", ("p1", "dx"): "p1 exited"}
    plan = plan_links({**roles, "d1": Role.DECODE}, [("p0", "d0")])
    assert plan.add == (("p0", "d1"), ("p1", "d0"), ("p1", "d1")) and plan.remove == ()


def _with_colocated(cluster: ClusterSnapshot, n_c: int, legs: int = 0, tpot_ms: float = 5.0) -> ClusterSnapshot:
    """`cluster` plus n_c colocated instances, each running `legs` whole requests (TPOT `tpot_ms`)."""
    insts = []
    for i in range(n_c):
        running = tuple(RunningRequest(make_spec(request_id=f"c{i}-{k}", prompt_tokens=200, max_tokens=100,
                                                 slo=Slo(500, tpot_ms)), 0.0, Role.COLOCATED) for k in range(legs))
        insts.append(make_instance(f"c{i}", role=Role.COLOCATED, running=running, latency_model=MODEL))
    return ClusterSnapshot(cluster.instances + tuple(insts))


# Short prompts (run whole): with D not allowed to prefill, only a C may serve them.
WAIT_C = [make_spec(request_id=f"wc{k}", prompt_tokens=40, max_tokens=50, slo=Slo(500, 5.0)) for k in range(4)]


def test_an_idle_colocated_instance_is_prefill_capacity():
    alone = stage_pressure(_cluster(p_legs=4), [], CONFIG)
    with_c = stage_pressure(_with_colocated(_cluster(p_legs=4), 1), [], CONFIG)
    # 2 P + one idle C: 3 instances' worth of prefill instead of 2
    assert math.isclose(with_c.prefill, alone.prefill * 2 / 3)
    assert (with_c.n_colocated, with_c.colocated) == (1, 0.0)
    # so moving that idle C to P adds no prefill capacity: no flip for it
    prefill, _, _ = with_c.after_move(Role.COLOCATED, Role.PREFILL)
    assert math.isclose(prefill, with_c.prefill)


def test_decode_pressure_takes_an_idle_colocated_instance_before_a_prefill_one():
    cluster = _with_colocated(_cluster(d_legs=30), 2)
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(cluster, WAIT_D, 100.0)
    assert decision.flip and (decision.from_role, decision.to_role) == (Role.COLOCATED, Role.DECODE)
    assert decision.instance_id in ("c0", "c1") and "colocated" in decision.reason


def test_a_busy_last_colocated_instance_is_not_taken():
    # its whole requests would have nowhere to go: a P gives up its place instead
    cluster = _with_colocated(_cluster(d_legs=30), 1, legs=2, tpot_ms=50.0)
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(cluster, WAIT_D, 100.0)
    assert decision.flip and (decision.from_role, decision.to_role) == (Role.PREFILL, Role.DECODE)


def test_a_pressed_colocated_stage_takes_an_idle_decode_instance_before_a_busy_prefill_one():
    cluster = _with_colocated(_cluster(p_legs=2, n_p=2, n_d=3), 1, legs=30)
    s = stage_pressure(cluster, WAIT_C, CONFIG)
    assert s.waiting_colocated == 4 and s.colocated > 1.0 and 0.0 < s.prefill < 1.0 and s.decode == 0.0
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(cluster, WAIT_C, 100.0)
    assert decision.flip and decision.to_role is Role.COLOCATED and decision.from_role is Role.DECODE, decision.reason
    assert decision.reason.startswith("colocated pressed, to colocated")


def test_colocated_pressure_never_empties_prefill_or_decode():
    cluster = _with_colocated(_cluster(n_p=1, n_d=1), 1, legs=30)
    decision = RolePolicy(RoleConfig(), CONFIG).on_tick(cluster, WAIT_C, 100.0)
    assert not decision.flip and "no stage can give up an instance" in decision.reason


def test_a_flip_out_of_colocated_is_not_reversed_within_the_reverse_wait():
    policy = RolePolicy(RoleConfig(hold_s=30.0, cooldown_s=1.0, reverse_s=20.0, smoothing=1.0), CONFIG)
    first = policy.on_tick(_with_colocated(_cluster(d_legs=30), 2), WAIT_D, 100.0)
    assert first.flip and first.from_role is Role.COLOCATED
    # 5 s later C is pressed: taking a D back into C reverses the last flip
    later = policy.on_tick(_with_colocated(_cluster(n_p=2, n_d=3), 1, legs=30), WAIT_C, 105.0)
    assert not later.flip and f"a flip back to colocated waits {policy.config.reverse_s:.0f} s" in later.reason
    assert policy.on_tick(_with_colocated(_cluster(n_p=2, n_d=3), 1, legs=30), WAIT_C,
                          100.0 + policy.config.reverse_s + 1).flip


def test_requests_turned_away_that_an_idle_p_would_have_served_press_the_prefill_stage():
    # P busy with loose-TTFT legs (5 s): by the mean the stage is far from pressed, and the tight
    # requests it could not take in time were rejected before any tick saw them queued.
    loose = tuple(RunningRequest(make_spec(request_id=f"l{k}", prompt_tokens=2000, slo=Slo(5000, 50)), 0.0,
                                 Role.PREFILL) for k in range(2))
    insts = [make_instance(f"p{i}", role=Role.PREFILL, running=loose, latency_model=MODEL) for i in range(2)]
    insts += [make_instance(f"d{i}", role=Role.DECODE, latency_model=MODEL) for i in range(4)]
    cluster = ClusterSnapshot(tuple(insts))
    tight = [make_spec(request_id=f"t{k}", prompt_tokens=600, max_tokens=50, slo=Slo(100, 50)) for k in range(2)]
    assert stage_pressure(cluster, [], CONFIG).prefill < 0.9
    s = stage_pressure(cluster, [], CONFIG, refused=tight)
    assert s.prefill == 1.0 and s.waiting(Role.PREFILL) == 2 and "2 turned away" in s.detail
    # A request no idle P could serve in time (its own prefill alone is over its TTFT) says nothing.
    hopeless = [make_spec(request_id="h", prompt_tokens=4000, max_tokens=50, slo=Slo(10, 50))]
    assert stage_pressure(cluster, [], CONFIG, refused=hopeless).prefill < 0.9
    # Sustained refusals flip a D to P (after the smoothing); without them nothing flips.
    with_refusals, without = RolePolicy(RoleConfig(), CONFIG), RolePolicy(RoleConfig(), CONFIG)
    flips = [with_refusals.on_tick(cluster, [], 100.0 + t, tight) for t in range(4)]
    quiet = [without.on_tick(cluster, [], 100.0 + t) for t in range(4)]
    assert any(d.flip and d.to_role is Role.PREFILL and d.from_role is Role.DECODE for d in flips), [d.reason for d in flips]
    assert not any(d.flip for d in quiet) and quiet[-1].held_by == "below_high"
