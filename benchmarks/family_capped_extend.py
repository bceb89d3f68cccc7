"""Where the rate grid caps the goodput ratio: measure above it (engine: sim, SIMULATED).

On a workload whose best baseline still attains >= 90% at the grid's top rate (1.2x the estimated
capacity), every goodput hfx can show on the grid is at most that rate, so its ratio is at most
1.0 however well it does (and the refined goodput is the top rate too: nothing above it to
bisect towards). This measures all four policies at 1.3, 1.6, 2.0, 2.6 and 3.4x the top grid
rate (stopping after the first rate where every policy is below 90%), on the workloads of a
stored family run that hfx does not win at 1.3x and whose best baseline's grid goodput is the
top rate; prints each policy's attainment per rate and writes them as JSON.

    python benchmarks/family_capped_extend.py benchmarks/family-issue17/fifth/now-s{1,2,3}.json \
        --json benchmarks/family-issue17/sixth/capped-extended.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.sim.family_bench import measurer, stored_family
from services.sim.profiles import get_profile

POLICIES = ("fcfs", "least-load", "headroom", "hfx")
FACTORS = (1.3, 1.6, 2.0, 2.6, 3.4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stored", nargs="+", help="`hfx bench --sim --family --json` documents (or rerun documents)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    prof = get_profile("cpu-tiny")
    out = {}
    for path in args.stored:
        doc, fam = stored_family(path)
        for w in doc["workloads"]:
            if w["goodput_win"] or w["best_baseline_goodput_rps"] != w["rates"][-1]:
                continue
            top = w["rates"][-1]
            measure = measurer(fam[w["name"]], prof, 4, doc["requests"], doc["seed"])
            above: dict[str, dict[str, float]] = {}
            for f in FACTORS:
                rate = float(f"{top * f:.3g}")
                above[f"{rate:g}"] = {pol: measure(pol, rate) for pol in POLICIES}
                if max(above[f"{rate:g}"].values()) < 0.9:
                    break
            out[w["name"]] = {"top_grid_rate": top, "above": above}
            print(w["name"], top, json.dumps(above), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
