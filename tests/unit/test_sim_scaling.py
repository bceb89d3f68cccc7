"""Autoscalers driving the simulator (services/sim/scaling.py): same requests, instances that come
and go, nothing lost when an instance is drained and removed."""

from services.scaler.autoscale import AutoscaleConfig, Autoscaler, StartKind
from services.scaler.autoscale.baselines import Static
from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import policy_config
from services.sim.autoscale_bench import instance_capacity
from services.sim.profiles import get_profile
from services.sim.runner import Simulation
from services.sim.scaling import ScalingDriver, ScalingSetup
from services.sim.workload import at_times, load_workload
from services.sim.cli import DEFAULT_WORKLOAD

import random


def burst_requests(workload, profile, seed=3):
    """2 req/s for 100 s, 14 req/s for 80 s, 2 req/s for 220 s (deterministic gaps)."""
    times, t = [], 0.0
    for until, rate in ((100.0, 2.0), (180.0, 14.0), (400.0, 2.0)):
        while t < until:
            times.append(t)
            t += 1.0 / rate
    return at_times(workload, [(x, -1, -1) for x in times], random.Random(seed), profile.model, profile.chunk_tokens)


def run(autoscaler, initial, requests, profile, workload, capacity):
    config = policy_config(profile, workload.classes, {"placement": "best_fit"})
    driver = ScalingDriver(autoscaler, ScalingSetup(initial, capacity, {StartKind.COLD: 20.0, StartKind.PEER: 10.0}))
    result = Simulation(make_policy("hfx", config), profile, initial, seed=1, scaling=driver).run(requests)
    return result, driver


def test_hfx_grows_for_a_burst_and_drains_back_without_losing_a_request():
    profile, workload = get_profile("cpu-tiny"), load_workload(DEFAULT_WORKLOAD)
    capacity = instance_capacity(profile, workload)
    requests = burst_requests(workload, profile)
    scaler = Autoscaler(AutoscaleConfig(min_replicas=1, max_replicas=6, capacity_rps={"cpu": capacity},
                                        scale_down_cooldown_s=30.0, warmup_s=10.0,
                                        ready_times_s={StartKind.COLD: 20.0, StartKind.PEER: 10.0}))
    result, driver = run(scaler, 1, requests, profile, workload, capacity)
    peak = max(p.instances for p in driver.timeline)
    assert peak >= 3                                          # 14 req/s needs ~3 of ~5.7 req/s
    assert driver.timeline[-1].instances < peak               # and it gave them back
    kinds = [k for _, k, _ in driver.decisions]
    assert "Start" in kinds and "Drain" in kinds and "Remove" in kinds
    # Every request placed somewhere finished: draining never cut one off.
    placed = [r for r in result.records if r.verdict in ("admit", "best_effort")]
    assert placed and all(r.finish_s is not None and r.generated == r.output_tokens for r in placed)
    assert all(reason for _, _, reason in driver.decisions)
    # Cheaper than keeping the peak count all along.
    assert result.instance_seconds < peak * result.makespan_s


def test_static_costs_its_count_times_the_makespan():
    profile, workload = get_profile("cpu-tiny"), load_workload(DEFAULT_WORKLOAD)
    capacity = instance_capacity(profile, workload)
    requests = burst_requests(workload, profile)[:300]
    result, driver = run(Static(3), 3, requests, profile, workload, capacity)
    assert abs(result.instance_seconds - 3 * result.makespan_s) < 1e-6
    assert not driver.decisions


def test_an_azure_trace_replays_its_times_with_its_or_the_mixs_lengths_and_sizes_static_for_its_peak(tmp_path):
    import argparse

    from services.sim.autoscale_bench import make_requests, trace_peak_rps

    trace = tmp_path / "t.csv"
    # 40 requests in the first 30 s, then 10 in the next 30 s; every one 3000 prompt tokens, 7 out.
    rows = [f"2023-11-16 18:00:{i * 30 / 40:09.6f},3000,7" for i in range(40)]
    rows += [f"2023-11-16 18:00:{30 + i * 3:09.6f},3000,7" for i in range(10)]
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    workload = load_workload(DEFAULT_WORKLOAD)
    profile = get_profile("cpu-tiny")
    for lengths in ("trace", "mix"):
        args = argparse.Namespace(trace=str(trace), trace_speedup=2.0, duration_s=1000.0, trace_lengths=lengths,
                                  trace_every=1, seed=1)
        requests, _ = make_requests(args, workload, profile, 1.0)
        assert len(requests) == 50
        assert max(r.spec.arrival_s for r in requests) < 30.0        # 57 s of trace at 2x
        prompts = {r.spec.prompt_tokens for r in requests}
        assert (prompts == {3000}) == (lengths == "trace")
        # At 2x all 50 fall in the first 30 s bin.
        assert trace_peak_rps(requests) == 50 / 30.0
