"""`hfx autoscale-bench`: autoscalers side by side on one bursty trace in the simulator.

Static provisioning at the peak, a queue-length threshold autoscaler (an HPA on queue length), a
throughput planner (predicted load / profiled per-instance throughput) and HFX's policy each run
the same requests through the same scheduling policy and instance profile; it prints
instance-seconds and SLO attainment per autoscaler, HFX's saving against each, and optionally
plots instances and attainment over time. Every figure is simulated (engine: sim).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services import argtypes
from services.scaler.autoscale import AutoscaleConfig, StartKind
from services.scaler.autoscale.choice import BaselineSettings, make_autoscaler as choose_autoscaler
from services.scaler.autoscale.capacity import pd_tokens_per_s, slo_capacity_rps
from services.scaler.autoscale.pd import PDAutoscaler, PDConfig
from services.scheduler.policy import make_policy, policy_names
from services.scheduler.policy.settings import policy_config
from services.sim import ENGINE_LABEL
from services.report.metrics import attainment, attainment_over_time
from services.sim.profiles import Profile, load_profile
from services.sim.pd_scaling import PDScalingDriver
from services.sim.runner import Simulation, pd_roles
from services.sim.scaling import ScalingDriver, ScalingSetup
from services.sim.traces import SwellSpikes
from services.sim.workload import Workload, at_times, load_workload, read_azure_trace

AUTOSCALERS = ("static", "queue", "planner", "hfx")
DEFAULT_WORKLOAD = Path(__file__).parent / "workloads" / "default.yaml"


def add_autoscale_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "autoscale-bench", help="autoscalers (static peak, queue threshold, throughput planner, hfx) on a bursty "
        "trace in the simulator: instance-seconds and SLO attainment")
    add_trace_flags(p)
    p.add_argument("--duration-s", type=argtypes.positive_float, default=1800.0,
                   help="swell trace: length in seconds; Azure trace: replay at most this long (default %(default)s)")
    p.add_argument("--peak-rps", type=argtypes.positive_float, default=None,
                   help="swell trace: the peak rate (default: 75%% of --max-instances' SLO capacity)")
    p.add_argument("--workload", default=str(DEFAULT_WORKLOAD), type=argtypes.workload_file,
                   help="task classes (lengths, SLOs) of the requests; its arrival process is ignored "
                   "(default: the built-in mix)")
    p.add_argument("--profile", default="cpu-tiny", type=argtypes.sim_profile,
                   help="instance latency profile, built-in name or `hfx profile` JSON (default %(default)s)")
    p.add_argument("--policy", default="hfx", choices=policy_names(),
                   help="scheduling policy for every run (default %(default)s)")
    p.add_argument("--autoscalers", nargs="+", default=list(AUTOSCALERS), choices=AUTOSCALERS,
                   help=f"which to run (default {' '.join(AUTOSCALERS)})")
    p.add_argument("--min-instances", type=argtypes.positive_int, default=1, help="(default %(default)s)")
    p.add_argument("--max-instances", type=argtypes.positive_int, default=32, help="(default %(default)s)")
    p.add_argument("--static-instances", type=argtypes.positive_int, default=None,
                   help="static: instances (default: the peak rate / per-instance SLO capacity, at most max)")
    p.add_argument("--cold-start-s", type=argtypes.non_negative_float, default=60.0,
                   help="time to ready from storage (default %(default)s)")
    p.add_argument("--peer-start-s", type=argtypes.non_negative_float, default=15.0,
                   help="time to ready pulling weights from a ready peer (default %(default)s)")
    p.add_argument("--no-peer-start", action="store_true", help="only cold starts (default: peer starts allowed)")
    p.add_argument("--queue-target", type=argtypes.positive_float, default=1.0,
                   help="queue autoscaler: target queued requests per instance (default %(default)s)")
    p.add_argument("--planner-utilization", type=argtypes.positive_float, default=1.0,
                   help="throughput planner: plan for this share of the profiled throughput (1 = none spare) "
                   "(default %(default)s)")
    p.add_argument("--planner-interval-s", type=argtypes.positive_float, default=60.0,
                   help="throughput planner: adjustment interval (default %(default)s)")
    hfx = AutoscaleConfig()
    p.add_argument("--hfx-target-utilization", type=argtypes.positive_float, default=hfx.target_utilization,
                   help="hfx: scale up above this share of SLO capacity (default %(default)s)")
    p.add_argument("--hfx-scale-down-utilization", type=argtypes.positive_float, default=hfx.scale_down_utilization,
                   help="hfx: survivors must stay at or below this share (default %(default)s)")
    p.add_argument("--hfx-cooldown-s", type=argtypes.non_negative_float, default=hfx.scale_down_cooldown_s,
                   help="hfx: seconds after a scale action before a removal (default %(default)s)")
    p.add_argument("--hfx-backlog-drain-s", type=argtypes.non_negative_float, default=hfx.backlog_drain_s,
                   help="hfx: buy capacity that clears the queue within this long (default %(default)s)")
    p.add_argument("--hfx-rate-noise-z", type=argtypes.non_negative_float, default=hfx.rate_noise_z,
                   help="hfx: a rate change beyond this many deviations of counting noise counts at once; within "
                   "it, smoothed (0: none) (default %(default)s)")
    p.add_argument("--hfx-drain-noise-z", type=argtypes.non_negative_float, default=hfx.drain_noise_z,
                   help="hfx: survivors of a removal stay under the target utilization at the rate this many "
                   "deviations of counting noise above the measured one (0: off) (default %(default)s)")
    p.add_argument("--hfx-slo-feedback-s", type=argtypes.non_negative_float, default=hfx.slo_feedback_s,
                   help="hfx: time constant of the SLO feedback on capacity (0: off) (default %(default)s)")
    p.add_argument("--hfx-attainment-margin", type=argtypes.non_negative_float, default=hfx.attainment_margin,
                   help="hfx: the SLO feedback aims this far above the target attainment (default %(default)s)")
    p.add_argument("--hfx-forecast-max-growth-per-min", type=argtypes.non_negative_float, default=hfx.forecast_max_growth_per_min,
                   help="hfx: the forecast exceeds the measured rate by at most this share per minute of lead time (default %(default)s)")
    p.add_argument("--pd", default="", metavar="P:D",
                   help="hfx runs a P/D cluster starting with P prefill and D decode instances, scaled per role by "
                   "the P/D autoscaler (each role within --min/--max-instances, P + D at most --max-instances); "
                   "the baselines stay colocated (default: hfx colocated too)")
    p.add_argument("--tick-s", type=argtypes.positive_float, default=5.0,
                   help="how often every autoscaler is asked (default %(default)s)")
    p.add_argument("--seed", type=argtypes.non_negative_int, default=1, help="(default %(default)s)")
    p.add_argument("--json", type=argtypes.output_file, help="write the results here (default: not written)")
    p.add_argument("--plot", help="write autoscale_timeline.png into this directory (default: no plot)")
    p.set_defaults(func=run_autoscale_bench)


def add_trace_flags(p: argparse.ArgumentParser) -> None:
    """The trace's flags (make_requests reads them); shared with benchmarks/autoscale_live.py."""
    p.add_argument("--trace", default="swell", metavar="swell|FILE",
                   help="'swell' (a slow swell with sharp spikes, services/sim/traces.py) or an Azure LLM trace CSV "
                   "(TIMESTAMP, ContextTokens, GeneratedTokens) replayed at its own times (default %(default)s)")
    p.add_argument("--trace-speedup", type=argtypes.positive_float, default=1.0,
                   help="Azure trace: divide its timestamps by this (default %(default)s)")
    p.add_argument("--trace-lengths", choices=("trace", "mix"), default="trace",
                   help="Azure trace: each request's prompt and output lengths from the trace, or drawn from "
                   "--workload's classes (its arrival times only) (default %(default)s)")
    p.add_argument("--trace-every", type=argtypes.positive_int, default=1, metavar="N",
                   help="Azure trace: replay every Nth row only, its shape at 1/N of its rate (default %(default)s)")


