"""P/D autoscaling (services/scaler/autoscale/pd.py): one policy decides P and D together; signals
in, plans out, no processes. Figures by hand: P carries 4,000 prompt tokens/s within the TTFT SLOs
and D 1,000 output tokens/s within the TPOT SLOs, scale-up at 80% of capacity."""

import pytest

from services.common.errors import InvalidArgument
from services.scaler.autoscale import AutoscaleConfig, InstanceSignal, Phase, Start, StartKind
from services.scaler.autoscale.actions import Drain, Flip
from services.scaler.autoscale.pd import PDAutoscaler, PDConfig, PDSignals, RoleLoad
from services.scaler.autoscale.signals import Attainment

P_TPS, D_TPS = 4000.0, 1000.0


def role_config(**overrides) -> AutoscaleConfig:
    base = dict(min_replicas=1, max_replicas=8, warmup_s=30.0, scale_down_cooldown_s=60.0,
                ready_times_s={StartKind.COLD: 60.0})
    base.update(overrides)
    return AutoscaleConfig(**base)


def make(max_total: int = 16, **overrides) -> PDAutoscaler:
    return PDAutoscaler(PDConfig(role_config(**overrides), role_config(**overrides), P_TPS, D_TPS, max_total))


def pods(prefill: int, decode: int, inflight: int = 2):
    return tuple(InstanceSignal(f"p{k}", Phase.READY, -1000.0, "cpu", inflight, role="prefill") for k in range(prefill)) + \
        tuple(InstanceSignal(f"d{k}", Phase.READY, -1000.0, "cpu", inflight, role="decode") for k in range(decode))


def load(prompt: float, output: float, rps: float, instances, ttft=(100, 100), tpot=(100, 100), decode_queue=0,
         decode_late_ms=0.0) -> PDSignals:
    return PDSignals(instances, rps, RoleLoad(prompt, Attainment(*ttft)),
                     RoleLoad(output, Attainment(*tpot), decode_queue, decode_late_ms),
                     {StartKind.COLD: 60.0})


def starts(plan, role):
    return [a for a in plan.actions if isinstance(a, Start) and a.role == role]


def test_prefill_heavy_load_grows_prefill_and_not_decode():
    # 4 req/s with 2,000-token prompts: one P carries 4000/2000 = 2 req/s, so 4 / 0.8 / 2 = 2.5 -> 3 P.
    # Outputs of 50 tokens: one D carries 1000/50 = 20 req/s, 4 req/s is 20% of it: 1 D is plenty.
    plan = make().on_tick(load(2000, 50, 4.0, pods(1, 1)), 0.0)
    assert len(starts(plan, "prefill")) == 2 and not starts(plan, "decode")
    assert plan.details["roles"]["prefill"]["desired"] == 3 and plan.details["roles"]["decode"]["desired"] == 1
    assert plan.desired == 4
    assert plan.details["paid_instances"] == 2     # 1 P + 1 D at the default price, for the cost meter
    assert "prefill: start" in plan.reason and "-> 3" in plan.reason
    # The same request rate with 200-token prompts: one P carries 20 req/s, nothing to add.
    plan = make().on_tick(load(200, 50, 4.0, pods(1, 1)), 0.0)
    assert not [a for a in plan.actions if isinstance(a, Start)]


def test_decode_tpot_pressure_grows_decode_and_not_prefill():
    # Demand alone fits (4 req/s of 20 per D), but TPOT is missed for 40% while 6 wait for a decode
    # slot: SLO pressure adds one D. TTFT is met: no P.
    plan = make().on_tick(load(200, 50, 4.0, pods(1, 1), tpot=(60, 100), decode_queue=6), 0.0)
    (start,) = [a for a in plan.actions if isinstance(a, Start)]
    assert start.role == "decode"
    assert "SLO attainment 60.0% < 90%" in start.reason and "6 queued" in start.reason
    # TTFT misses do not grow D: they are prefill's pressure (here with nothing queued: no verdict).
    plan = make().on_tick(load(200, 50, 4.0, pods(1, 1), ttft=(60, 100)), 0.0)
    assert not starts(plan, "decode")


