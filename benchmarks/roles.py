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

`live-mix` (the real mesh; SIMULATED workers, or real vLLM CPU workers with `--engine vllm`): the
same shifting mix sent open-loop through the router of a fresh `hfx up --prefill P --decode D` per mode, once with the ratio fixed and once
with the scheduler's role loop on (`--role-changes`); attainment per phase and per 10 s window,
and each change the scaler carried out with its time (from the scaler's log). Use a profile
whose token rate this machine can serve for 16 workers (benchmarks/sim-cpu-tiny-x10.json) and
the model's context (`--max-model-len 2048`: prompts clipped as a live client must); `sim` with
the same flags is its simulator counterpart.

  python -m benchmarks.roles sim [--instances 16] [--ratio 8:8] [--rate 20] [--no-local-prefill]
  python -m benchmarks.roles live [--engine sim|vllm] [--changes 6]
  python -m benchmarks.roles live-mix [--ratio 2:14] [--rate 3] [--profile FILE] [--max-model-len 2048]
  python -m benchmarks.roles live-mix --engine vllm --instances 3 --ratio 2:1 --rate 4 --profile FILE ...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks.roles_live import add_live_parser, add_mix_parser
from benchmarks.roles_workload import add_mix_arguments, print_attainment, shifting_mix
from services import argtypes
from services.scheduler.policy import make_policy
from services.scheduler.roles import RoleConfig, RolePolicy
from services.sim.roles import RoleDriver
from services.sim.runner import Simulation, pd_roles

def sim_main(args) -> int:
    _, phases, reqs, phase_of, config, profile = shifting_mix(args)
    for mode in ("fixed", "role changes"):
        started = time.time()
        policy = RolePolicy(RoleConfig(), config) if mode == "role changes" else None
        driver = RoleDriver(policy, change_s=args.change_s)
        sim = Simulation(make_policy("hfx", config), profile, args.instances, args.seed, scaling=driver,
                         roles=pd_roles(args.ratio, args.instances))
        result = sim.run(reqs)
        print_attainment(mode, phases, result.records, phase_of, f"  (ran {time.time() - started:.0f} s)")
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
    s.add_argument("--change-s", type=argtypes.positive_float, default=0.5,
                   help="decision to new role in effect, seconds (default %(default)s; `live` measures it)")
    add_mix_arguments(s)
    s.set_defaults(func=sim_main)
    add_live_parser(sub)
    add_mix_parser(sub)
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