def workload_means(workload: Workload) -> tuple[float, float]:
    total = sum(c.weight for c in workload.classes)
    prompt = sum(c.weight * c.prompt_tokens.mean for c in workload.classes) / total
    output = sum(c.weight * c.output_tokens.mean for c in workload.classes) / total
    return prompt, output


def instance_capacity(profile: Profile, workload: Workload) -> float:
    """Profiled per-instance SLO capacity for this mix (the tightest class's TPOT SLO)."""
    prompt, output = workload_means(workload)
    tpot = min(c.slo(profile.model, profile.chunk_tokens).tpot_ms for c in workload.classes)
    return slo_capacity_rps(profile.model, prompt, output, tpot, profile.kv_capacity_tokens, profile.max_num_seqs)


def make_requests(args, workload: Workload, profile: Profile, peak_rps: float):
    rng = random.Random(args.seed)
    if args.trace == "swell":
        trace = SwellSpikes(args.duration_s, peak_rps)
        shapes = [(t, -1, -1) for t in trace.arrivals(args.seed)]
        return at_times(workload, shapes, rng, profile.model, profile.chunk_tokens), trace.rate
    rows = read_azure_trace(args.trace)[::args.trace_every]
    keep = args.trace_lengths == "trace"
    shapes = [(t / args.trace_speedup, c if keep else -1, g if keep else -1) for t, c, g in rows
              if t / args.trace_speedup < args.duration_s]
    return at_times(workload, shapes, rng, profile.model, profile.chunk_tokens), None


