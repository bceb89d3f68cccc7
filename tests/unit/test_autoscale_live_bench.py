"""benchmarks/autoscale_live.py without processes: the scaler flags it passes for each autoscaler
are ones `hfx scaler` accepts (and mean what the bench says), and --combine refuses runs of
different traces."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import autoscale_live
from services.cli import build_parser, parse_args
from services.scaler.autoscale.choice import AUTOSCALERS
from services.scaler.autoscale_cli import baseline_settings_from_args, config_from_args


@pytest.fixture(scope="module")
def trace():
    args = autoscale_live.parser().parse_args(["--duration-s", "30"])
    return args, autoscale_live.Trace(args)


@pytest.mark.parametrize("name", AUTOSCALERS)
def test_each_autoscalers_flags_are_accepted_by_the_scaler_with_the_clocks_compressed(name, trace):
    args, tr = trace
    scaler = parse_args(build_parser(), ["scaler", "--scheduler", "127.0.0.1:1",
                                         *autoscale_live.scaler_flags(name, args, tr)])
    config = config_from_args(scaler)
    assert scaler.autoscaler == name and scaler.autoscale_tick_s == pytest.approx(5 / 6, rel=1e-2)
    assert config.scale_down_horizon_s == 10.0 and config.warmup_s == 5.0
    if name == "static":
        assert config.min_replicas == config.max_replicas == tr.static_n
    else:
        assert (config.min_replicas, config.max_replicas) == (1, 16)
    if name == "queue":
        assert baseline_settings_from_args(scaler).queue_stabilization_s == 50.0


def test_combine_refuses_runs_of_different_traces(tmp_path, trace):
    base = {"profile": "p", "duration_s": 300.0, "spike_s": 15.0, "peak_rps": 17.0, "seed": 1, "time_scale": 6.0,
            "static_workers": 12}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({**base, "results": [{"autoscaler": "hfx"}]}))
    b.write_text(json.dumps({**base, "results": [{"autoscaler": "static"}]}))
    c.write_text(json.dumps({**base, "seed": 2, "results": [{"autoscaler": "queue"}]}))
    doc, results = autoscale_live.combine([str(a), str(b)])
    assert [r["autoscaler"] for r in results] == ["static", "hfx"] and doc["peak_rps"] == 17.0
    with pytest.raises(ValueError, match="seed"):
        autoscale_live.combine([str(a), str(c)])


def test_the_table_compares_every_autoscaler_with_static_and_hfx_with_the_others(capsys):
    def row(name, inst_s, att):
        return {"autoscaler": name, "instance_seconds": inst_s, "slo_attainment": att, "peak_instances": 4,
                "mean_instances": 2.5, "done": 90, "rejected": 10, "failed": 0,
                "actions": {"Start": 3, "Drain": 2, "Remove": 2}}
    autoscale_live.print_table([row("static", 1000.0, 0.99), row("hfx", 400.0, 0.95)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["autoscaler", "inst-s", "vs", "static", "attain", "peak", "mean", "done", "rej",
                              "fail", "starts", "drains", "removes"]
    assert out[2].split() == ["hfx", "400", "-60.0%", "95.0%", "4", "2.5", "90", "10", "0", "3", "2", "2"]
    assert "hfx vs static: 60.0% fewer instance-seconds, attainment 95.0% vs 99.0%" in out


def test_an_azure_trace_is_replayed_through_the_simulator_benchs_rule_and_static_is_sized_for_its_peak(tmp_path):
    csv = tmp_path / "t.csv"
    # 120 requests over the first 30 s, then 5 over the next 30 s (at 30, 36, ..., 54 s).
    rows = [f"2023-11-16 18:00:{i * 0.25:09.6f},3000,7" for i in range(120)]
    rows += [f"2023-11-16 18:00:{30 + i * 3:09.6f},3000,7" for i in range(0, 10, 2)]
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")

    def trace(*flags):
        args = autoscale_live.parser().parse_args(["--trace", str(csv), "--trace-lengths", "mix", *flags])
        return args, autoscale_live.Trace(args)

    args, whole = trace("--trace-speedup", "2")
    assert len(whole.requests) == 125
    assert max(r.spec.arrival_s for r in whole.requests) == pytest.approx(27.0)   # 54 s of trace at 2x
    # All 125 arrive in the first 30 s bin: 4.17 req/s over a worker's ~1.42 -> static 3.
    assert whole.peak == pytest.approx(125 / 30) and whole.arrival_rps() == [pytest.approx(125 / 30)]
    assert whole.static_n == math.ceil(125 / 30 / whole.capacity) == 3
    args2, half = trace("--trace-speedup", "2", "--trace-every", "2")
    assert len(half.requests) == 63 and half.static_n == math.ceil(63 / 30 / half.capacity) == 2
    # At 1x the last 5 fall in a second bin; --duration-s cuts the replay.
    _, slow = trace("--duration-s", "40")
    assert slow.arrival_rps() == [pytest.approx(4.0), pytest.approx(2 / 30)] and len(slow.requests) == 122
    # The plot's offered rate is the replay's per-bin rate; a swell document keeps its curve.
    rate = autoscale_live.offered_rate({"trace": str(csv), **slow.doc(args)})
    assert rate is not None and rate(10.0) == pytest.approx(4.0) and rate(35.0) == pytest.approx(2 / 30)
    swell = autoscale_live.offered_rate({"duration_s": 300.0, "peak_rps": 17.0, "spike_s": 15.0})
    assert swell is not None and max(swell(t) for t in range(300)) == pytest.approx(17.0, rel=0.05)


def test_combine_refuses_replays_of_the_same_trace_at_other_speeds(tmp_path):
    base = {"profile": "p", "trace": "t.csv", "trace_speedup": 13.0, "trace_lengths": "mix", "trace_every": 6,
            "duration_s": 300.0, "peak_rps": 16.8, "seed": 1, "time_scale": 6.0, "static_workers": 12}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({**base, "results": [{"autoscaler": "hfx"}]}))
    b.write_text(json.dumps({**base, "trace_speedup": 8.0, "results": [{"autoscaler": "planner"}]}))
    with pytest.raises(ValueError, match="trace_speedup"):
        autoscale_live.combine([str(a), str(b)])
