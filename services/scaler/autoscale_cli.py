"""The autoscaling flags shared by `hfx up` and `hfx scaler`, and the config they make.

`hfx up --autoscale` forwards the same flags to the scaler it starts (forward_flags), so there is
one definition of each flag and its default.
"""

from __future__ import annotations

import argparse
import re

from services import argtypes
from services.common.errors import InvalidArgument
from services.scaler.autoscale.choice import AUTOSCALERS, BaselineSettings
from services.scaler.autoscale.config import AutoscaleConfig
from services.scaler.autoscale.pd import PDConfig
from services.scaler.autoscale.signals import StartKind

_DEFAULTS = AutoscaleConfig()
_BASELINES = BaselineSettings()


def add_autoscale_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("autoscaling (with --autoscale)")
    g.add_argument("--autoscale", action="store_true",
                   help="scale workers on SLO signals between --min and --max (default: a fixed --workers/--replicas)")
    g.add_argument("--min", dest="min_replicas", type=argtypes.non_negative_int, default=_DEFAULTS.min_replicas,
                   help="fewest workers (default %(default)s)")
    g.add_argument("--max", dest="max_replicas", type=argtypes.positive_int, default=_DEFAULTS.max_replicas,
                   help="most workers (default %(default)s)")
    g.add_argument("--price", action="append", type=argtypes.device_price, default=[], metavar="DEVICE=PRICE",
                   help="price per instance-second of a device kind (repeatable; default cpu=1)")
    g.add_argument("--capacity-rps", type=argtypes.positive_float, default=4.0,
                   help="requests/s one worker carries within the SLOs, until measured (default %(default)s)")
    g.add_argument("--target-utilization", type=argtypes.positive_float, default=_DEFAULTS.target_utilization,
                   help="scale up above this share of SLO capacity (default %(default)s)")
    g.add_argument("--scale-down-utilization", type=argtypes.positive_float,
                   default=_DEFAULTS.scale_down_utilization,
                   help="scale down only if the survivors stay at or below this share (default %(default)s)")
    g.add_argument("--scale-down-cooldown-s", type=argtypes.non_negative_float,
                   default=_DEFAULTS.scale_down_cooldown_s,
                   help="seconds after any scale action before a removal (default %(default)s)")
    g.add_argument("--scale-down-horizon-s", type=argtypes.non_negative_float,
                   default=_DEFAULTS.scale_down_horizon_s,
                   help="a removal needs the survivors to carry the load forecast this far past a restart's "
                        "ready time (default %(default)s)")
    g.add_argument("--backlog-drain-s", type=argtypes.non_negative_float, default=_DEFAULTS.backlog_drain_s,
                   help="the scheduler's queue is bought as capacity that clears it within this long (at least a "
                        "start's ready time) (default %(default)s)")
    g.add_argument("--rate-noise-z", type=argtypes.non_negative_float, default=_DEFAULTS.rate_noise_z,
                   help="a change in the measured arrival rate counts at once beyond this many standard deviations "
                        "of the window's counting noise, is smoothed within it (0: no smoothing) (default %(default)s)")
    g.add_argument("--drain-noise-z", type=argtypes.non_negative_float, default=_DEFAULTS.drain_noise_z,
                   help="a removal needs the survivors under --target-utilization also at the rate this many "
                        "standard deviations of the window's counting noise above the one measured (0: only "
                        "--scale-down-utilization) (default %(default)s)")
    g.add_argument("--slo-feedback-s", type=argtypes.non_negative_float, default=_DEFAULTS.slo_feedback_s,
                   help="time constant of the SLO feedback on capacity: attainment above target + margin lets each "
                        "worker count for up to --max-capacity-gain times its SLO capacity (0: off) "
                        "(default %(default)s)")
    g.add_argument("--attainment-margin", type=argtypes.non_negative_float, default=_DEFAULTS.attainment_margin,
                   help="the SLO feedback aims at this much above the target attainment (default %(default)s)")
    g.add_argument("--max-capacity-gain", type=argtypes.positive_float, default=_DEFAULTS.max_capacity_gain,
                   help="the SLO feedback's bound (default %(default)s)")
    g.add_argument("--forecast-max-growth-per-min", type=argtypes.non_negative_float,
                   default=_DEFAULTS.forecast_max_growth_per_min,
                   help="the forecast may exceed the measured rate by at most this share per minute of lead time (default %(default)s)")
    g.add_argument("--warmup-s", type=argtypes.non_negative_float, default=_DEFAULTS.warmup_s,
                   help="a new worker's capacity samples count after this long (default %(default)s)")
    g.add_argument("--cold-start-s", type=argtypes.non_negative_float,
                   default=_DEFAULTS.ready_times_s[StartKind.COLD],
                   help="expected launch-to-ready time until one is measured (default %(default)s)")
    g.add_argument("--standby-start-s", type=argtypes.non_negative_float,
                   default=_DEFAULTS.ready_times_s[StartKind.STANDBY],
                   help="with --standby-pool: expected time from taking a standby to ready, until one is "
                        "measured (default %(default)s)")
    g.add_argument("--autoscale-tick-s", type=argtypes.positive_float, default=5.0,
                   help="seconds between decisions (default %(default)s)")
    g.add_argument("--autoscale-window-s", type=argtypes.positive_float, default=30.0,
                   help="window of arrival rate and SLO attainment (default %(default)s)")
    g.add_argument("--max-total", type=argtypes.positive_int, default=None,
                   help="P/D (--autoscale with --prefill/--decode): most prefill + decode workers together; each "
                        "role scales within --min/--max (default: 2 x --max)")
    g.add_argument("--prefill-tokens-per-s", type=argtypes.positive_float, default=None,
                   help=f"P/D: prompt tokens/s one prefill worker processes within the TTFT SLOs "
                        f"(default {PD_TOKENS_PER_S[0]:g})")
    g.add_argument("--decode-tokens-per-s", type=argtypes.positive_float, default=None,
                   help=f"P/D: output tokens/s one decode worker sustains within the TPOT SLOs "
                        f"(default {PD_TOKENS_PER_S[1]:g})")
    g.add_argument("--autoscaler", default="hfx", choices=AUTOSCALERS,
                   help="who decides: hfx (SLO signals and forecast), or a baseline to compare it with: queue (an HPA "
                        "on queue length), planner (predicted load / --capacity-rps per worker, as a throughput "
                        "planner), static (--max workers, provisioning for the peak) (default %(default)s)")
    g.add_argument("--queue-target", type=argtypes.positive_float, default=_BASELINES.queue_target,
                   help="--autoscaler queue: target queued requests per ready worker (default %(default)s)")
    g.add_argument("--queue-period-s", type=argtypes.positive_float, default=_BASELINES.queue_period_s,
                   help="--autoscaler queue: seconds between its evaluations (default %(default)s)")
    g.add_argument("--queue-stabilization-s", type=argtypes.non_negative_float,
                   default=_BASELINES.queue_stabilization_s,
                   help="--autoscaler queue: scale down to the highest recommendation of this many seconds "
                        "(default %(default)s)")
    g.add_argument("--planner-interval-s", type=argtypes.positive_float, default=_BASELINES.planner_interval_s,
                   help="--autoscaler planner: seconds between its adjustments (default %(default)s)")
    g.add_argument("--actuator", default="local", choices=["local", "kubernetes"],
                   help="how workers are started and stopped: local processes, or the pods of a Kubernetes "
                        "Deployment (`hfx scaler` inside the cluster, deploy/k8s) (default %(default)s)")
    g.add_argument("--k8s-namespace", type=k8s_name, default=None,
                   help=f"--actuator kubernetes: the workers' namespace (default: {K8S_DEFAULTS[0]})")
    g.add_argument("--k8s-deployment", type=k8s_name, default=None,
                   help=f"--actuator kubernetes: the workers' Deployment (default: {K8S_DEFAULTS[1]})")


