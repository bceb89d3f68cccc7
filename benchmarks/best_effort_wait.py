"""Should a best-effort request wait longer for spare room before it is refused? (SIMULATED)

Runs the hfx policy in the simulator (engine: sim, SIMULATED; 4 cpu-tiny instances, the default
workload) at several rates and seeds with different `best_effort_max_wait_ms`, and prints SLO
attainment, refusals and best-effort placements for each. Issue 9 asked whether the live
refusals of long-prompt requests ("best effort for 1000+ ms without spare room") were right.

  python -m benchmarks.best_effort_wait [--rates 10 14 18 22 28] [--seeds 1 2] [--waits-ms 1000 3000 10000]
"""

from __future__ import annotations

import argparse

from services import argtypes
from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import policy_config
from services.sim.cli import DEFAULT_WORKLOAD
from services.report.metrics import report
from services.sim.profiles import load_profile
from services.sim.runner import simulate
from services.sim.workload import generate, load_workload


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=argtypes.positive_float, nargs="+", default=[10, 14, 18, 22, 28],
                   help="request rates, req/s (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="workload seeds (default %(default)s)")
    p.add_argument("--waits-ms", type=argtypes.positive_float, nargs="+", default=[1000, 3000, 10000],
                   help="best_effort_max_wait_ms values to compare (default %(default)s)")
    p.add_argument("--requests", type=argtypes.positive_int, default=2000, help="requests per run (default %(default)s)")
    p.add_argument("--instances", type=argtypes.positive_int, default=4, help="simulated instances (default %(default)s)")
    args = p.parse_args(argv)
    workload, profile = load_workload(DEFAULT_WORKLOAD), load_profile("cpu-tiny")
    print(f"engine: sim (SIMULATED); {args.instances} x {profile.name}; default workload; {args.requests} requests")
    print("rate seed  " + "  ".join(f"{'wait ' + format(w / 1000, 'g') + ' s: attain  rej   b.e.':>32}" for w in args.waits_ms))
    for rate in args.rates:
        for seed in args.seeds:
            requests = generate(workload, rate, args.requests, seed, profile.model, profile.chunk_tokens)
            cells = []
            for wait_ms in args.waits_ms:
                config = policy_config(profile, workload.classes, {"best_effort_max_wait_ms": wait_ms})
                r = report("hfx", rate, simulate(make_policy("hfx", config), profile, requests, args.instances, seed))
                cells.append(f"{r.slo_attainment * 100:>24.1f}%{r.rejected:>5}{r.best_effort:>6}")
            print(f"{rate:>4g}{seed:>5}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
