"""`hfx scaler`: run the scaler process (it launches the workers)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services import argtypes
from services.common import runtime
from services.commands.common import add_common, add_pd_local_prefill, default_model
from services.scaler.autoscale_cli import add_autoscale_flags
from services.scaler.adopt_cli import add_adopt_flags, adopt_check, anchor_of
from services.scaler.autoscale_cli import check as autoscale_check
from services.scaler.standby_cli import add_standby_flags, standby_check


def add_parsers(sub) -> None:
    p = sub.add_parser("scaler", help="run the scaler process (it launches the workers)")
    add_common(p)
    p.add_argument("--port", type=argtypes.port, default=50053, help="gRPC port (default %(default)s)")
    p.add_argument("--replicas", type=argtypes.non_negative_int, default=1,
                   help="colocated workers to start and keep running (default %(default)s)")
    p.add_argument("--prefill", type=argtypes.non_negative_int, default=0,
                   help="P/D: prefill workers to start and keep running (default %(default)s)")
    p.add_argument("--decode", type=argtypes.non_negative_int, default=0,
                   help="P/D: decode workers to start and keep running (default %(default)s)")
    p.add_argument("--model", type=argtypes.model_dir,
                   help="checkpoint dir for the workers (default: the built-in tiny model)")
    p.add_argument("--scheduler", required=True, type=argtypes.address,
                   help="scheduler address HOST:PORT, passed to the workers (required)")
    p.add_argument("--engine", default="vllm", type=argtypes.engine_name,
                   help="workers' engine: vllm, or sim (SIMULATED engine) (default %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"],
                   help="workers' device (default %(default)s)")
    p.add_argument("--log-dir", default="./hfx-logs", help="where worker logs and pid files go (default %(default)s)")
    p.add_argument("--worker-arg", action="append", default=[],
                   help="extra flag for every worker (repeatable; default: none)")
    p.add_argument("--metrics-port", type=argtypes.port_or_zero, default=0,
                   help="Prometheus /metrics port; 0 = off (default %(default)s)")
    p.add_argument("--worker-metrics", action="store_true",
                   help="give each worker a /metrics port (a free one) (default: none)")
    p.add_argument("--d2d", action="store_true",
                   help="engine vllm: workers serve their weights, and a new worker pulls them from the least "
                        "loaded live worker of the model instead of reading storage; each donor holds the "
                        "checkpoint's size in RAM (default: off)")
    add_standby_flags(p, with_d2d=False)
    add_autoscale_flags(p)
    add_adopt_flags(p, scaler=True)
    p.add_argument("--links", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the P-D link table in Redis (a warm-up transfer links each new prefill-decode pair; "
                        "the scheduler pairs only linked instances) (default on)")
    p.add_argument("--role-changes", action="store_true",
                   help="start every worker with --kv-transfer so any may change role (default: off)")
    add_pd_local_prefill(p)
    p.add_argument("--scheduler-metrics", type=argtypes.address,
                   help="--autoscale: the scheduler's /metrics HOST:PORT (arrivals, rejections, queue) (default: none)")
    p.add_argument("--router-metrics", type=argtypes.address,
                   help="--autoscale: the router's /metrics HOST:PORT (SLO attainment) (default: none)")
    p.set_defaults(func=cmd_scaler,
                   check=lambda args: standby_check(args) or autoscale_check(args) or adopt_check(args),
                   parser_error=p.error)


def cmd_scaler(args) -> int:
    from services.common.errors import InvalidArgument
    from services.scaler.autoscale_cli import (baseline_settings_from_args, config_from_args, k8s_target,
                                               pd_config_from_args)
    from services.scaler.autoscaling import LiveOptions
    from services.scaler.config import ScalerConfig
    from services.scaler.serve import serve

    try:
        autoscale = config_from_args(args)
        pd_autoscale = pd_config_from_args(args)
    except InvalidArgument as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    spec = args.tracing.spec()
    runtime.run_service(serve(ScalerConfig(
        model=default_model(args), scheduler_address=args.scheduler, log_dir=Path(args.log_dir), host=args.host,
        port=args.port, replicas=args.replicas, prefill_replicas=args.prefill, decode_replicas=args.decode,
        redis_url=args.redis_url, redis_prefix=args.redis_prefix,
        engine=args.engine, device=args.device, tracing_spec=spec, worker_args=tuple(args.worker_arg),
        metrics_port=args.metrics_port, worker_metrics=args.worker_metrics, d2d=args.d2d,
        standby_pool=args.standby_pool, autoscale=autoscale, pd_autoscale=pd_autoscale, actuator=args.actuator, links=args.links,
        role_changes=args.role_changes, pd_local_prefill=args.pd_local_prefill is not False,
        adopt_workers=args.adopt_workers, workers_anchor=anchor_of(args),
        k8s_namespace=k8s_target(args)[0], k8s_deployment=k8s_target(args)[1],
        autoscale_options=LiveOptions(args.autoscale_tick_s, args.autoscale_window_s, args.scheduler_metrics or "",
                                      args.router_metrics or ""),
        autoscaler=args.autoscaler, baselines=baseline_settings_from_args(args),
    )))
    return 0