K8S_DEFAULTS = ("hfx", "worker")   # deploy/k8s/worker.yaml
# A small model on a few CPU cores (prompt tokens/s per prefill worker, output tokens/s per decode
# worker), conservative: give measured figures for other engines and devices.
PD_TOKENS_PER_S = (2000.0, 200.0)
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def k8s_name(value: str) -> str:
    """A Kubernetes object name (RFC 1123 label: lower-case letters, digits and '-', at most 63)."""
    if len(value) > 63 or not _K8S_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Kubernetes name (lower-case letters, digits and "
                                         "'-', starting and ending alphanumeric, at most 63 characters)")
    return value


def k8s_target(args) -> tuple[str, str]:
    """(namespace, deployment) of --actuator kubernetes, defaults filled in."""
    return args.k8s_namespace or K8S_DEFAULTS[0], args.k8s_deployment or K8S_DEFAULTS[1]


def check(args, for_up: bool = False) -> str | None:
    """Cross-flag problems as a usage error (None when fine)."""
    if args.autoscale and args.min_replicas > args.max_replicas:
        return f"--min {args.min_replicas} is above --max {args.max_replicas}"
    problem = _actuator_problem(args, for_up) or _pd_problem(args, for_up) or _autoscaler_problem(args)
    if problem:
        return problem
    try:
        config_from_args(args)
        pd_config_from_args(args)
    except InvalidArgument as err:
        return err.message
    return None


