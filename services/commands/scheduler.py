"""`hfx scheduler`: run the scheduler process, with its policy's settings from one rule."""

from __future__ import annotations

import sys

from services import argtypes
from services.common import runtime
from services.commands.common import (add_common, add_pd_local_prefill, add_policy_config_flag, add_tickets_flag,
                                      policy_settings)


def add_parsers(sub) -> None:
    from services.scheduler.policy import policy_names

    p = sub.add_parser("scheduler", help="run the scheduler process")
    add_common(p)
    p.add_argument("--port", type=argtypes.port, default=50052, help="gRPC port (default %(default)s)")
    p.add_argument("--policy", default="hfx", choices=policy_names(),
                   help="scheduling policy: hfx (SLO-aware) or a baseline for comparison (default %(default)s)")
    p.add_argument("--metrics-port", type=argtypes.port_or_zero, default=0,
                   help="Prometheus /metrics port; 0 = off (default %(default)s)")
    p.add_argument("--max-queue", type=argtypes.positive_int, default=10_000,
                   help="requests waiting for placement at once; more are refused with RESOURCE_EXHAUSTED and a "
                   "retry hint (default %(default)s)")
    p.add_argument("--max-wait-s", type=argtypes.positive_float, default=30.0,
                   help="longest a request waits for placement before it is refused (default %(default)s)")
    p.add_argument("--serving-gap-grace-s", type=argtypes.non_negative_float, default=2.0,
                   help="a cluster that cannot serve (only prefill workers registered, say) refuses requests with "
                   "UNAVAILABLE only once it has been so this long; before that it counts as starting and requests "
                   "wait (default %(default)s)")
    p.add_argument("--registry-refresh-s", type=argtypes.positive_float, default=0.5,
                   help="how often the registry of workers is read from Redis: a worker that registered is placed "
                   "on from the next read (default %(default)s)")
    add_tickets_flag(p)
    add_pd_local_prefill(p)
    add_policy_config_flag(p)
    p.add_argument("--profile", default=None, type=argtypes.sim_profile, metavar="NAME|FILE",
                   help="the workers' engine profile (a built-in name or a JSON file from `hfx profile`): the "
                   "policy takes its step token budget (chunk_tokens), and its latency model and KV capacity for "
                   "instances that report none, as `hfx sim --profile` does (default: none, PolicyConfig's)")
    p.add_argument("--classes", type=argtypes.classes_file,
                   help="the router's task-class table: classes whose on_miss is reject are rejected when their "
                   "SLO is out of reach instead of demoted (default: none)")
    p.add_argument("--role-changes", action="store_true",
                   help="flip instances between prefill and decode on SLO pressure (services/scheduler/roles), "
                        "through the scaler's SetRole; needs --scaler (default: off)")
    p.add_argument("--scaler", type=argtypes.address, help="--role-changes: the scaler HOST:PORT (default: none)")
    p.set_defaults(func=cmd_scheduler)


def cmd_scheduler(args) -> int:
    from services.scheduler.config import SchedulerConfig
    from services.scheduler.serve import serve

    try:
        policy_config = policy_config_of(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runtime.run_service(serve(SchedulerConfig(host=args.host, port=args.port, policy=args.policy, redis_url=args.redis_url,
                                      redis_prefix=args.redis_prefix, tracing=args.tracing,
                                      metrics_port=args.metrics_port, tickets=args.tickets,
                                      policy_config=policy_config, max_queue=args.max_queue,
                                      max_wait_s=args.max_wait_s, serving_gap_grace_s=args.serving_gap_grace_s,
                                      registry_refresh_s=args.registry_refresh_s,
                                      role_changes=args.role_changes,
                                      scaler_address=args.scaler or "")))
    return 0


def policy_config_of(args):
    """`hfx scheduler`'s PolicyConfig by the one rule (services/scheduler/policy/settings.py):
    defaults, then --profile, then --classes (on_miss reject), then --policy-config and flags."""
    from services.router.config import load_classes
    from services.scheduler.policy.settings import policy_config
    from services.sim.profiles import load_profile

    profile = load_profile(args.profile) if args.profile else None
    classes = load_classes(args.classes) if args.classes else ()
    return policy_config(profile, classes, policy_settings(args))
