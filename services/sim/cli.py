"""`hfx sim` and `hfx bench` subcommands; the main `hfx` CLI calls add_sim_commands(subparsers)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from services import argtypes
from services.scheduler.policy import PolicyConfig, make_policy, policy_names
from services.sim import ENGINE_LABEL
from services.sim.metrics import RunReport, comparison, describe_comparison, e2e_ms, goodput, report, tpot_ms, ttft_ms
from services.sim.profiles import PROFILES, load_profile
from services.sim.runner import pd_roles, simulate
from services.sim.workload import as_live, generate, load_workload

DEFAULT_WORKLOAD = Path(__file__).parent / "workloads" / "default.yaml"


def add_sim_commands(subparsers) -> None:
    sim = subparsers.add_parser("sim", help="run a workload through the discrete-event simulator")
    _common(sim, rates_default=[20.0], policies_default=["hfx"])
    sim.add_argument("--pd", default="", metavar="P:D",
                     help="P/D: the first P instances prefill, the next D decode, the rest are colocated; "
                     "`python -m benchmarks.pd_sim` compares splits (default: all colocated)")
    sim.add_argument("--max-model-len", type=argtypes.non_negative_int, default=0,
                     help="send requests as a live bench does: max_tokens = output, clipped to this context; "
                     "0 = off (default %(default)s)")
    sim.set_defaults(func=run_sim)
    bench = subparsers.add_parser("bench", help="sweep policies x rates on a workload: --sim, or live (--target)")
    _common(bench, rates_default=[10.0, 20.0, 40.0], policies_default=["fcfs", "hfx"])
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--sim", action="store_true", help="run in the simulator (the default)")
    mode.add_argument("--target", type=argtypes.target_address,
                      help="live: the HFX router (grpc://HOST:PORT or HOST:PORT) or an OpenAI-compatible server "
                      "(http://HOST:PORT); the policy is the target's (default: none, simulate)")
    from services.bench.cli import add_live_arguments

    add_live_arguments(bench, mode)
    fam = bench.add_argument_group("workload family (--sim --family N)")
    fam.add_argument("--family", type=argtypes.non_negative_int, default=0, metavar="N",
                     help="run every policy over N random workloads of family --seed, each at rates from light "
                     "load to overload (multiples of its estimated capacity), and compare hfx with the best "
                     "baseline (default %(default)s: off)")
    fam.add_argument("--rate-factors", nargs="+", type=argtypes.positive_float, default=None, metavar="X",
                     help="--family: rates as multiples of each workload's estimated capacity "
                     "(default: services/sim/family.py RATE_FACTORS)")
    fam.add_argument("--goodput-steps", type=argtypes.non_negative_int, default=0, metavar="K",
                     help="--family: refine the goodput of hfx and of the best baseline(s) by K bisection steps "
                     "(geometric) between the last grid rate at >= 90%% and the next (default %(default)s: grid only)")
    fam.add_argument("--worst", type=argtypes.non_negative_int, default=5,
                     help="--family: how many worst workloads to write out (default %(default)s)")
    fam.add_argument("--family-out", default="family-worst", metavar="DIR",
                     help="--family: where the worst workloads' YAML goes (default %(default)s)")
    bench.set_defaults(func=run_bench, pd="")   # `hfx bench` runs colocated clusters
    from services.sim.autoscale_bench import add_autoscale_bench

    add_autoscale_bench(subparsers)


def _common(p: argparse.ArgumentParser, rates_default: list[float], policies_default: list[str]) -> None:
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
    p.add_argument("--placement", default=PolicyConfig.placement, choices=["best_fit", "spread"],
                   help=f"hfx placement (default {PolicyConfig.placement})")
    p.add_argument("--json", type=argtypes.output_file,
                   help="write one record per (policy, rate) here (default: not written)")
    p.add_argument("--plot", help="write PNG plots into this directory (default: no plots)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: bars on stderr)")


def run_sim(args: argparse.Namespace) -> int:
    return _run(args)


def run_bench(args: argparse.Namespace) -> int:
    if args.target or args.live_policies:
        from services.bench.cli import run_live_bench

        args.profile_given = args.profile is not None
        args.policy = args.policy or args.policies_default
        return run_live_bench(args)
    if args.family:
        return _run_family(args)
    return _run(args)


def _run_family(args: argparse.Namespace) -> int:
    from services.sim.family_bench import run_family

    try:
        profile = load_profile(args.profile or "cpu-tiny")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_family(args, profile, args.policy or policy_names())


def _run(args: argparse.Namespace) -> int:
    args.policy = args.policy or args.policies_default
    try:
        workload = load_workload(args.workload)
        profile = load_profile(args.profile or "cpu-tiny")
        roles = pd_roles(args.pd, args.instances)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = PolicyConfig(placement=args.placement, default_latency_model=profile.model,
                          chunk_tokens=profile.chunk_tokens, default_kv_capacity_tokens=profile.kv_capacity_tokens,
                          reject_classes=workload.reject_classes())
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
                              roles=roles)
            bar.close()
            reports.append(report(name, rate, result, time.perf_counter() - start))
            samples[(name, rate)] = {
                "ttft_ms": [v for r in result.records if e2e_ms(r) is not None and (v := ttft_ms(r)) is not None],
                "tpot_ms": [v for r in result.records if (v := tpot_ms(r)) is not None],
                "e2e_ms": [v for r in result.records if (v := e2e_ms(r)) is not None],
            }
    records = _records(reports)
    _print_table(records)
    summary = print_comparison(records)
    if args.json:
        Path(args.json).write_text(json.dumps({"engine": ENGINE_LABEL, "profile": profile.name,
                                               "instances": args.instances, "seed": args.seed,
                                               "workload": args.workload, "requests": args.requests,
                                               "comparison": summary, "records": records}, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from services.sim import plots  # matplotlib only when asked
        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        paths = [plots.attainment_vs_rate(records, out), *plots.latency_cdfs(samples, out)]
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _records(reports: list[RunReport]) -> list[dict]:
    by_policy: dict[str, list[RunReport]] = {}
    for r in reports:
        by_policy.setdefault(r.policy, []).append(r)
    return [r.record(goodput(by_policy[r.policy])) for r in reports]


def _print_table(records: list[dict], label: str = ENGINE_LABEL) -> None:
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    print(f"{'policy':<11}{'rate':>7}{'attain':>8}{'goodput':>8}{'ttft p50':>9}{'p99':>8}{'tpot p50':>9}"
          f"{'p99':>7}{'e2e mean':>9}{'p99':>8}{'done':>6}{'rej':>6}{'b.e.':>6}{'wall s':>7}  per class")
    for r in records:
        classes = " ".join(f"{c}={v['slo_attainment']:.0%}" for c, v in r["per_class"].items())
        gp = "-" if r["goodput_rps"] is None else f"{r['goodput_rps']:g}"
        print(f"{r['policy']:<11}{r['rate_rps']:>7g}{r['slo_attainment']:>8.1%}{gp:>8}{f(r['ttft_ms']['p50']):>9}"
              f"{f(r['ttft_ms']['p99']):>8}{r['tpot_ms']['p50'] or 0:>9.1f}{r['tpot_ms']['p99'] or 0:>7.1f}"
              f"{f(r['e2e_ms']['mean']):>9}{f(r['e2e_ms']['p99']):>8}{r['completed']:>6}{r['rejected']:>6}"
              f"{r['best_effort']:>6}{r['wall_s']:>7.1f}  {classes}")
    print(f"({label}; attainment counts rejected/failed as misses; latencies over completed requests)")


def print_comparison(records: list[dict]) -> dict | None:
    """The hfx-vs-fcfs headline of a sweep, printed when both policies ran (else None)."""
    summary = comparison(records)
    if summary is not None:
        print(describe_comparison(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m services.sim.cli sim ...`) until the main hfx CLI wires it."""
    parser = argparse.ArgumentParser(prog="hfx")
    add_sim_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
