"""Colocated vs P/D at equal instance count, in the simulator (SIMULATED; issue 10).

Runs one workload (default: services/sim/workloads/pd.yaml, long prompts beside tight-TPOT chat)
on N simulated instances (engine: sim, SIMULATED), colocated and split P:D at several ratios, for
the HFX policy and the baselines (colocated: fcfs, least-load; P/D: round-robin P + round-robin D
= fcfs, least-load on each stage = least-load), and prints SLO attainment and TTFT / TPOT p99 per
class. The KV transfer per token comes from the profile (cpu-tiny: 0.0029 ms/token).

  python -m benchmarks.pd_sim [--instances 16] [--ratios 4:12 6:10 8:8] [--rates 40] [--requests 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services import argtypes
from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import policy_config
from services.sim import ENGINE_LABEL
from services.report.metrics import report
from services.sim.profiles import load_profile
from services.sim.runner import pd_roles, simulate
from services.sim.workload import generate, load_workload

PD_WORKLOAD = Path(__file__).resolve().parent.parent / "services" / "sim" / "workloads" / "pd.yaml"


def row(setup: str, policy: str, rate: float, rep) -> dict:
    out = {"setup": setup, "policy": policy, "rate_rps": rate, "slo_attainment": rep.slo_attainment,
           "rejected": rep.rejected, "per_class": {}}
    for c, v in rep.per_class.items():
        out["per_class"][c] = {"slo_attainment": v["slo_attainment"], "ttft_p99_ms": v["ttft_ms"]["p99"],
                               "tpot_p99_ms": v["tpot_ms"]["p99"], "rejected": v["rejected"]}
    return out


def print_row(r: dict) -> None:
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    g = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    cls = "  ".join(f"{c}: {v['slo_attainment']:.1%} ttft99 {f(v['ttft_p99_ms'])} tpot99 {g(v['tpot_p99_ms'])}"
                    f" rej {v['rejected']}" for c, v in r["per_class"].items())
    print(f"{r['setup']:<10}{r['policy']:<11}{r['rate_rps']:>6g}{r['slo_attainment']:>8.1%}  {cls}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default=str(PD_WORKLOAD), type=argtypes.workload_file)
    p.add_argument("--profile", default="cpu-tiny", help="latency profile (default %(default)s)")
    p.add_argument("--instances", type=argtypes.positive_int, default=16, help="default %(default)s")
    p.add_argument("--ratios", nargs="+", default=["4:12", "6:10", "8:8"], help="P:D splits (default %(default)s)")
    p.add_argument("--rates", nargs="+", type=argtypes.positive_float, default=[40.0], help="req/s (default %(default)s)")
    p.add_argument("--requests", type=argtypes.positive_int, default=3000, help="per run (default %(default)s)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=1, help="default %(default)s")
    p.add_argument("--policies", nargs="+", default=["hfx", "fcfs", "least-load"], help="default %(default)s")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    try:
        workload = load_workload(args.workload)
        profile = load_profile(args.profile)
        setups = {s: pd_roles(s, args.instances) for s in ["colocated", *args.ratios]}
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = policy_config(profile, workload.classes)
    print(f"{ENGINE_LABEL}; profile {profile.name}; {args.instances} instances; workload {args.workload}; "
          f"seed {args.seed}; {args.requests} requests per run")
    print(f"{'setup':<10}{'policy':<11}{'rate':>6}{'attain':>8}  per class: attainment, TTFT p99 ms, TPOT p99 ms, rejected")
    rows = []
    for rate in args.rates:
        requests = generate(workload, rate, args.requests, args.seed, profile.model, profile.chunk_tokens)
        for setup, roles in setups.items():
            for name in args.policies:
                result = simulate(make_policy(name, config), profile, requests, args.instances, args.seed, roles=roles)
                rows.append(row(setup, name, rate, report(name, rate, result)))
                print_row(rows[-1])
    print(f"({ENGINE_LABEL}; P/D baselines: fcfs = round-robin P + round-robin D, least-load = least-load per stage; "
          "attainment counts rejected/failed as misses)")
    if args.json:
        Path(args.json).write_text(json.dumps({"engine": ENGINE_LABEL, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
