"""The live autoscaler benchmark (benchmarks/autoscale_live.py) on a tiny trace: a baseline
autoscaler (the throughput planner), chosen by `--autoscaler`, drives real SIMULATED workers
(engine "sim") behind the real mesh, and the benchmark accounts for every request and meters the
workers' instance-seconds."""

from __future__ import annotations

import json

import pytest

from benchmarks import autoscale_live

pytestmark = pytest.mark.slow


def test_the_planner_drives_live_workers_and_every_request_is_accounted_for(tmp_path, capsys):
    out = tmp_path / "live.json"
    # 20 s peaking at 4 req/s against 1.42 req/s of SLO capacity per worker: the planner's first
    # adjustment (10 s in) must add workers.
    assert autoscale_live.main(["--autoscalers", "planner", "--duration-s", "20", "--spike-s", "4",
                                "--peak-rps", "4", "--max-workers", "3", "--progress-s", "5",
                                "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    (run,) = doc["results"]
    assert doc["engine"].startswith("engine: sim (SIMULATED")
    assert run["autoscaler"] == "planner" and run["requests"] > 20
    assert run["done"] + run["rejected"] + run["failed"] == run["requests"] and run["failed"] == 0
    assert run["short"] == 0                      # every finished request got all its tokens
    assert run["actions"]["Start"] >= 1 and run["peak_instances"] >= 2
    # At least one worker the whole time, more after the planner's start; at most 3.
    assert run["makespan_s"] <= run["instance_seconds"] <= 3 * run["makespan_s"]
    # The machine's load averages (1, 5, 15 min) at the replay's start and end, as numbers.
    load = run["load"]
    assert [len(load["start"]), len(load["end"])] == [3, 3]
    assert all(isinstance(x, float) and x >= 0 for x in load["start"] + load["end"] + [load["max_1m"]])
    assert "planner" in capsys.readouterr().out
