"""The workload family, the hfx-vs-best-baseline verdict, and the guard over a small fixed family."""

from __future__ import annotations

import json

import pytest

from services.cli import main
from services.sim.family import capacity_rps, family, load_family, rate_grid, workload_doc
from services.sim.family_bench import aggregate, refine_goodput, run_workload, verdict
from services.sim.profiles import get_profile
from services.sim.workload import parse_workload

PROFILE = get_profile("cpu-tiny")
BASELINES = ("fcfs", "least-load", "headroom")


def test_workload_doc_is_a_pure_function_of_its_seed_and_loads():
    assert workload_doc(5) == workload_doc(5) and workload_doc(5) != workload_doc(6)
    sizes = set()
    for name, doc in family(40, seed=3):
        wl = parse_workload(doc)
        sizes.add(len(wl.classes))
        assert 2 <= len(wl.classes) <= 6 and name.startswith("s3-w")
        assert all(c.on_miss in ("reject", "best_effort") and 0 <= c.priority <= 3 for c in wl.classes)
    assert sizes == {2, 3, 4, 5, 6}


def test_rate_grid_spans_light_load_to_overload_of_the_estimated_capacity():
    wl = parse_workload(workload_doc(1))
    cap = capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 4)
    assert capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 8) == pytest.approx(2 * cap)
    rates = rate_grid(cap, (0.1, 0.5, 1.5))
    assert len(rates) == 3 and rates[0] < 0.11 * cap and rates[-1] > 1.4 * cap
    assert rate_grid(10.0, (0.123, 0.1234)) == [1.2]    # two significant figures, distinct


def test_verdict_compares_with_the_best_baseline_at_each_rate():
    attain = {"hfx": {1: 0.99, 2: 0.95, 4: 0.80},
              "fcfs": {1: 0.97, 2: 0.90, 4: 0.40},
              "headroom": {1: 0.995, 2: 0.85, 4: 0.50}}
    v = verdict(attain)
    assert v["diffs"] == pytest.approx({1: -0.005, 2: 0.05, 4: 0.30})
    assert v["worst_diff_where_baseline_fits"] == pytest.approx(-0.005) and v["violations"] == []
    assert v["goodput_rps"]["hfx"] == 2 and v["best_baseline_goodput_rps"] == 2 and v["goodput_ratio"] == 1.0
    assert v["goodput_at_least_baseline"] and not v["goodput_win"]
    assert v["covers_light_load"] and v["covers_overload"]
    attain["hfx"][1] = 0.985         # exactly 1 point below headroom's 99.5%: still within tolerance
    assert verdict(attain)["violations"] == []
    attain["hfx"][1] = 0.98          # 1.5 points below: a violation
    attain["hfx"][4] = 0.95          # ... though hfx now reaches 90% at 4 req/s: goodput 2x
    v = verdict(attain)
    assert v["violations"] == [1] and v["goodput_ratio"] == 2.0 and v["goodput_win"]
    agg = aggregate([{"name": "a", **v}, {"name": "b", **verdict({"hfx": {1: 0.5}, "fcfs": {1: 0.95}})}])
    assert agg["workloads_with_violation"] == 2 and agg["goodput_win_1_3x"] == 1
    assert agg["goodput_at_least_baseline"] == 1 and agg["worst_diff_where_baseline_fits"] == pytest.approx(-0.45)


def test_refined_goodput_bisects_between_grid_rates_for_hfx_and_the_best_baseline():
    """Grid goodput: hfx 2, fcfs 1, headroom 1 (ratio 2.0: the grid's step). With the true
    crossings at 3.0 (hfx) and 1.3 req/s (fcfs; headroom 1.1) three geometric steps find hfx
    2.83 (sqrt(2*4); then 3.36 and 3.08 fail) and fcfs 1.19 (1.41 fails, 1.19 holds, 1.3 fails)
    and headroom 1.09 (1.41, 1.19 fail): ratio 2.38. least-load (grid goodput below the best
    baseline's) is never measured."""
    attain = {"hfx": {1: 0.99, 2: 0.95, 4: 0.5}, "fcfs": {1: 0.95, 2: 0.8, 4: 0.3},
              "headroom": {1: 0.93, 2: 0.7, 4: 0.2}, "least-load": {1: 0.85, 2: 0.6, 4: 0.2}}
    crossing = {"hfx": 3.0, "fcfs": 1.3, "headroom": 1.1, "least-load": 0.5}
    calls = []

    def measure(policy, rate):
        calls.append((policy, rate))
        return 0.95 if rate < crossing[policy] else 0.5

    r = refine_goodput(attain, measure, steps=3)
    assert r["refined_goodput_rps"] == pytest.approx({"hfx": 2.83, "fcfs": 1.19, "headroom": 1.09}, abs=0.005)
    assert r["refined_goodput_ratio"] == pytest.approx(2.83 / 1.19, rel=1e-3) and r["refined_goodput_win"]
    assert {p for p, _ in calls} == {"hfx", "fcfs", "headroom"} and len(calls) == 9
    # No bisection (0 steps) or a top-of-grid goodput: the grid's own figure.
    assert refine_goodput(attain, measure, steps=0)["refined_goodput_ratio"] == 2.0
    attain["hfx"][4] = 0.91
    assert refine_goodput(attain, measure, steps=3)["refined_goodput_rps"]["hfx"] == 4


