"""Choosing the autoscaler by name (services/scaler/autoscale/choice.py) and the `--autoscaler`
flags that carry the choice to the live scaler: the same policy objects as the simulator's, the
baselines metered like HFX's policy, bad names and misplaced flags refused with a clear error."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.scaler.autoscale import AutoscaleConfig, Autoscaler, InstanceSignal, Phase, Signals, Start
from services.scaler.autoscale.baselines import QueueThreshold, Static, ThroughputPlanner
from services.scaler.autoscale.choice import AUTOSCALERS, BaselineSettings, make_autoscaler

CONFIG = AutoscaleConfig(min_replicas=1, max_replicas=6, capacity_rps={"cpu": 2.5})


def test_each_name_builds_its_policy_with_the_shared_bounds_and_capacity():
    settings = BaselineSettings(queue_target=2.0, queue_period_s=3.0, queue_stabilization_s=40.0,
                                planner_interval_s=10.0)
    built = {name: make_autoscaler(name, CONFIG, settings, id_prefix="c-1") for name in AUTOSCALERS}
    assert isinstance(built["hfx"], Autoscaler) and built["hfx"].config is CONFIG
    queue = built["queue"]
    assert isinstance(queue, QueueThreshold)
    assert (queue.min_replicas, queue.max_replicas, queue.target, queue.period_s, queue.stabilization_s) == \
        (1, 6, 2.0, 3.0, 40.0)
    planner = built["planner"]
    assert isinstance(planner, ThroughputPlanner)
    assert (planner.capacity_rps, planner.interval_s, planner.max_replicas) == (2.5, 10.0, 6)
    static = built["static"]
    assert isinstance(static, Static) and static.replicas == 6          # provisioned for the peak: max
    assert make_autoscaler("static", CONFIG, BaselineSettings(static_replicas=4)).replicas == 4
    assert {p.name for p in built.values()} == set(AUTOSCALERS)


def test_an_unknown_name_or_a_bad_setting_is_refused_with_the_field_named():
    with pytest.raises(InvalidArgument) as err:
        make_autoscaler("hpa", CONFIG)
    assert err.value.field == "autoscaler" and "hfx, queue, planner, static" in str(err.value)
    with pytest.raises(InvalidArgument) as err:
        make_autoscaler("queue", CONFIG, BaselineSettings(queue_period_s=0.0))
    assert err.value.field == "period_s"
    with pytest.raises(InvalidArgument) as err:
        make_autoscaler("planner", CONFIG, BaselineSettings(planner_interval_s=-1.0))
    assert err.value.field == "interval_s"


def test_baselines_carry_the_decision_prefix_and_what_the_fleet_costs():
    """The live scaler claims decision ids in Redis (a prefix per scaler start, so a new scaler's
    ids never collide with an old one's) and meters instance-seconds from the plan's details."""
    insts = (InstanceSignal("w0", Phase.READY, 0.0), InstanceSignal("w1", Phase.STARTING, 5.0),
             InstanceSignal("w2", Phase.DRAINING, 1.0, inflight=2))
    for name in ("queue", "planner", "static"):
        plan = make_autoscaler(name, CONFIG, id_prefix="hfx-123").on_tick(Signals(insts, 20.0), 0.0)
        assert plan.actions and all(a.decision_id.startswith("hfx-123-") for a in plan.actions), name
        assert plan.details["paid_instances"] == 3, name      # starting, ready and draining are paid for
    static = make_autoscaler("static", CONFIG).on_tick(Signals(insts, 0.0), 0.0)
    assert sum(isinstance(a, Start) for a in static.actions) == 4 and static.actions[0].decision_id == "static-1"


def test_the_flags_reach_the_scalers_config(monkeypatch):
    from services import cli
    from services.scaler import serve as server

    seen = {}

    async def serve(config):
        seen["config"] = config

    monkeypatch.setattr(server, "serve", serve)
    assert cli.main(["scaler", "--scheduler", "127.0.0.1:1", "--autoscale", "--autoscaler", "queue",
                     "--queue-target", "3", "--queue-period-s", "2", "--queue-stabilization-s", "30"]) == 0
    config = seen["config"]
    assert config.autoscaler == "queue"
    assert config.baselines == BaselineSettings(queue_target=3.0, queue_period_s=2.0, queue_stabilization_s=30.0)
    assert cli.main(["scaler", "--scheduler", "127.0.0.1:1"]) == 0
    assert seen["config"].autoscaler == "hfx"


def test_hfx_up_forwards_the_choice_to_its_scaler():
    from services.cli import build_parser, parse_args
    from services.scaler.autoscale_cli import baseline_settings_from_args, config_from_args, forward_flags

    parser = build_parser()
    up = parse_args(parser, ["up", "--autoscale", "--max", "4", "--autoscaler", "planner", "--planner-interval-s", "12",
                             "--scale-down-horizon-s", "7"])
    scaler = parse_args(parser, ["scaler", "--scheduler", "127.0.0.1:1", *forward_flags(up)])
    assert scaler.autoscaler == "planner" and scaler.max_replicas == 4
    assert baseline_settings_from_args(scaler) == BaselineSettings(planner_interval_s=12.0)
    assert config_from_args(scaler).scale_down_horizon_s == 7.0


@pytest.mark.parametrize("argv,says", [
    (["--autoscale", "--autoscaler", "hpa"], "argument --autoscaler: invalid choice: 'hpa'"),
    (["--autoscaler", "queue"], "--autoscaler queue needs --autoscale"),
    (["--queue-target", "2"], "--queue-target needs --autoscale"),
    (["--autoscale", "--queue-target", "2"], "--queue-target: not used by --autoscaler hfx"),
    (["--autoscale", "--autoscaler", "static", "--planner-interval-s", "5"],
     "--planner-interval-s: not used by --autoscaler static"),
    (["--autoscale", "--autoscaler", "planner", "--planner-interval-s", "0"], "--planner-interval-s"),
    (["--autoscale", "--autoscaler", "queue", "--queue-stabilization-s", "-1"], "--queue-stabilization-s"),
    (["--autoscale", "--autoscaler", "queue", "--workers", "0", "--prefill", "1", "--decode", "1"],
     "the baselines scale colocated workers"),
])
def test_bad_autoscaler_flags_are_a_usage_error_before_anything_starts(argv, says, capsys):
    from services.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["up", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and says in err, (argv, err)
