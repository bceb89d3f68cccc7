"""Fast P/D role changes (issue 11): fixed P:D vs role changes under a shifting mix.

`sim` (SIMULATED, 16 instances by default): a prompt-heavy phase, a decode-heavy phase, then
prompt-heavy again (services/sim/phases.py over services/sim/workloads/pd.yaml), the same
requests run once with the P:D ratio fixed and once with the role policy
(services/scheduler/roles) flipping instances, the same core the live scheduler runs. Prints SLO
attainment per phase and per 10 s window, the changes made, and each change's time (the
simulator applies a flip `--change-s` after the decision: the live figure below).

`live` (the real mesh, `hfx up` with --engine sim workers by default, or vllm): streams split
requests through the router and, every few seconds, has the scaler flip one instance
(Scaler.SetRole, the path `hfx role` and the scheduler's role loop take). Per change: the
worker's registry write, the linking (a warm-up transfer per new link), and the time from the
decision to the first request that prefilled on the instance in its new role reaching its first
token; and whether any request failed.

  python -m benchmarks.roles sim [--instances 16] [--ratio 8:8] [--rate 20] [--no-local-prefill]
  python -m benchmarks.roles live [--engine sim|vllm] [--changes 6]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from services import argtypes
from services.scheduler.policy import PolicyConfig, make_policy
from services.scheduler.roles import RoleConfig, RolePolicy
from services.sim import ENGINE_LABEL
from services.sim.metrics import met_slo
from services.sim.phases import Phase, phased
from services.sim.profiles import load_profile
from services.sim.roles import RoleDriver
from services.sim.runner import Simulation, pd_roles
from services.sim.workload import load_workload

WORKLOAD = "services/sim/workloads/pd.yaml"
WINDOW_S = 10.0


def sim_main(args) -> int:
    workload, profile = load_workload(WORKLOAD), load_profile(args.profile)
    d = args.phase_s
    phases = [Phase("prompt-heavy", d, args.rate, {"longdoc": 0.6, "chat": 0.4}),
              Phase("decode-heavy", d, args.rate * args.decode_factor, {"longdoc": 0.05, "chat": 0.95}),
              Phase("prompt-heavy again", d, args.rate, {"longdoc": 0.6, "chat": 0.4})]
    reqs = phased(workload, phases, args.seed, profile.model, profile.chunk_tokens)
    config = PolicyConfig(default_latency_model=profile.model, chunk_tokens=profile.chunk_tokens,
                          default_kv_capacity_tokens=profile.kv_capacity_tokens,
                          reject_classes=workload.reject_classes(), pd_local_prefill=args.local_prefill)
    print(f"{ENGINE_LABEL}; profile {profile.name}; {args.instances} instances starting at P:D {args.ratio}; "
          f"workload {WORKLOAD} in phases of {d:.0f} s: "
          + ", ".join(f"{p.name} {p.rate_rps:g} req/s ({p.weights})" for p in phases)
          + f"; {len(reqs)} requests; seed {args.seed}; policy hfx; D may prefill: {args.local_prefill}")
    for mode in ("fixed", "role changes"):
        started = time.time()
        policy = RolePolicy(RoleConfig(), config) if mode == "role changes" else None
        driver = RoleDriver(policy, change_s=args.change_s)
        sim = Simulation(make_policy("hfx", config), profile, args.instances, args.seed, scaling=driver,
                         roles=pd_roles(args.ratio, args.instances))
        result = sim.run([r for _, r in reqs])
        by_id = {r.spec.request_id: r for r in result.records}
        cells = []
        for ph in phases:
            recs = [by_id[r.spec.request_id] for name, r in reqs if name == ph.name]
            cells.append(f"{ph.name} {sum(map(met_slo, recs)) / len(recs):.1%}")
        windows = {}
        for r in result.records:
            windows.setdefault(int(r.spec.arrival_s // WINDOW_S), []).append(met_slo(r))
        print(f"\n[{mode}] SLO attainment per phase: " + "; ".join(cells)
              + f"; overall {sum(map(met_slo, result.records)) / len(result.records):.1%}  (ran {time.time() - started:.0f} s)")
        print(f"  per {WINDOW_S:.0f} s window (by arrival): "
              + " ".join(f"{sum(v) / len(v):.0%}" for _, v in sorted(windows.items())))
        last = driver.timeline[-1] if driver.timeline else (0, 0, 0)
        print(f"  role changes: {len(driver.changes)}, each in effect {args.change_s:.2f} s after its decision; "
              f"P:D at the end {last[1]}:{last[2]}")
        for c in driver.changes:
            print(f"   t={c.decided_s:6.1f}s {c.decision.instance_id} {c.decision.from_role.value} -> "
                  f"{c.decision.to_role.value}: {c.decision.reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("sim", help="fixed P:D vs role changes in the simulator (SIMULATED)")
    s.add_argument("--instances", type=argtypes.positive_int, default=16, help="default %(default)s")
    s.add_argument("--ratio", default="8:8", help="starting (and fixed) P:D (default %(default)s)")
    s.add_argument("--rate", type=argtypes.positive_float, default=20.0,
                   help="req/s in the prompt-heavy phases (default %(default)s)")
    s.add_argument("--decode-factor", type=argtypes.positive_float, default=2.0,
                   help="the decode-heavy phase's rate as a multiple of --rate (default %(default)s)")
    s.add_argument("--phase-s", type=argtypes.positive_float, default=40.0, help="default %(default)s")
    s.add_argument("--change-s", type=argtypes.positive_float, default=0.5,
                   help="decision to new role in effect, seconds (default %(default)s; `live` measures it)")
    s.add_argument("--profile", default="cpu-tiny", help="default %(default)s")
    s.add_argument("--local-prefill", action=argparse.BooleanOptionalAction, default=True,
                   help="may decode instances prefill short or overflow prompts (pd_local_prefill) (default on)")
    s.add_argument("--seed", type=argtypes.non_negative_int, default=1, help="default %(default)s")
    s.set_defaults(func=sim_main)
    from benchmarks.roles_live import add_live_parser

    add_live_parser(sub)
    args = p.parse_args(argv)
    try:
        pd_roles(getattr(args, "ratio", "1:1"), getattr(args, "instances", 2))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return args.func(args)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


if __name__ == "__main__":
    sys.exit(main())