# A small fixed family (seeded): the guard the issue asks for. Rates at 0.2, 0.5 and 0.9x each
# workload's estimated capacity; 150 requests per point. Seed 17 includes the shapes that made hfx
# lose before its deferral fix: a low-priority long-prompt class beside tight-SLO ones.
GUARD_SEED, GUARD_WORKLOADS, GUARD_REQUESTS, GUARD_FACTORS = 17, 4, 150, (0.2, 0.5, 0.9)


@pytest.mark.parametrize("name,wl", [pytest.param(name, wl, id=name)
                                     for name, _, wl in load_family(GUARD_WORKLOADS, GUARD_SEED)])
def test_hfx_is_never_more_than_a_point_below_a_baseline_that_attains_90_percent(name, wl):
    rates = rate_grid(capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 4), GUARD_FACTORS)
    attain = run_workload(name, wl, PROFILE, 4, GUARD_REQUESTS, 1, (*BASELINES, "hfx"), rates, lambda: None)
    v = verdict(attain)
    assert v["violations"] == [], f"{name}: hfx minus best baseline by rate {v['diffs']}; attainment {attain}"


def test_hfx_keeps_up_with_headroom_on_the_deferral_flood_workload():
    """Family workload s1-w034 at 0.15x its capacity (14 req/s, 200 requests): bursty arrivals,
    a 51-ms-TTFT class beside 2,200-token prompts with 2-s TTFTs and 3-6-token outputs. hfx was
    3.0 points below headroom here (96.0 vs 99.0%; 92.5% once the simulator spent tickets): stale
    tickets, deferred prompts released onto every instance at once before a burst, and long
    prompts spread onto the instance still prefilling one (issue 17, third pass)."""
    name, _, wl = load_family(35, 1)[34]
    rates = rate_grid(capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 4), (0.15,))
    attain = run_workload(name, wl, PROFILE, 4, 200, 1, (*BASELINES, "hfx"), rates, lambda: None)
    v = verdict(attain)
    assert max(attain[p][rates[0]] for p in BASELINES) >= 0.9 and v["violations"] == [], attain


def test_bench_family_cli_writes_json_and_replayable_worst_cases(tmp_path, capsys):
    out = tmp_path / "f.json"
    rc = main(["bench", "--sim", "--family", "1", "--seed", "2", "--requests", "40", "--rate-factors", "0.3",
               "--policy", "fcfs", "hfx", "--family-out", str(tmp_path / "worst"), "--json", str(out), "--quiet"])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["aggregate"]["workloads"] == 1 and doc["worst"] == ["s2-w000"]
    w = doc["workloads"][0]
    assert set(w["attainment"]) == {"fcfs", "hfx"} and len(w["rates"]) == 1
    yaml_path = tmp_path / "worst" / "s2-w000.yaml"
    assert "replay with" in yaml_path.read_text() and "hfx bench --sim --workload" in capsys.readouterr().out
    rc = main(["bench", "--sim", "--workload", str(yaml_path), "--policy", "hfx", "--rate", str(w["rates"][0]),
               "--requests", "40", "--seed", "2", "--json", str(tmp_path / "r.json"), "--quiet"])
    replay = json.loads((tmp_path / "r.json").read_text())["records"][0]
    assert rc == 0 and replay["slo_attainment"] == pytest.approx(w["attainment"]["hfx"][f"{w['rates'][0]:g}"])


