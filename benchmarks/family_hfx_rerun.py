"""Re-measure hfx over a stored family run, against the baselines stored with it (engine: sim).

The baselines (fcfs, least-load, headroom) do not change when the hfx policy does, and the
simulator is deterministic, so a policy change needs only hfx's points: its attainment at every
grid rate of every workload of a `hfx bench --sim --family ... --json` document, and (with
`--goodput-steps K`) its refined goodput, compared with the baselines' grid points and refined
goodputs taken from that document. Prints the per-workload violations and the aggregate, and
writes a document of the same shape (`--json`).

    python benchmarks/family_hfx_rerun.py benchmarks/family-issue17/after/fam-s1.json --goodput-steps 3
    python benchmarks/family_hfx_rerun.py benchmarks/family-issue17/after/fam-s1.json --only s1-w034
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from services.sim import ENGINE_LABEL
from services.sim.family_bench import (GOODPUT_WIN, TARGET, add_stored_args, aggregate, measurer, refine_goodput, stored_family,
                                        verdict)
from services.sim.profiles import get_profile


def _refined(stored: dict, attain_hfx: dict[float, float], measure, steps: int) -> dict:
    """hfx's refined goodput beside the stored baselines' (the ones tied for the best grid goodput)."""
    mine = refine_goodput({TARGET: attain_hfx}, measure, steps)["refined_goodput_rps"][TARGET]
    best = max((g for p, g in stored.get("refined_goodput_rps", {}).items() if p != TARGET and g is not None),
               default=None)
    return {"refined_goodput_rps": {**stored.get("refined_goodput_rps", {}), TARGET: mine},
            "refined_goodput_ratio": None if best is None or mine is None else mine / best,
            "refined_goodput_at_least_baseline": (mine or 0.0) >= (best or 0.0) and (mine is not None or best is None),
            "refined_goodput_win": mine is not None and (best is None or mine >= GOODPUT_WIN * best)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stored_args(p)   # the baselines are taken from the stored document
    p.add_argument("--goodput-steps", type=int, default=0)
    args = p.parse_args(argv)
    doc, family = stored_family(args.stored)
    profile = get_profile("cpu-tiny")
    stored = {w["name"]: w for w in doc["workloads"]}
    names = args.only or [w["name"] for w in doc["workloads"]]
    print(f"{ENGINE_LABEL}; family seed {doc['seed']}; {doc['requests']} requests per point; hfx re-measured, "
          f"baselines from {args.stored}")
    started = time.perf_counter()
    results = []
    for name in names:
        s = stored[name]
        rates = [float(r) for r in s["rates"]]
        measure = measurer(family[name], profile, args.instances, doc["requests"], doc["seed"])
        attain = {p: {float(r): a for r, a in pa.items()} for p, pa in s["attainment"].items() if p != TARGET}
        attain[TARGET] = {r: measure(TARGET, r) for r in rates}
        v = verdict(attain)
        if args.goodput_steps:
            v.update(_refined(s, attain[TARGET], measure, args.goodput_steps))
        r = {**s, "attainment": attain, **v}
        results.append(r)
        old = {float(k): a for k, a in s["attainment"][TARGET].items()}
        changed = " ".join(f"{k:g}:{100 * old[k]:.1f}->{100 * a:.1f}" for k, a in attain[TARGET].items()
                           if abs(a - old[k]) > 1e-9)
        viol = " ".join(f"{k:g}:{100 * v['diffs'][k]:+.1f}" for k in v["violations"])
        ref = (f" refined {s.get('refined_goodput_ratio') or 0:.2f}->{v.get('refined_goodput_ratio') or 0:.2f}"
               if args.goodput_steps else "")
        print(f"{name}: violations [{viol}] hfx {changed or 'unchanged'}{ref}", flush=True)
    agg = aggregate(results)
    agg["wall_s"] = time.perf_counter() - started
    print(json.dumps(agg, indent=1))
    if args.json:
        out = [{**r, "attainment": {p: {f"{k:g}": a for k, a in pa.items()} for p, pa in r["attainment"].items()},
                "diffs": {f"{k:g}": d for k, d in r["diffs"].items()}} for r in results]
        Path(args.json).write_text(json.dumps({**{k: doc[k] for k in ("seed", "requests", "rate_factors")},
                                               "goodput_steps": args.goodput_steps, "aggregate": agg,
                                               "workloads": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