def test_a_role_that_can_spare_an_instance_flips_it_to_the_role_that_needs_one():
    # P needs a second instance (4 req/s of 2,000-token prompts on 2 P: 2.5 P needed); D has 3
    # at 4 req/s of 20 each, so 2 survivors run at 10% <= 60%: D drains, and that drain becomes
    # a flip to prefill instead of a start plus a drain.
    plan = make().on_tick(load(2000, 50, 4.0, pods(2, 3, inflight=0)), 0.0)
    flips = [a for a in plan.actions if isinstance(a, Flip)]
    assert flips and all(f.to_role == "prefill" and f.instance_id.startswith("d") for f in flips)
    assert "instead of a start and a drain" in flips[0].reason and "survivors carry" in flips[0].reason
    # Nothing is both flipped and drained, and a start is bought only for what flips did not cover.
    flipped = {f.instance_id for f in flips}
    assert not [a for a in plan.actions if isinstance(a, Drain) and a.instance_id in flipped]
    roles = plan.details["roles"]
    assert roles["prefill"]["desired"] == 3 and roles["decode"]["desired"] >= 1
    assert roles["prefill"]["desired"] + roles["decode"]["desired"] == plan.desired


def test_p_plus_d_never_exceeds_max_total_and_the_slots_left_go_where_they_are_needed_most():
    # Both short: P needs ceil(8 / 0.8 / 2) = 5 (2 req/s per P), D needs ceil(8 / 0.8 / 4) = 3
    # (250-token outputs: 4 req/s per D): 8 > max_total 5, so 3 of the 6 starts go, each from the
    # role that would run at the lower predicted utilization without it: at 5 P / 3 D both would
    # be at 100% (8 / (4 x 2), 8 / (2 x 4)), the tie drops a P; at 4 P / 3 D, P would be at 133%
    # and D at 100%: a D; at 4 P / 2 D, P 133% and D 200%: a P. Left: 3 P + 2 D.
    plan = make(max_total=5).on_tick(load(2000, 250, 8.0, pods(1, 1)), 0.0)
    assert plan.desired == 5
    assert len(starts(plan, "prefill")) == 2 and len(starts(plan, "decode")) == 1
    assert "capped at max_total 5: 2 prefill start(s) dropped (prefill at 3: 133% utilization), " \
           "1 decode start(s) dropped (decode at 2: 100% utilization)" in plan.reason


def test_every_action_has_a_reason_and_ids_are_unique_across_roles():
    scaler = make(max_total=5)
    ids = []
    for t, sig in enumerate((load(2000, 250, 8.0, pods(1, 1)), load(2000, 50, 4.0, pods(2, 3, inflight=0)),
                             load(200, 50, 4.0, pods(1, 1), tpot=(60, 100), decode_queue=6))):
        plan = scaler.on_tick(sig, 1000.0 * t)
        assert plan.reason
        for a in plan.actions:
            assert a.reason and a.decision_id
            ids.append(a.decision_id)
    assert len(ids) == len(set(ids)) and ids


@pytest.mark.parametrize("overrides,field", [
    (dict(prefill_tokens_per_s=0.0), "prefill_tokens_per_s"),
    (dict(decode_tokens_per_s=-5.0), "decode_tokens_per_s"),
    (dict(max_total=1), "max_total"),
])
def test_bad_pd_config_is_refused_with_the_field_named(overrides, field):
    base = dict(prefill=role_config(), decode=role_config(), prefill_tokens_per_s=P_TPS, decode_tokens_per_s=D_TPS,
                max_total=4)
    base.update(overrides)
    with pytest.raises(InvalidArgument) as err:
        PDConfig(**base)
    assert err.value.field == field
