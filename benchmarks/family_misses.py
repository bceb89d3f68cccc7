"""Who serves what at one family point (engine: sim): hfx's misses against the baselines', by request.

For each `NAME@RATE` (a workload of a stored family run and one of its grid rates), simulates hfx
and the three baselines on the same 200 requests and prints, per task class, the requests each
met; then hfx's misses split by how many baselines met the same request (none: no baseline's
schedule met it either; all three: a request every baseline served), and the requests hfx alone
met. A near miss whose misses no baseline met is not lost to a baseline's choice; one whose
misses every baseline met is (issue 17, eleventh pass).

    PYTHONPATH=. python benchmarks/family_misses.py s1-w042@67 s3-w003@18
"""

from __future__ import annotations

import argparse
import collections

from services.report.metrics import met_slo
from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import policy_config
from services.sim.family_bench import stored_family
from services.sim.profiles import get_profile
from services.sim.runner import simulate
from services.sim.workload import generate

BASELINES = ("fcfs", "least-load", "headroom")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("points", nargs="+", help="NAME@RATE, e.g. s1-w042@67 (seed from the name's s1/s2/s3)")
    p.add_argument("--stored", default="benchmarks/family-issue17/sixth/now-s{seed}.json")
    p.add_argument("--instances", type=int, default=4)
    args = p.parse_args(argv)
    profile = get_profile("cpu-tiny")
    for point in args.points:
        name, rate = point.split("@")
        doc, family = stored_family(args.stored.format(seed=name[1]))
        workload = family[name]
        config = policy_config(profile, workload.classes)
        requests = generate(workload, float(rate), doc["requests"], doc["seed"], profile.model, profile.chunk_tokens)
        met = {pol: [met_slo(r) for r in simulate(make_policy(pol, config), profile, requests, args.instances,
                                                  doc["seed"]).records]
               for pol in ("hfx", *BASELINES)}
        print(f"{name} @ {rate} req/s ({len(requests)} requests)")
        for pol, flags in met.items():
            per: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
            for req, ok in zip(requests, flags):
                per[req.spec.task_class][0] += ok
                per[req.spec.task_class][1] += 1
            classes = " ".join(f"{c} {m}/{n}" for c, (m, n) in sorted(per.items()))
            print(f"  {pol:<10} met {sum(flags):>3}: {classes}")
        misses = [i for i, ok in enumerate(met["hfx"]) if not ok]
        by = [sum(met[b][i] for b in BASELINES) for i in misses]
        alone = sum(1 for i, ok in enumerate(met["hfx"]) if ok and not any(met[b][i] for b in BASELINES))
        print(f"  hfx misses {len(misses)}: no baseline met {by.count(0)}, one or two met "
              f"{sum(1 for x in by if 0 < x < len(BASELINES))}, all three met {by.count(len(BASELINES))}; "
              f"met by hfx alone {alone}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