def _actuator_problem(args, for_up: bool) -> str | None:
    k8s_flags = [f for f, v in (("--k8s-namespace", args.k8s_namespace), ("--k8s-deployment", args.k8s_deployment))
                 if v is not None]
    if args.actuator != "kubernetes":
        return f"{' and '.join(k8s_flags)} need --actuator kubernetes" if k8s_flags else None
    if for_up:
        return ("--actuator kubernetes: `hfx up` runs workers as local processes; run `hfx scaler --autoscale "
                "--actuator kubernetes` inside the cluster (deploy/k8s)")
    if not args.autoscale:
        return "--actuator kubernetes needs --autoscale (the actuator carries out the autoscaler's decisions)"
    local = [f for f, on in (("--replicas", args.replicas), ("--prefill", args.prefill), ("--decode", args.decode),
                             ("--standby-pool", args.standby_pool), ("--d2d", args.d2d),
                             ("--adopt-workers", args.adopt_workers)) if on]
    if local:
        return (f"--actuator kubernetes: the workers are the Deployment's pods, not this scaler's processes; "
                f"drop {', '.join(local)} (--replicas 0)")
    return None


def _autoscaler_problem(args) -> str | None:
    baseline_flags = [f for f, v, default in (
        ("--queue-target", args.queue_target, _BASELINES.queue_target),
        ("--queue-period-s", args.queue_period_s, _BASELINES.queue_period_s),
        ("--queue-stabilization-s", args.queue_stabilization_s, _BASELINES.queue_stabilization_s),
        ("--planner-interval-s", args.planner_interval_s, _BASELINES.planner_interval_s)) if v != default]
    if args.autoscaler != "hfx" or baseline_flags:
        what = f"--autoscaler {args.autoscaler}" if args.autoscaler != "hfx" else ", ".join(baseline_flags)
        if not args.autoscale:
            return f"{what} needs --autoscale"
        if is_pd(args):
            return f"{what}: the baselines scale colocated workers; P/D autoscaling is hfx's"
    mine = {"queue": "--queue-", "planner": "--planner-"}
    foreign = [f for f in baseline_flags if not f.startswith(mine.get(args.autoscaler, "--none-"))]
    if args.autoscale and foreign:
        return f"{', '.join(foreign)}: not used by --autoscaler {args.autoscaler}"
    return None


def baseline_settings_from_args(args) -> BaselineSettings:
    return BaselineSettings(args.queue_target, args.queue_period_s, args.queue_stabilization_s,
                            args.planner_interval_s)


def is_pd(args) -> bool:
    """Autoscaling a P/D cluster: PDAutoscaler scales the prefill and decode workers."""
    return bool(args.autoscale and (args.prefill or args.decode))


def _pd_problem(args, for_up: bool) -> str | None:
    pd_only = [f for f, v in (("--max-total", args.max_total), ("--prefill-tokens-per-s", args.prefill_tokens_per_s),
                              ("--decode-tokens-per-s", args.decode_tokens_per_s)) if v is not None]
    if not is_pd(args):
        return f"{', '.join(pd_only)}: P/D autoscaling only (--autoscale with --prefill and --decode)" \
            if pd_only else None
    if not (args.prefill and args.decode):
        return (f"--autoscale --prefill {args.prefill} --decode {args.decode}: P/D autoscaling starts with at least "
                "one of each (a stage never empties)")
    colocated = args.workers if for_up else args.replicas
    if colocated:
        flag = "--workers" if for_up else "--replicas"
        return (f"--autoscale with --prefill/--decode scales the prefill and decode workers; {flag} {colocated} "
                f"colocated ones beside them are not autoscaled: give {flag} 0")
    if args.min_replicas < 1:
        return "--min 0 with --prefill/--decode: each role keeps at least one worker (a stage never empties)"
    if args.standby_pool:
        return "--standby-pool: standby engines become colocated workers; P/D autoscaling starts prefill and decode"
    return None