PEAK_BIN_S = 30.0


def trace_peak_rps(requests) -> float:
    """A replayed trace's peak: the most arrivals in a PEAK_BIN_S bin, per second (what static
    provisioning at the peak is sized for)."""
    bins: dict[int, int] = {}
    for r in requests:
        k = int(r.spec.arrival_s // PEAK_BIN_S)
        bins[k] = bins.get(k, 0) + 1
    return max(bins.values(), default=0) / PEAK_BIN_S


def make_autoscaler(name: str, args, capacity: float, static_n: int):
    """The autoscaler `name` as the live scaler builds it (services/scaler/autoscale/choice.py); the
    planner plans for --planner-utilization of the profiled capacity."""
    ready = {StartKind.COLD: args.cold_start_s, StartKind.PEER: args.peer_start_s}
    config = AutoscaleConfig(min_replicas=args.min_instances, max_replicas=args.max_instances,
                             capacity_rps={"cpu": capacity * (args.planner_utilization if name == "planner" else 1.0)},
                             ready_times_s=ready, target_utilization=args.hfx_target_utilization,
                             scale_down_utilization=args.hfx_scale_down_utilization,
                             scale_down_cooldown_s=args.hfx_cooldown_s, **hfx_extras(args))
    return choose_autoscaler(name, config, BaselineSettings(queue_target=args.queue_target,
                                                            planner_interval_s=args.planner_interval_s,
                                                            static_replicas=static_n))


def hfx_extras(args) -> dict:
    """The hfx policy's cost settings from the bench's flags."""
    return {"backlog_drain_s": args.hfx_backlog_drain_s, "rate_noise_z": args.hfx_rate_noise_z,
            "drain_noise_z": args.hfx_drain_noise_z,
            "slo_feedback_s": args.hfx_slo_feedback_s, "attainment_margin": args.hfx_attainment_margin,
            "forecast_max_growth_per_min": args.hfx_forecast_max_growth_per_min}


def pd_autoscaler(profile: Profile, workload: Workload, role: AutoscaleConfig, max_total: int) -> PDAutoscaler:
    """HFX's P/D autoscaler: each role within `role`'s bounds, its tokens/s from the profile for this mix."""
    prompt, output = workload_means(workload)
    tpot = min(c.slo(profile.model, profile.chunk_tokens).tpot_ms for c in workload.classes)
    p_tps, d_tps = pd_tokens_per_s(profile.model, profile.chunk_tokens, prompt, output, tpot,
                                   profile.kv_capacity_tokens, profile.max_num_seqs)
    return PDAutoscaler(PDConfig(role, role, p_tps, d_tps, max_total))


def make_pd_autoscaler(args, profile: Profile, workload: Workload) -> PDAutoscaler:
    role = AutoscaleConfig(min_replicas=1, max_replicas=args.max_instances, capacity_rps={"cpu": 1.0},
                           ready_times_s={StartKind.COLD: args.cold_start_s, StartKind.PEER: args.peer_start_s},
                           target_utilization=args.hfx_target_utilization,
                           scale_down_utilization=args.hfx_scale_down_utilization,
                           scale_down_cooldown_s=args.hfx_cooldown_s)
    return pd_autoscaler(profile, workload, role, args.max_instances)


def run_one(name: str, args, requests, profile: Profile, workload: Workload, capacity: float, static_n: int) -> dict:
    config = policy_config(profile, workload.classes, {"placement": "best_fit"})
    roles = pd_roles(args.pd, sum(int(x) for x in args.pd.split(":"))) if args.pd and name == "hfx" else ()
    initial = len(roles) if roles else static_n if name == "static" else args.min_instances
    setup = ScalingSetup(initial, capacity, {StartKind.COLD: args.cold_start_s, StartKind.PEER: args.peer_start_s},
                         peer_start=not args.no_peer_start, tick_s=args.tick_s)
    driver = PDScalingDriver(make_pd_autoscaler(args, profile, workload), setup, config) if roles \
        else ScalingDriver(make_autoscaler(name, args, capacity, static_n), setup)
    started = time.perf_counter()
    result = Simulation(make_policy(args.policy, config), profile, initial, args.seed, scaling=driver,
                        roles=roles).run(requests)
    wall = time.perf_counter() - started
    return {
        "autoscaler": name, "instance_seconds": result.instance_seconds, "slo_attainment": attainment(result.records),
        "requests": len(result.records), "rejected": sum(r.verdict == "reject" for r in result.records),
        "peak_instances": max((p.instances for p in driver.timeline), default=initial),
        "mean_instances": result.instance_seconds / result.makespan_s if result.makespan_s else 0.0,
        "makespan_s": result.makespan_s, "wall_s": wall,
        "actions": {k: sum(1 for _, kind, _ in driver.decisions if kind == k)
                    for k in ("Start", "Drain", "Undrain", "Remove")},
        "timeline": [(p.t_s, p.instances, p.ready) for p in driver.timeline],
        "attainment_over_time": attainment_over_time(result.records, 30.0),
        "last_reasons": [f"{t:.0f}s {kind}: {why}" for t, kind, why in driver.decisions[-3:]],
        **({"pd": args.pd, "peak_prefill": max(p for _, p, _ in driver.role_timeline),
            "peak_decode": max(d for _, _, d in driver.role_timeline), "role_timeline": driver.role_timeline,
            "flips": sum(1 for _, kind, _ in driver.decisions if kind == "Flip")}
           if isinstance(driver, PDScalingDriver) else {}),
    }


def run_autoscale_bench(args: argparse.Namespace) -> int:
    try:
        workload = load_workload(args.workload)
        profile = load_profile(args.profile)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.pd:
        try:
            pd_roles(args.pd, args.max_instances)
        except ValueError as exc:
            print(f"error: --pd: {exc}", file=sys.stderr)
            return 2
    if args.min_instances > args.max_instances:
        print(f"error: --min-instances {args.min_instances} > --max-instances {args.max_instances}", file=sys.stderr)
        return 2
    capacity = instance_capacity(profile, workload)
    peak = args.peak_rps or 0.75 * args.max_instances * capacity
    try:
        requests, rate_fn = make_requests(args, workload, profile, peak)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not requests:
        print("error: the trace has no requests in --duration-s", file=sys.stderr)
        return 2
    if args.trace != "swell" and not args.peak_rps:
        peak = trace_peak_rps(requests)
    static_n = args.static_instances or min(args.max_instances, math.ceil(peak / capacity))
    print(f"{ENGINE_LABEL}; profile {profile.name}; policy {args.policy}; trace {args.trace} "
          f"({len(requests)} requests over {requests[-1].spec.arrival_s:.0f}s, peak {peak:.1f} req/s); "
          f"per-instance SLO capacity {capacity:.2f} req/s; instances {args.min_instances}-{args.max_instances}, "
          f"static {static_n}; ready: cold {args.cold_start_s:g}s, peer "
          f"{'off' if args.no_peer_start else f'{args.peer_start_s:g}s'}; seed {args.seed}", flush=True)
    results = []
    for name in args.autoscalers:
        results.append(run_one(name, args, requests, profile, workload, capacity, static_n))
        r = results[-1]
        print(f"  {name}: done in {r['wall_s']:.0f}s wall", file=sys.stderr, flush=True)
    _print(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"engine": ENGINE_LABEL, "profile": profile.name, "trace": args.trace,
                                               "peak_rps": peak, "capacity_rps": capacity, "seed": args.seed,
                                               "results": results}, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        from services.report.plots import autoscale_timeline

        out = Path(args.plot)
        out.mkdir(parents=True, exist_ok=True)
        print(f"wrote {autoscale_timeline(results, rate_fn, out, ENGINE_LABEL)}")
    return 0


Column = tuple[str, int, Callable[[dict], str]]   # header, width, cell


def print_autoscalers(results: list[dict], extra: Sequence[Column], note: str) -> None:
    """One autoscaler per row: instance-seconds (and the change against static provisioning),
    attainment, peak and mean instances, then `extra` columns; `note` under the table; then hfx
    against each other autoscaler. Shared by `hfx autoscale-bench` and benchmarks/autoscale_live.py."""
    static = next((r for r in results if r["autoscaler"] == "static"), None)
    hfx = next((r for r in results if r["autoscaler"] == "hfx"), None)
    columns: list[Column] = [
        ("inst-s", 9, lambda r: f"{r['instance_seconds']:.0f}"),
        ("vs static", 10, lambda r: "-" if static is None else f"{r['instance_seconds'] / static['instance_seconds'] - 1:+.1%}"),
        ("attain", 8, lambda r: f"{r['slo_attainment']:.1%}"),
        ("peak", 6, lambda r: f"{r['peak_instances']}"),
        ("mean", 7, lambda r: f"{r['mean_instances']:.1f}"),
        *extra]
    print(f"{'autoscaler':<11}" + "".join(f"{head:>{width}}" for head, width, _ in columns))
    for r in results:
        print(f"{r['autoscaler']:<11}" + "".join(f"{cell(r):>{width}}" for _, width, cell in columns))
    print(note)
    for r in results:
        if hfx is not None and r is not hfx:
            print(f"hfx vs {r['autoscaler']}: {1 - hfx['instance_seconds'] / r['instance_seconds']:.1%} fewer "
                  f"instance-seconds, attainment {hfx['slo_attainment']:.1%} vs {r['slo_attainment']:.1%}")


def _print(results: list[dict]) -> None:
    print_autoscalers(results, [("rejected", 9, lambda r: f"{r['rejected']}"),
                                ("starts", 7, lambda r: f"{r['actions']['Start']}"),
                                ("drains", 7, lambda r: f"{r['actions']['Drain']}")],
                      "(instance-seconds from launch to removal, starting and draining included; 'vs static' = "
                      "change in instance-seconds; attainment counts rejected requests as misses)")
    for r in results:
        if "pd" in r:
            print(f"{r['autoscaler']} ran P/D from {r['pd']}: peak {r['peak_prefill']} prefill, {r['peak_decode']} "
                  f"decode, {r['flips']} flip(s)")
