"""`hfx sim` and `hfx autoscale-bench`, and the simulated sweep that `hfx bench --sim` runs; the main
`hfx` CLI calls add_sim_commands(subparsers). `hfx bench` itself (sim or live) is services/bench/cli.py,
which builds on this module; nothing here imports services.bench."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from services import argtypes
from services.scheduler.policy import PolicyConfig, make_policy, policy_names
from services.scheduler.policy.settings import load_settings, policy_config
from services.sim import ENGINE_LABEL
from services.report import tables
from services.report.metrics import RunReport, report
from services.sim.profiles import PROFILES, Profile, load_profile
from services.sim.runner import pd_roles, simulate
from services.sim.workload import Workload, as_live, generate, load_workload

DEFAULT_WORKLOAD = Path(__file__).parent / "workloads" / "default.yaml"


def add_sim_commands(subparsers) -> None:
    sim = subparsers.add_parser("sim", help="run a workload through the discrete-event simulator")
    add_common_arguments(sim, rates_default=[20.0], policies_default=["hfx"])
    sim.add_argument("--pd", default="", metavar="P:D",
                     help="P/D: the first P instances prefill, the next D decode, the rest are colocated; "
                     "`python -m benchmarks.pd_sim` compares splits (default: all colocated)")
    sim.add_argument("--max-model-len", type=argtypes.non_negative_int, default=0,
                     help="send requests as a live bench does: max_tokens = output, clipped to this context; "
                     "0 = off (default %(default)s)")
    sim.set_defaults(func=run_sim)
    from services.sim.autoscale_bench import add_autoscale_bench

    add_autoscale_bench(subparsers)


def add_common_arguments(p: argparse.ArgumentParser, rates_default: list[float], policies_default: list[str]) -> None:
    p.add_argument("--workload", default=str(DEFAULT_WORKLOAD), type=argtypes.workload_file,
                   help="workload YAML (default: the built-in mix)")
    p.add_argument("--policy", nargs="+", default=None, choices=policy_names(),
                   help=f"scheduling policies, each run on the same requests (default {' '.join(policies_default)}; "
                   "with --family: all)")
    p.set_defaults(policies_default=policies_default)
    p.add_argument("--rate", nargs="+", type=argtypes.positive_float, default=rates_default,
                   help=f"request rate(s), req/s (default {' '.join(f'{r:g}' for r in rates_default)})")
    p.add_argument("--requests", type=argtypes.positive_int, default=2000,
                   help="requests per rate (default %(default)s)")
    p.add_argument("--instances", type=argtypes.positive_int, default=4,
                   help="instances to simulate; with --live-policies, workers unless --workers (default %(default)s)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=1,
                   help="seed of the workload's arrivals and lengths and of the simulator (default %(default)s)")
    p.add_argument("--profile", default=None, metavar="NAME|FILE", type=argtypes.sim_profile,
                   help=f"latency profile of instances: {', '.join(sorted(PROFILES))} or a JSON file from "
                   "`hfx profile` (default cpu-tiny; with --target, SLOs come from it instead of probing)")
    p.add_argument("--placement", default=None, choices=["best_fit", "spread"],
                   help=f"hfx placement (default: --policy-config's, else {PolicyConfig.placement})")
    p.add_argument("--policy-config", default=None, type=argtypes.policy_config_file, metavar="FILE",
                   help="YAML/JSON of policy settings (PolicyConfig fields), as `hfx scheduler --policy-config` "
                   "takes; they win over what --profile and the workload's classes imply (default: none)")
    p.add_argument("--tickets", action=argparse.BooleanOptionalAction, default=True,
                   help="grant and spend tickets as the live scheduler does by default (hfx: a request a ticket "
                   "covers starts without a pass); --no-tickets: every request takes a pass, as `hfx up "
                   "--no-tickets` (default on)")
    p.add_argument("--json", type=argtypes.output_file,
                   help="write one record per (policy, rate) here (default: not written)")
    p.add_argument("--plot", help="write PNG plots into this directory (default: no plots)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: bars on stderr)")


def sweep_policy_config(args: argparse.Namespace, profile: Profile, workload: Workload) -> PolicyConfig:
    """The policy's knobs by the live scheduler's rule (services/scheduler/policy/settings.py): the
    profile the instances run, the workload's classes (on_miss), then --policy-config and --placement."""
    settings = load_settings(args.policy_config) if args.policy_config else {}
    if args.placement is not None:
        settings["placement"] = args.placement
    return policy_config(profile, workload.classes, settings)


def run_sim(args: argparse.Namespace) -> int:
    return run_sweep(args)


def run_family(args: argparse.Namespace) -> int:
    """`hfx bench --sim --family N` (services/sim/family_bench.py)."""
    from services.sim.family_bench import run_family as run

    try:
        profile = load_profile(args.profile or "cpu-tiny")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(args, profile, args.policy or policy_names())


def run_sweep(args: argparse.Namespace) -> int:
    """Every policy x rate of `args` in the simulator: the table, --json records, --plot."""
    args.policy = args.policy or args.policies_default
    try:
        workload = load_workload(args.workload)
        profile = load_profile(args.profile or "cpu-tiny")
        roles = pd_roles(args.pd, args.instances)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        config = sweep_policy_config(args, profile, workload)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = f" (P/D {args.pd})" if args.pd else ""
    print(f"{ENGINE_LABEL}; profile {profile.name} ({profile.note}); {args.instances} instances{split}; "
          f"workload {args.workload}; seed {args.seed}")
    reports: list[RunReport] = []
    samples: dict = {}
    for rate in args.rate:
        try:
            requests = generate(workload, rate, args.requests, args.seed, profile.model, profile.chunk_tokens)
            if getattr(args, "max_model_len", 0):
                requests = as_live(requests, args.max_model_len)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for name in args.policy:
            bar = tqdm(total=len(requests), desc=f"{name} @ {rate:g} rps", file=sys.stderr,
                       disable=args.quiet, leave=False, mininterval=0.5)
            start = time.perf_counter()
            result = simulate(make_policy(name, config), profile, requests, args.instances, args.seed,
                              progress=lambda done: bar.update(done - bar.n) if done % 200 == 0 else None,
                              roles=roles, tickets=args.tickets)
            bar.close()
            reports.append(report(name, rate, result, time.perf_counter() - start))
            samples[(name, rate)] = tables.samples_of(result)
    records = tables.records_of(reports)
    tables.print_table(records, ENGINE_LABEL)
    summary = tables.print_comparison(records)
    if args.json:
        Path(args.json).write_text(json.dumps({"engine": ENGINE_LABEL, "profile": profile.name,
                                               "instances": args.instances, "seed": args.seed,
                                               "workload": args.workload, "requests": args.requests,
                                               "comparison": summary, "records": records}, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from services.report import plots  # matplotlib only when asked
        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        paths = [plots.attainment_vs_rate(records, out, ENGINE_LABEL), *plots.latency_cdfs(samples, out, ENGINE_LABEL)]
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m services.sim.cli sim ...`); `hfx` wires the same commands."""
    parser = argparse.ArgumentParser(prog="hfx")
    add_sim_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
