"""Upper bounds on any policy's SLO attainment and goodput for the workloads of a family run (engine:
sim, no simulation: arithmetic over the generated requests and the cpu-tiny latency model).

For a workload at a rate, the same requests the bench simulates (services/sim/family_bench.measurer)
are generated, and the fewest misses any placement must have is bounded from below by:
1. alone: requests that miss their TTFT or TPOT SLO even alone on an idle instance (prefill
   ceil(L/C)*c0 + c1*L; decode steps c0 + c2 + c3*kv), with the step times taken 8% faster than
   the model (the simulator's step noise is lognormal, sigma 3%), so borderline ones count as met;
2. windows: for a window [a, b] of time, the requests that arrive in it and whose deadline
   (first token: arrival + TTFT SLO; last token: that + (O-1) x TPOT SLO) falls in it need their
   work done inside it on the cluster's `instances` instances; the work of a request is a lower
   bound, 5% below the model: prefill c1*L (chunks share their steps' c0), and per decode token
   c2 + c3*kv plus c0 shared by as many sequences as its TPOT SLO lets a step hold (at most
   max_num_seqs). Dropping the largest works first until the rest fit gives the fewest misses
   in a window; disjoint windows add up (a request is counted in at most one), chosen by weighted
   interval scheduling over windows that start at an arrival and end at a deadline. Bound 2 is
   computed twice, once with the first-token deadline and the prefill work, once with the last
   token's and the whole work, and the larger is kept.
Upper bound on attainment = 1 - (alone misses + window misses) / requests. It ignores KV
capacity, the chunk budget and that a prefill runs on one instance, so it is loose: a policy
cannot beat it, and may fall well short of it.

Per workload of a stored `--family --json` document (`fifth/now-sS.json`): the bound at every grid
rate, the bound goodput on the grid (highest grid rate where the bound is >= 90%) and on a fine
geometric scan (--scan-steps per grid interval, up to --scan-max x the top grid rate), and whether
1.3x the best baseline's goodput (grid; refined) is above the bound's: then no policy can win
that workload at 1.3x, on this grid or at all.

    python benchmarks/family_bounds.py benchmarks/family-issue17/fifth/now-s1.json --json out.json
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
from pathlib import Path

from services.sim.family_bench import GOODPUT_WIN, add_stored_args, stored_family
from services.sim.profiles import Profile, get_profile
from services.sim.workload import generate

ALONE_FAST = 0.92     # step times this much below the model still count (step noise, sigma 3%)
WORK_FAST = 0.95


def _alone_ok(L: int, O: int, ttft: float, tpot: float, p: Profile) -> bool:
    m = p.model
    prefill = (math.ceil(L / p.chunk_tokens) * m.c0_ms + m.c1_ms_per_prefill_token * L) * ALONE_FAST
    if prefill > ttft:
        return False
    if O <= 1:
        return True
    mean_step = m.c0_ms + m.c2_ms_per_decode_seq + m.c3_ms_per_kv_token * (L + O / 2)
    return mean_step * ALONE_FAST <= tpot


def _work(L: int, O: int, tpot: float, p: Profile) -> tuple[float, float]:
    """(prefill work, whole work) in instance-ms, lower bounds."""
    m = p.model
    pre = m.c1_ms_per_prefill_token * L * WORK_FAST
    if O <= 1:
        return pre, pre
    nmax = min(p.max_num_seqs, max(1.0, (tpot / ALONE_FAST - m.c0_ms) / m.c2_ms_per_decode_seq))
    per_tok = m.c2_ms_per_decode_seq + m.c3_ms_per_kv_token * (L + O / 2) + m.c0_ms / nmax
    return pre, pre + (O - 1) * per_tok * WORK_FAST


def _window_misses(jobs: list[tuple[float, float, float]], instances: int) -> int:
    """jobs: (arrival ms, deadline ms, work ms). Fewest misses summed over disjoint windows."""
    if not jobs:
        return 0
    by_arrival = sorted(jobs)
    cands: list[tuple[float, float, int]] = []
    for i, (a, _, _) in enumerate(by_arrival):
        if i and by_arrival[i - 1][0] == a:
            continue
        inside = sorted(by_arrival[i:], key=lambda j: j[1])      # by deadline
        works: list[float] = []                                   # ascending
        total = 0.0
        for x, b, w in inside:
            bisect.insort(works, w)
            total += w
            cap = instances * (b - a)
            if total <= cap + 1e-9:
                continue
            k, t = 0, total
            while t > cap + 1e-9 and k < len(works):
                t -= works[-1 - k]
                k += 1
            cands.append((a, b, k))
    if not cands:
        return 0
    cands.sort(key=lambda c: c[1])
    ends = [c[1] for c in cands]
    best = [0] * (len(cands) + 1)
    for i, (a, b, k) in enumerate(cands):
        # windows ending at or before a share no request with this one (arrival >= a > their deadlines)
        j = bisect.bisect_right(ends, a, 0, i)
        best[i + 1] = max(best[i], best[j] + k)
    return best[-1]


def bound_attainment(workload, profile: Profile, instances: int, requests: int, seed: int, rate: float) -> dict:
    reqs = generate(workload, rate, requests, seed, profile.model, profile.chunk_tokens)
    alone_miss = 0
    first, last = [], []
    for r in reqs:
        L, O, slo = r.spec.prompt_tokens, r.output_tokens, r.spec.slo
        if not _alone_ok(L, O, slo.ttft_ms, slo.tpot_ms, profile):
            alone_miss += 1
            continue
        a = r.spec.arrival_s * 1000.0
        pre, whole = _work(L, O, slo.tpot_ms, profile)
        first.append((a, a + slo.ttft_ms, pre))
        last.append((a, a + slo.ttft_ms + max(0, O - 1) * slo.tpot_ms, whole))
    wm = max(_window_misses(first, instances), _window_misses(last, instances))
    return {"alone_misses": alone_miss, "window_misses": wm,
            "bound": 1.0 - (alone_miss + wm) / len(reqs)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stored_args(p)
    p.add_argument("--short-only", action="store_true", help="only workloads hfx does not win at 1.3x (grid)")
    p.add_argument("--scan-steps", type=int, default=4)
    p.add_argument("--scan-max", type=float, default=3.0)
    args = p.parse_args(argv)
    doc, family = stored_family(args.stored)
    profile = get_profile("cpu-tiny")
    out = []
    for w in doc["workloads"]:
        if args.only and w["name"] not in args.only:
            continue
        if args.short_only and w["goodput_win"]:
            continue
        wl = family[w["name"]]
        rates = [float(r) for r in w["rates"]]
        grid = {r: bound_attainment(wl, profile, args.instances, doc["requests"], doc["seed"], r) for r in rates}
        # fine scan: geometric, from the lowest grid rate to scan_max x the top one
        lo, hi = rates[0], rates[-1] * args.scan_max
        n = max(1, round(args.scan_steps * math.log(hi / lo) / math.log(rates[1] / rates[0])))
        scan = sorted({float(f"{lo * (hi / lo) ** (i / n):.3g}") for i in range(n + 1)})
        fine = {r: bound_attainment(wl, profile, args.instances, doc["requests"], doc["seed"], r)["bound"]
                for r in scan}
        grid_g = max((r for r, b in grid.items() if b["bound"] >= 0.9), default=None)
        fine_g = max((r for r, b in fine.items() if b >= 0.9), default=None)
        best = w["best_baseline_goodput_rps"]
        rbest = max((g for k, g in w["refined_goodput_rps"].items() if k != "hfx" and g is not None), default=None)
        res = {
            "name": w["name"], "rates": rates, "best_baseline_goodput_rps": best,
            "hfx_goodput_rps": w["goodput_rps"]["hfx"], "goodput_win": w["goodput_win"],
            "refined_best_baseline_rps": rbest, "refined_hfx_rps": w["refined_goodput_rps"].get("hfx"),
            "refined_goodput_win": w.get("refined_goodput_win"),
            "bound_at_grid": {f"{r:g}": b for r, b in grid.items()},
            "bound_goodput_grid_rps": grid_g, "bound_goodput_scan_rps": fine_g,
            # can a 1.3x win show at all?  grid: hfx's grid goodput is a grid rate >= 1.3 x best
            "win_possible_grid": grid_g is not None and (best is None or grid_g >= GOODPUT_WIN * best - 1e-9),
            "win_possible_refined": fine_g is not None and (rbest is None or min(fine_g, rates[-1])
                                                           >= GOODPUT_WIN * rbest - 1e-9),
            "win_possible_unbounded_grid": fine_g is not None and (rbest is None or fine_g >= GOODPUT_WIN * rbest - 1e-9),
        }
        out.append(res)
        gb = " ".join(f"{r:g}:{100 * b['bound']:.1f}({b['alone_misses']}+{b['window_misses']})" for r, b in grid.items())
        print(f"{w['name']}: best {best} hfx {w['goodput_rps']['hfx']} refined {rbest}/{res['refined_hfx_rps']} "
              f"bound grid {grid_g} scan {fine_g}; win possible grid {res['win_possible_grid']} "
              f"refined {res['win_possible_refined']} (rates unbounded {res['win_possible_unbounded_grid']}); {gb}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"stored": args.stored, "seed": doc["seed"],
                                               "requests": doc["requests"], "workloads": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