def pd_config_from_args(args) -> PDConfig | None:
    """The P/D autoscaler's settings (None unless is_pd): each role within --min/--max, P + D at
    most --max-total. Raises InvalidArgument on contradictory values."""
    role = config_from_args(args)
    if role is None or not is_pd(args):
        return None
    return PDConfig(role, role, args.prefill_tokens_per_s or PD_TOKENS_PER_S[0],
                    args.decode_tokens_per_s or PD_TOKENS_PER_S[1],
                    args.max_total if args.max_total is not None else 2 * args.max_replicas)


def config_from_args(args) -> AutoscaleConfig | None:
    """Raises services.common.errors.InvalidArgument on contradictory values."""
    if not args.autoscale:
        return None
    prices = dict(args.price) or {"cpu": 1.0}
    device = "cpu" if "cpu" in prices else next(iter(prices))
    return AutoscaleConfig(
        min_replicas=args.min_replicas, max_replicas=args.max_replicas, prices=prices, device=device,
        capacity_rps={d: args.capacity_rps for d in prices}, target_utilization=args.target_utilization,
        scale_down_utilization=args.scale_down_utilization, scale_down_cooldown_s=args.scale_down_cooldown_s,
        scale_down_horizon_s=args.scale_down_horizon_s, warmup_s=args.warmup_s,
        backlog_drain_s=args.backlog_drain_s, rate_noise_z=args.rate_noise_z, drain_noise_z=args.drain_noise_z,
        slo_feedback_s=args.slo_feedback_s,
        attainment_margin=args.attainment_margin, max_capacity_gain=args.max_capacity_gain,
        forecast_max_growth_per_min=args.forecast_max_growth_per_min,
        ready_times_s={**_DEFAULTS.ready_times_s, StartKind.COLD: args.cold_start_s,
                                                       StartKind.STANDBY: args.standby_start_s})


def forward_flags(args) -> list[str]:
    """The flags for the scaler process that `hfx up` starts."""
    if not args.autoscale:
        return []
    out = ["--autoscale", "--min", str(args.min_replicas), "--max", str(args.max_replicas),
           "--capacity-rps", str(args.capacity_rps), "--target-utilization", str(args.target_utilization),
           "--scale-down-utilization", str(args.scale_down_utilization),
           "--scale-down-cooldown-s", str(args.scale_down_cooldown_s),
           "--scale-down-horizon-s", str(args.scale_down_horizon_s), "--warmup-s", str(args.warmup_s),
           "--backlog-drain-s", str(args.backlog_drain_s), "--rate-noise-z", str(args.rate_noise_z),
           "--drain-noise-z", str(args.drain_noise_z),
           "--slo-feedback-s", str(args.slo_feedback_s), "--attainment-margin", str(args.attainment_margin),
           "--max-capacity-gain", str(args.max_capacity_gain), "--forecast-max-growth-per-min", str(args.forecast_max_growth_per_min),
           "--cold-start-s", str(args.cold_start_s), "--standby-start-s", str(args.standby_start_s), "--autoscale-tick-s", str(args.autoscale_tick_s),
           "--autoscale-window-s", str(args.autoscale_window_s), "--actuator", args.actuator,
           "--autoscaler", args.autoscaler, "--queue-target", str(args.queue_target),
           "--queue-period-s", str(args.queue_period_s), "--queue-stabilization-s", str(args.queue_stabilization_s),
           "--planner-interval-s", str(args.planner_interval_s)]
    for device, price in args.price:
        out += ["--price", f"{device}={price}"]
    for flag, value in (("--max-total", args.max_total), ("--prefill-tokens-per-s", args.prefill_tokens_per_s),
                        ("--decode-tokens-per-s", args.decode_tokens_per_s)):
        if value is not None:
            out += [flag, str(value)]
    return out