def test_hfx_keeps_up_on_the_tight_first_token_workload():
    """Family workload s2-w007 at 0.3x its capacity (32 req/s, 200 requests): a 9-ms-TTFT class
    whose misses were admissions landing 0.2-2.6 ms late. hfx was 4.5 points below least-load
    (86.5 vs 91.0%) when its fit test could not see how much of the engine's step in flight was
    left; with the step the load report names it waits only for that (issue 17, fourth pass)."""
    name, _, wl = load_family(8, 2)[7]
    rates = rate_grid(capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 4), (0.3,))
    attain = run_workload(name, wl, PROFILE, 4, 200, 2, (*BASELINES, "hfx"), rates, lambda: None)
    v = verdict(attain)
    assert max(attain[p][rates[0]] for p in BASELINES) >= 0.9 and v["violations"] == [], attain


@pytest.mark.parametrize("seed,index,factor", [
    pytest.param(2, 17, 0.15, id="s2-w017@14"), pytest.param(2, 17, 0.3, id="s2-w017@27"),
    pytest.param(1, 12, 1.2, id="s1-w012@49")])
def test_hfx_keeps_up_where_queued_prefill_was_mispredicted(seed, index, factor):
    """Issue 17, fifth pass (200 requests per point). s2-w017 at 14 and 27 req/s: a 14-ms-TTFT
    request queued behind the step in flight shared its step with a prompt placed after it (fit
    test (6) now refuses that); s1-w012 at 49 req/s: a long prompt predicted 162 ms got its first
    token after 286 ms, the queue a finished request had held forgotten (carry_backlog). hfx was
    1.5 points below the best baseline at each."""
    name, _, wl = load_family(index + 1, seed)[index]
    rates = rate_grid(capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 4), (factor,))
    attain = run_workload(name, wl, PROFILE, 4, 200, seed, (*BASELINES, "hfx"), rates, lambda: None)
    v = verdict(attain)
    assert max(attain[p][rates[0]] for p in BASELINES) >= 0.9 and v["violations"] == [], attain


def test_hfx_reaches_90_percent_where_the_baselines_do_on_the_out_of_reach_workload():
    """Family workload s3-w003 at 0.15x its capacity (9.1 req/s, 200 requests): a class whose TTFT is
    1.6x its mean unloaded prefill arrives out of reach now and then. Each such arrival put the
    cluster under pressure, holding best effort back for 500-800 ms: hfx 89.5% (89.0% before the
    fourth pass) where least-load attains 90.5%, so its goodput was below the baselines' (issue
    17, fifth pass: such an arrival sets no pressure)."""
    name, _, wl = load_family(4, 3)[3]
    rates = rate_grid(capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 4), (0.15,))
    attain = run_workload(name, wl, PROFILE, 4, 200, 3, (*BASELINES, "hfx"), rates, lambda: None)
    assert max(attain[p][rates[0]] for p in BASELINES) >= 0.9 and attain["hfx"][rates[0]] >= 0.9, attain


def test_hfx_serves_a_tight_tpot_class_beside_long_loose_decodes():
    """Family workload s2-w015 at 0.55x its capacity (43 req/s, 200 requests): a class with a TPOT
    of 1.3x its unloaded decode step beside a class with 300-token outputs and a 5.2x TPOT.
    Spread put the long decodes on every instance, every step grew past 4.46 ms and the tight
    class fit nowhere: hfx 89.5% (that class 62%), so its goodput was the baselines' (23 req/s).
    Keeping loose requests off an instance for the tight class: 94.0% (issue 17, sixth pass)."""
    name, _, wl = load_family(16, 2)[15]
    rates = rate_grid(capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 4), (0.55,))
    assert rates == [43.0]
    attain = run_workload(name, wl, PROFILE, 4, 200, 2, ("hfx",), rates, lambda: None)
    assert attain["hfx"][rates[0]] >= 0.93, attain


def test_hfx_keeps_an_instance_for_a_tight_first_token_beside_long_prompts():
    """Family workload s3-w029 at 0.55x its capacity (6.3 req/s, 200 requests): a class with
    100-token prompts and a 7.5-ms TTFT (1.5x its unloaded prefill) beside 2,800-4,000-token
    prompts whose full-chunk steps take ~13 ms. Spread put long prompts on every instance, and
    the tight class met its first token only when it found one idle: hfx 89.5%, so its goodput
    was the baselines' (3.5 req/s). Long prompts keeping off the instance with the least queued
    prefill while that class is seen: 97.0% (issue 17, seventh pass)."""
    name, _, wl = load_family(30, 3)[29]
    rates = rate_grid(capacity_rps(wl, PROFILE.model, PROFILE.chunk_tokens, 4), (0.55,))
    assert name == "s3-w029" and rates == [6.3]
    attain = run_workload(name, wl, PROFILE, 4, 200, 3, ("hfx",), rates, lambda: None)
    assert attain["hfx"][rates[0]] >= 0.95, attain
