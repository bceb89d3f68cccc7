"""`hfx bench --sim --family N --seed S`: every policy over N random workloads, each over its own
rate grid (light load to overload, services/sim/family.py), compared with the best baseline.

Per workload: attainment of every policy at every rate, goodput (highest rate with >= 90%), hfx's
goodput over the best baseline's, and hfx minus the best baseline's attainment at every rate.
Aggregate: how many workloads hfx wins, ties and loses on, and the worst cases, whose workload
YAML is written out with the command that replays them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import yaml
from tqdm import tqdm

from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import policy_config
from services.sim import ENGINE_LABEL
from services.sim.family import RATE_FACTORS, capacity_rps, load_family, rate_grid
from services.report.metrics import GOODPUT_ATTAINMENT, attainment
from services.sim.profiles import Profile
from services.sim.runner import simulate
from services.sim.workload import Workload, generate

TARGET = "hfx"
# hfx may fall this far below the best baseline at a rate where that baseline attains >= 90%.
TOLERANCE = 0.01
GOODPUT_WIN = 1.3


def verdict(attain: dict[str, dict[float, float]], target: str = TARGET) -> dict:
    """hfx against the best baseline on one workload. `attain[policy][rate]` is SLO attainment.

    - diffs: at every rate, target minus the best baseline attainment at that rate;
    - worst_diff_where_baseline_fits: the lowest diff over rates where the best baseline attains
      >= 90% (None when it never does); violations: those rates where the diff is < -TOLERANCE;
    - goodput per policy (highest rate with >= 90%, None if none), the best baseline's, and
      goodput_ratio = target / best baseline (None when the baseline's is None: then `wins_goodput`
      says whether target reached 90% anywhere).
    """
    baselines = [p for p in attain if p != target]
    rates = sorted(attain[target])
    goodput = {p: max((r for r, a in attain[p].items() if a >= GOODPUT_ATTAINMENT), default=None) for p in attain}
    best_g = max((g for p, g in goodput.items() if p != target and g is not None), default=None)
    mine = goodput[target]
    diffs, worst, violations = {}, None, []
    for r in rates:
        best = max(attain[p][r] for p in baselines)
        d = attain[target][r] - best
        diffs[r] = d
        if best >= GOODPUT_ATTAINMENT:
            worst = d if worst is None else min(worst, d)
            if d < -TOLERANCE - 1e-9:   # exactly 1 point below is not "more than 1 point below"
                violations.append(r)
    ratio = None if best_g is None or mine is None else mine / best_g
    return {
        "goodput_rps": goodput, "best_baseline_goodput_rps": best_g, "goodput_ratio": ratio,
        "goodput_at_least_baseline": (mine or 0.0) >= (best_g or 0.0) and (mine is not None or best_g is None),
        "goodput_win": mine is not None and (best_g is None or mine >= GOODPUT_WIN * best_g),
        "diffs": diffs, "worst_diff_where_baseline_fits": worst, "violations": violations,
        "min_diff": min(diffs.values()),
        "covers_light_load": max(attain[p][rates[0]] for p in baselines) >= GOODPUT_ATTAINMENT,
        "covers_overload": max(attain[p][rates[-1]] for p in attain) < GOODPUT_ATTAINMENT,
    }


def refine_goodput(attain: dict[str, dict[float, float]], measure, steps: int, target: str = TARGET) -> dict:
    """Goodput of `target` and of the baselines tied for the best grid goodput, refined by `steps`
    geometric bisection steps between each one's grid goodput (>= 90%) and the next grid rate
    (< 90%): the grid's rates are 1.4-2x apart, so a goodput ratio between 1 and the next step
    could not show. measure(policy, rate) -> attainment runs one more point. Returns goodput per
    refined policy (None where the policy reaches 90% at no grid rate; the grid goodput where it
    is the highest grid rate) and the refined ratio target / best baseline (None as in verdict)."""
    rates = sorted(attain[target])
    grid = {p: max((r for r, a in attain[p].items() if a >= GOODPUT_ATTAINMENT), default=None) for p in attain}
    best_g = max((g for p, g in grid.items() if p != target and g is not None), default=None)
    refined: dict[str, float | None] = {}
    for p in [target] + [p for p, g in grid.items() if p != target and g is not None and g == best_g]:
        lo = grid[p]
        above = [r for r in rates if lo is not None and r > lo]
        if lo is not None and above:
            hi = above[0]
            for _ in range(steps):
                mid = _sig3((lo * hi) ** 0.5)
                if not lo < mid < hi:
                    break
                if measure(p, mid) >= GOODPUT_ATTAINMENT:
                    lo = mid
                else:
                    hi = mid
        refined[p] = lo
    best = max((g for p, g in refined.items() if p != target and g is not None), default=None)
    mine = refined[target]
    return {"refined_goodput_rps": refined,
            "refined_goodput_ratio": None if best is None or mine is None else mine / best,
            "refined_goodput_at_least_baseline": (mine or 0.0) >= (best or 0.0) and (mine is not None or best is None),
            "refined_goodput_win": mine is not None and (best is None or mine >= GOODPUT_WIN * best)}


def _sig3(x: float) -> float:
    return float(f"{x:.3g}")


def aggregate(results: Sequence[dict]) -> dict:
    """Counts over workloads (each a `verdict` plus its name), and the worst ones."""
    n = len(results)
    ratios = sorted(r["goodput_ratio"] for r in results if r["goodput_ratio"] is not None)
    fits = [r["worst_diff_where_baseline_fits"] for r in results if r["worst_diff_where_baseline_fits"] is not None]
    refined = [r for r in results if "refined_goodput_win" in r]
    return {
        "workloads": n,
        "refined": len(refined),
        "refined_goodput_at_least_baseline": sum(r["refined_goodput_at_least_baseline"] for r in refined),
        "refined_goodput_win_1_3x": sum(r["refined_goodput_win"] for r in refined),
        "goodput_at_least_baseline": sum(r["goodput_at_least_baseline"] for r in results),
        "goodput_win_1_3x": sum(r["goodput_win"] for r in results),
        "goodput_ratio_median": ratios[len(ratios) // 2] if ratios else None,
        "goodput_ratio_min": ratios[0] if ratios else None,
        "workloads_with_violation": sum(bool(r["violations"]) for r in results),
        "violating_points": sum(len(r["violations"]) for r in results),
        "worst_diff_where_baseline_fits": min(fits) if fits else None,
        "covers_light_load": sum(r["covers_light_load"] for r in results),
        "covers_overload": sum(r["covers_overload"] for r in results),
    }


def _badness(r: dict) -> tuple:
    """Sort key, worst first: violations (by depth), then lost goodput, then the lowest diff."""
    worst = r["worst_diff_where_baseline_fits"]
    return (-(len(r["violations"]) > 0), worst if worst is not None else 1.0,
            r["goodput_ratio"] if r["goodput_ratio"] is not None else 9.0, r["min_diff"])


def add_stored_args(p) -> None:
    """The arguments of the scripts that work over a stored family run (benchmarks/family_*.py):
    the document, --only, --instances and --json."""
    p.add_argument("stored", help="a `hfx bench --sim --family --json` document (or a rerun of one)")
    p.add_argument("--only", nargs="*", default=None, help="workload names (default: all)")
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--json", default=None, help="write the results here")


def stored_family(path: str | Path) -> tuple[dict, dict[str, Workload]]:
    """A stored `--family --json` document (or a rerun of one) and its workloads by name,
    regenerated from the family seed (the document keeps their YAML, the seed is what replays)."""
    doc = json.loads(Path(path).read_text())
    return doc, {name: wl for name, _, wl in load_family(len(doc["workloads"]), doc["seed"])}


def measurer(workload: Workload, profile: Profile, instances: int, requests: int, seed: int):
    """measure(policy, rate) -> SLO attainment of one simulated point (the same requests for
    every policy at a rate)."""
    config = policy_config(profile, workload.classes)
    generated: dict[float, list] = {}

    def measure(policy: str, rate: float) -> float:
        if rate not in generated:
            generated[rate] = generate(workload, rate, requests, seed, profile.model, profile.chunk_tokens)
        return attainment(simulate(make_policy(policy, config), profile, generated[rate], instances, seed).records)
    return measure


def run_workload(name: str, workload: Workload, profile: Profile, instances: int, requests: int, seed: int,
                 policies: Sequence[str], rates: Sequence[float], tick, measure=None) -> dict[str, dict[float, float]]:
    measure = measure or measurer(workload, profile, instances, requests, seed)
    attain: dict[str, dict[float, float]] = {p: {} for p in policies}
    for rate in rates:
        for p in policies:
            attain[p][rate] = measure(p, rate)
            tick()
    return attain


def replay_command(path: Path, rates: Sequence[float], requests: int, seed: int, instances: int,
                   policies: Sequence[str]) -> str:
    return (f"hfx bench --sim --workload {path} --policy {' '.join(policies)} --rate "
            f"{' '.join(f'{r:g}' for r in rates)} --requests {requests} --seed {seed} --instances {instances}")


def run_family(args, profile: Profile, policies: Sequence[str]) -> int:
    if TARGET not in policies or len(policies) < 2:
        print(f"error: --family compares {TARGET} with baselines: give --policy with {TARGET} and at least one other",
              file=sys.stderr)
        return 2
    factors = tuple(args.rate_factors) if args.rate_factors else RATE_FACTORS
    family = load_family(args.family, args.seed)
    plans = []
    for name, doc, wl in family:
        cap = capacity_rps(wl, profile.model, profile.chunk_tokens, args.instances)
        plans.append((name, doc, wl, cap, rate_grid(cap, factors)))
    total = sum(len(rates) for *_, rates in plans) * len(policies)
    print(f"{ENGINE_LABEL}; profile {profile.name}; {args.instances} instances; family of {args.family} workloads, "
          f"seed {args.seed}; {args.requests} requests per point; policies {' '.join(policies)}")
    bar = tqdm(total=total, desc="family", file=sys.stderr, disable=args.quiet, mininterval=1.0)
    started = time.perf_counter()
    results = []
    for name, doc, wl, cap, rates in plans:
        measure = measurer(wl, profile, args.instances, args.requests, args.seed)
        attain = run_workload(name, wl, profile, args.instances, args.requests, args.seed, policies, rates,
                              lambda: bar.update(1), measure)
        v = verdict(attain)
        if args.goodput_steps:
            v.update(refine_goodput(attain, measure, args.goodput_steps))
        results.append({"name": name, "capacity_rps": cap, "rates": rates, "attainment": attain,
                        "classes": len(wl.classes), "arrival": doc["arrival"], "workload": doc, **v})
    bar.close()
    agg = aggregate(results)
    agg["wall_s"] = time.perf_counter() - started
    worst = sorted(results, key=_badness)[: args.worst]
    out_dir = Path(args.family_out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in worst:
        path = out_dir / f"{r['name']}.yaml"
        cmd = replay_command(path, r["rates"], args.requests, args.seed, args.instances, policies)
        path.write_text(f"# family seed {args.seed}, workload {r['name']}; replay with:\n#   {cmd}\n"
                        + yaml.safe_dump(r["workload"], sort_keys=False))
        r["yaml"], r["replay"] = str(path), cmd
    _print(results, agg, worst)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "engine": ENGINE_LABEL, "profile": profile.name, "instances": args.instances, "family": args.family,
            "seed": args.seed, "requests": args.requests, "policies": list(policies), "rate_factors": list(factors),
            "goodput_steps": args.goodput_steps,
            "tolerance": TOLERANCE, "aggregate": agg, "worst": [r["name"] for r in worst],
            "workloads": [_jsonable(r) for r in results]}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _jsonable(r: dict) -> dict:
    out = dict(r)
    out["attainment"] = {p: {f"{k:g}": v for k, v in a.items()} for p, a in r["attainment"].items()}
    out["diffs"] = {f"{k:g}": v for k, v in r["diffs"].items()}
    return out


def _print(results: list[dict], agg: dict, worst: list[dict]) -> None:
    f = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    print(f"{'workload':<12}{'cls':>4}{'cap':>7}  {'goodput hfx/best':>17}{'ratio':>7}{'worst d@>=90%':>14}"
          f"{'min d':>8}  diffs by rate (points)")
    for r in results:
        ratio = "-" if r["goodput_ratio"] is None else f"{r['goodput_ratio']:.2f}"
        wd = r["worst_diff_where_baseline_fits"]
        diffs = " ".join(f"{k:g}:{v * 100:+.1f}" for k, v in r["diffs"].items())
        rr = r.get("refined_goodput_ratio")
        refined = "" if rr is None else f"  refined ratio {rr:.2f}"
        print(f"{r['name']:<12}{r['classes']:>4}{r['capacity_rps']:>7.1f}  "
              f"{f(r['goodput_rps'][TARGET]) + '/' + f(r['best_baseline_goodput_rps']):>17}{ratio:>7}"
              f"{'-' if wd is None else f'{wd * 100:+.1f}':>14}{r['min_diff'] * 100:>+8.1f}  {diffs}{refined}")
    n = agg["workloads"]
    wd = agg["worst_diff_where_baseline_fits"]
    worst_d = "-" if wd is None else f"{wd * 100:+.1f}"
    print(f"\n{n} workloads: hfx goodput >= best baseline on {agg['goodput_at_least_baseline']}, >= "
          f"{GOODPUT_WIN}x on {agg['goodput_win_1_3x']}; median ratio {f(agg['goodput_ratio_median'])}; "
          f"workloads with hfx > {TOLERANCE * 100:g} point below a >= 90% baseline: "
          f"{agg['workloads_with_violation']} ({agg['violating_points']} points; worst {worst_d} points); "
          f"grid reached light load on {agg['covers_light_load']}, overload on {agg['covers_overload']}; "
          f"{agg['wall_s']:.0f} s")
    if agg["refined"]:
        print(f"refined goodput (bisection between grid rates): hfx >= best baseline on "
              f"{agg['refined_goodput_at_least_baseline']}, >= {GOODPUT_WIN}x on {agg['refined_goodput_win_1_3x']} "
              f"of {agg['refined']} workloads")
    for r in worst:
        print(f"worst: {r['name']} -> {r['yaml']}\n  replay: {r['replay']}")
