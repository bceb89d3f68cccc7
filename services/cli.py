"""`hfx`: one command for every HFX process and tool.

  hfx up / down / status          a local cluster (Redis, router, scheduler, scaler, workers)
  hfx generate PROMPT             stream one generation through the router
  hfx router|scheduler|scaler|worker   run one service process (what `hfx up` starts)
  hfx model init                  write the default tiny model
  hfx sim / bench                 the simulator and the workload benchmark (--sim, or --target live)
  hfx profile                     profile an engine and fit its step-time model
  hfx explain REQUEST_ID          why a request missed its SLO, from its trace (--missed: all misses)
  hfx role INSTANCE ROLE          change a worker's role (colocated, prefill, decode) without restarting it
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from services import argtypes
from services.common import runtime
from services.scaler.autoscale_cli import add_autoscale_flags
from services.scaler.autoscale_cli import check as autoscale_check
from services.scaler.adopt_cli import add_adopt_flags, adopt_check, anchor_of
from services.scaler.standby_cli import add_standby_flags, forward_standby_flags, standby_check

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _add_tickets_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tickets", action=argparse.BooleanOptionalAction, default=True,
                   help="while nothing waits, the scheduler grants each router tickets: standing placements "
                   "for one request within a bound (prompt and output at most, SLOs at least), checked by the "
                   "policy's own fit test, so such a request starts without a round trip to the scheduler; "
                   "--no-tickets: every request waits for its placement (default on)")


def _add_common(p: argparse.ArgumentParser, redis: bool = True) -> None:
    if redis:
        p.add_argument("--redis-url", default=_env("HFX_REDIS_URL", DEFAULT_REDIS_URL), type=argtypes.redis_url,
                       help=f"cluster state store (default: $HFX_REDIS_URL, else {DEFAULT_REDIS_URL})")
        p.add_argument("--redis-prefix", default="hfx", type=argtypes.non_empty,
                       help="key prefix, to share one Redis between clusters (default %(default)s)")
    p.add_argument("--tracing", default=_env("HFX_TRACING", "off"), type=argtypes.tracing_config,
                   help="off | console | otlp | otlp=HOST:PORT (OTLP/gRPC, e.g. Jaeger on 4317) | file=DIR (local span store) "
                   "(default: $HFX_TRACING, else off)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level (default %(default)s)")


def _default_model(args) -> str:
    if getattr(args, "model", None):
        return args.model
    from services.common.model import ensure_default_model

    return str(ensure_default_model())


def _logging(args) -> None:
    logging.basicConfig(level=getattr(args, "log_level", "INFO").upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


# -- service processes -------------------------------------------------------------------------

def cmd_router(args) -> int:
    from services.router.config import DEFAULT_CLASSES, RouterConfig, load_classes
    from services.router.server import serve

    config = RouterConfig(
        model=_default_model(args), scheduler_address=args.scheduler, host=args.host, port=args.port,
        http_port=args.http_port, api_keys=tuple(args.api_key) + _key_file(args.api_key_file),
        classes=load_classes(args.classes) if args.classes else DEFAULT_CLASSES,
        default_max_tokens=args.default_max_tokens, tracing=args.tracing, max_failovers=args.max_failovers,
        max_body_bytes=args.max_body_bytes, max_inflight=args.max_inflight,
        tls_cert=args.tls_cert or "", tls_key=args.tls_key or "", client_stall_timeout_s=args.client_stall_timeout_s,
    )
    runtime.run_service(serve(config))
    return 0


def cmd_scheduler(args) -> int:
    from services.scheduler.config import SchedulerConfig
    from services.scheduler.server import serve

    try:
        policy_config = _policy_config(args)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    runtime.run_service(serve(SchedulerConfig(host=args.host, port=args.port, policy=args.policy, redis_url=args.redis_url,
                                      redis_prefix=args.redis_prefix, tracing=args.tracing,
                                      metrics_port=args.metrics_port, tickets=args.tickets,
                                      policy_config=policy_config, max_queue=args.max_queue,
                                      max_wait_s=args.max_wait_s, role_changes=args.role_changes,
                                      scaler_address=args.scaler or "")))
    return 0


def _policy_settings(args) -> dict:
    """The explicit policy settings of a command: its --policy-config file, then its flags."""
    from services.scheduler.policy.settings import load_settings

    settings = load_settings(args.policy_config) if args.policy_config else {}
    if getattr(args, "pd_local_prefill", None) is not None:
        settings["pd_local_prefill"] = args.pd_local_prefill
    return settings


def _policy_config(args):
    """`hfx scheduler`'s PolicyConfig by the one rule (services/scheduler/policy/settings.py):
    defaults, then --profile, then --classes (on_miss reject), then --policy-config and flags."""
    from services.router.config import load_classes
    from services.scheduler.policy.settings import policy_config
    from services.sim.profiles import load_profile

    profile = load_profile(args.profile) if args.profile else None
    classes = load_classes(args.classes) if args.classes else ()
    return policy_config(profile, classes, _policy_settings(args))


def cmd_scaler(args) -> int:
    from services.common.errors import InvalidArgument
    from services.scaler.autoscale_cli import config_from_args, k8s_target
    from services.scaler.autoscaling import LiveOptions
    from services.scaler.config import ScalerConfig
    from services.scaler.server import serve

    try:
        autoscale = config_from_args(args)
    except InvalidArgument as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    spec = args.tracing.spec()
    runtime.run_service(serve(ScalerConfig(
        model=_default_model(args), scheduler_address=args.scheduler, log_dir=Path(args.log_dir), host=args.host,
        port=args.port, replicas=args.replicas, prefill_replicas=args.prefill, decode_replicas=args.decode,
        redis_url=args.redis_url, redis_prefix=args.redis_prefix,
        engine=args.engine, device=args.device, tracing_spec=spec, worker_args=tuple(args.worker_arg),
        metrics_port=args.metrics_port, worker_metrics=args.worker_metrics, d2d=args.d2d,
        standby_pool=args.standby_pool, autoscale=autoscale, actuator=args.actuator, links=args.links,
        role_changes=args.role_changes, pd_local_prefill=args.pd_local_prefill is not False,
        adopt_workers=args.adopt_workers, workers_anchor=anchor_of(args),
        k8s_namespace=k8s_target(args)[0], k8s_deployment=k8s_target(args)[1],
        autoscale_options=LiveOptions(args.autoscale_tick_s, args.autoscale_window_s, args.scheduler_metrics or "",
                                      args.router_metrics or ""),
    )))
    return 0


def cmd_worker(args) -> int:
    from services.worker.config import WorkerConfig
    from services.worker.server import EngineFailed, serve

    config = WorkerConfig(
        model=_default_model(args), instance_id=args.instance_id, host=args.host, port=args.port, engine=args.engine,
        role=args.role, device=args.device, redis_url=args.redis_url, redis_prefix=args.redis_prefix,
        scheduler_address=args.scheduler or "", kv_cache_memory_bytes=args.kv_cache_mib * 1024 * 1024,
        max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len, tracing=args.tracing,
        session_coalesce_ms=args.session_coalesce_ms,
        cpu_cores=args.cpu_cores,
        metrics_port=args.metrics_port, sim_profile=args.sim_profile, sim_seed=args.sim_seed,
        profile_at_start=args.profile_at_start, weights_from=args.weights_from or "",
        weights_stall_timeout_s=args.weights_stall_timeout, weights_deadline_s=args.weights_deadline,
        weights_transport=args.weights_transport,
        serve_weights=args.serve_weights, weights_port=args.weights_port, standby=args.standby,
        kv_transfer=args.kv_transfer, kv_port=args.kv_port, kv_lease_s=args.kv_lease_s,
        kv_deadline_s=args.kv_deadline_s, pd_local_prefill=args.pd_local_prefill is not False,
    )
    try:
        runtime.run_service(serve(config))
    except EngineFailed as err:
        print(f"error: worker {args.instance_id}: {err}; exiting so that it is replaced", file=sys.stderr)
        return 3
    return 0


# -- local cluster and client ------------------------------------------------------------------

def cmd_up(args) -> int:
    from services.common.errors import InvalidArgument
    from services.local import cluster
    from services.scaler.autoscale_cli import config_from_args, forward_flags

    try:
        autoscale = config_from_args(args)
    except InvalidArgument as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    if autoscale is not None:  # start within the bounds; the autoscaler takes it from there
        args.workers = max(autoscale.min_replicas, min(autoscale.max_replicas, args.workers))

    model = _default_model(args)
    worker_args = list(args.worker_arg)
    if not args.profile_at_start:
        worker_args.append("--no-profile-at-start")
    opts = cluster.UpOptions(
        home=args.home, model=model, workers=args.workers, router_port=args.router_port, redis_url=args.redis_url,
        policy=args.policy, engine=args.engine, tracing=args.tracing_spec, timeout_s=args.timeout,
        worker_args=tuple(worker_args), http_port=args.http_port,
        api_keys=tuple(args.api_key) + _key_file(args.api_key_file),
        classes=args.classes or "", tied_to_caller=not args.detach,
        scaler_args=(*forward_flags(args), *forward_standby_flags(args),
                     *(["--adopt-workers"] if args.adopt_workers else [])),
        prefill=args.prefill, decode=args.decode, pd_local_prefill=args.pd_local_prefill,
        tickets=args.tickets, sim_profile=_sim_profile_arg(args.sim_profile),
        policy_config=str(Path(args.policy_config).resolve()) if args.policy_config else "",
        role_changes=args.role_changes,
    )
    print(f"starting HFX: {opts.describe_workers()} {args.engine} worker(s), model {model}", file=sys.stderr)
    try:
        state = cluster.up(opts)
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"HFX cluster ready. router: {state.router}   (logs: {state.log_dir})")
    if args.tracing_spec == "local":
        print(f"spans kept in {cluster.traces_dir(args.home)}: `hfx explain REQUEST_ID` says why a request missed its SLO")
    if state.http:
        print(f"OpenAI-compatible API: http://{state.http}/v1   metrics: http://{state.http}/metrics")
    if args.detach:
        print("running in the background; stop it with `hfx down`", file=sys.stderr)
        return 0
    print("press Ctrl-C to stop", file=sys.stderr)
    cluster.wait_for_interrupt()
    cluster.down(args.home)
    return 0


def _sim_profile_arg(value: str) -> str:
    # A profile file is handed to workers as an absolute path: they run in another directory.
    from services.sim.profiles import PROFILES

    return value if value in PROFILES else str(Path(value).resolve())


def cmd_profile(args) -> int:
    from services.worker.profile_cli import run_profile_command

    return run_profile_command(args, _default_model(args))


def cmd_down(args) -> int:
    from services.local import cluster

    return 0 if cluster.down(args.home) else 1


def build_parser() -> argparse.ArgumentParser:
    from services.client import generate, status
    from services.worker.config import WorkerConfig
    from services.local.statefile import resolve_home
    from services.scheduler.policy import policy_names

    parser = argparse.ArgumentParser(prog="hfx", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=resolve_home, default=resolve_home(None),
                        help="where the local cluster keeps its state and logs (default: $HFX_HOME, else ~/.hfx)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start a local cluster and wait until every part is ready")
    p.add_argument("--workers", type=argtypes.non_negative_int, default=None,
                   help="colocated workers (default 1, or 0 with --prefill/--decode)")
    p.add_argument("--prefill", type=argtypes.non_negative_int, default=0,
                   help="P/D: prefill workers (role prefill) (default %(default)s)")
    p.add_argument("--decode", type=argtypes.non_negative_int, default=0,
                   help="P/D: decode workers (role decode) (default %(default)s)")
    _add_pd_local_prefill(p)
    p.add_argument("--role-changes", action="store_true",
                   help="P/D: the scheduler flips instances between prefill and decode on SLO pressure, without "
                        "restarting them (every worker then starts with --kv-transfer) (default: off)")
    p.add_argument("--model", type=argtypes.model_dir, help="local HF checkpoint dir (default: the built-in tiny model)")
    p.add_argument("--engine", default="vllm", type=argtypes.engine_name,
                   help="worker engine: vllm, or sim (SIMULATED: timing from a latency model, for scale tests) "
                   "(default %(default)s)")
    p.add_argument("--sim-profile", default="cpu-tiny", type=argtypes.sim_profile,
                   help="engine sim: built-in latency profile or a JSON file from `hfx profile`; the scheduler's "
                   "policy assumes it too (hfx scheduler --profile) (default %(default)s)")
    p.add_argument("--profile-at-start", action=argparse.BooleanOptionalAction, default=True,
                   help="workers profile their engine at start and store the fitted model in Redis (default on)")
    p.add_argument("--policy", default="hfx", choices=policy_names(),
                   help="scheduling policy: hfx (SLO-aware) or a baseline for comparison (default %(default)s)")
    _add_tickets_flag(p)
    _add_policy_config_flag(p)
    p.add_argument("--router-port", type=argtypes.port, default=50051, help="router's gRPC port (default %(default)s)")
    p.add_argument("--http-port", type=argtypes.port_or_zero, default=8000,
                   help="router's OpenAI-compatible HTTP API and /metrics; 0 = off (default %(default)s)")
    p.add_argument("--api-key", action="append", default=[], type=argtypes.non_empty,
                   help="require this API key at the router (repeatable; visible in this command's process "
                   "listing: prefer --api-key-file) (default: none, the API is open)")
    p.add_argument("--api-key-file", default=_env("HFX_API_KEY_FILE", ""),
                   help="require the API keys in this file, one per line as `KEY [max_priority=N]` (N: the highest "
                   "priority that key may ask for) (default: $HFX_API_KEY_FILE, else none)")
    p.add_argument("--classes", type=argtypes.classes_file,
                   help="YAML task-class table for the router; the scheduler rejects the classes whose on_miss is "
                   "reject when their SLO is out of reach (default: the built-in classes)")
    p.add_argument("--redis-url", default=None, type=argtypes.redis_url,
                   help="use this Redis instead of starting one (default: start one)")
    p.add_argument("--tracing", dest="tracing_spec", default="local", type=argtypes.up_tracing_spec,
                   help="local (spans kept under HOME/traces, read by `hfx explain`) | off | console | "
                   "otlp[=HOST:PORT] (to Jaeger or any OTLP collector) | file=DIR (default %(default)s)")
    p.add_argument("--timeout", type=argtypes.positive_float, default=300,
                   help="seconds to wait for workers (default %(default)s)")
    p.add_argument("--worker-arg", action="append", default=[],
                   help="extra flag for every worker, e.g. --worker-arg=--kv-cache-mib=512 (repeatable; default: none)")
    p.add_argument("--detach", action="store_true",
                   help="return once ready; stop later with `hfx down` (default: stay in the foreground until Ctrl-C)")
    add_autoscale_flags(p)
    add_standby_flags(p, with_d2d=True)
    add_adopt_flags(p, scaler=False)
    p.set_defaults(func=cmd_up, check=_check_up, parser_error=p.error)

    sub.add_parser("down", help="stop the local cluster, leaving no process behind").set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="instances, roles and load, from Redis")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts) instead of a table")
    p.set_defaults(func=status)

    p = sub.add_parser("generate", help="stream one generation through the router")
    p.add_argument("prompt", type=argtypes.non_empty, help="the prompt text")
    p.add_argument("--max-tokens", type=argtypes.non_negative_int, default=0,
                   help="most tokens to generate; 0 = the router's default, 64 unless set by the router's "
                   "--default-max-tokens (default %(default)s)")
    p.add_argument("--temperature", type=argtypes.non_negative_float, default=0.0,
                   help="sampling temperature, 0 = greedy; the router accepts 0..2 (default %(default)s)")
    p.add_argument("--seed", type=int, help="sampling seed, for repeatable output at temperature > 0 (default: none)")
    p.add_argument("--ignore-eos", action="store_true",
                   help="keep generating past the end-of-sequence token, up to --max-tokens (default: stop at it)")
    p.add_argument("--ttft-ms", type=argtypes.positive_float, help="TTFT SLO in ms (default: the task class's)")
    p.add_argument("--tpot-ms", type=argtypes.positive_float, help="TPOT SLO in ms (default: the task class's)")
    p.add_argument("--task-class", default="default", type=argtypes.non_empty,
                   help="default, chat, code, summarise, batch, or a class of the router's --classes table "
                   "(default %(default)s)")
    p.add_argument("--priority", type=argtypes.non_negative_int,
                   help="higher is more important (default: the task class's)")
    p.add_argument("--tenant", default="", help="tenant name carried with the request (default: none)")
    p.add_argument("--router", type=argtypes.address,
                   help="router address HOST:PORT (default: the local cluster's, found under --home)")
    p.add_argument("--timeout", type=argtypes.positive_float, default=300,
                   help="seconds for the whole call (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming (default: stream)")
    p.add_argument("--api-key", default=_env("HFX_API_KEY", ""),
                   help="the router's API key (default: $HFX_API_KEY, else none)")
    p.set_defaults(func=generate)

    p = sub.add_parser("router", help="run the router process")
    _add_common(p, redis=False)
    p.add_argument("--port", type=argtypes.port, default=50051, help="gRPC port (default %(default)s)")
    p.add_argument("--model", type=argtypes.model_dir,
                   help="checkpoint dir, for its tokenizer (default: the built-in tiny model)")
    p.add_argument("--scheduler", required=True, type=argtypes.address, help="scheduler address HOST:PORT (required)")
    p.add_argument("--classes", type=argtypes.classes_file,
                   help="YAML task-class table (SLO/priority defaults per class) (default: the built-in classes)")
    p.add_argument("--default-max-tokens", type=argtypes.positive_int, default=64,
                   help="max_tokens of requests that set none (default %(default)s)")
    p.add_argument("--http-port", type=argtypes.port_or_zero, default=8000,
                   help="OpenAI-compatible HTTP API and /metrics; 0 = off (default %(default)s)")
    p.add_argument("--api-key", action="append", default=[], type=argtypes.non_empty,
                   help="require this API key (repeatable; visible in the process listing: prefer --api-key-file) "
                   "(default: none, the API is open)")
    p.add_argument("--api-key-file", default=_env("HFX_API_KEY_FILE", ""),
                   help="require the API keys in this file, one per line as `KEY [max_priority=N]` (N: the highest "
                   "priority that key may ask for), # comments (default: $HFX_API_KEY_FILE, else none)")
    p.add_argument("--max-body-bytes", type=argtypes.positive_int, default=4 << 20,
                   help="largest HTTP request body; a bigger one is refused with 413 before it is parsed or its "
                   "API key checked (default %(default)s)")
    p.add_argument("--max-inflight", type=argtypes.positive_int, default=4096,
                   help="requests in this router at once, both front doors; more are refused with 429 / "
                   "RESOURCE_EXHAUSTED and a retry hint (default %(default)s)")
    p.add_argument("--max-failovers", type=argtypes.non_negative_int, default=2,
                   help="a request whose instance fails under it (dies, ends its stream, goes silent) is placed "
                   "again elsewhere with the tokens already streamed, up to this many times; 0 = it fails "
                   "(default %(default)s)")
    p.add_argument("--client-stall-timeout-s", type=argtypes.positive_float, default=30.0,
                   help="a streaming client that takes no message for this long (it stopped reading and its "
                   "buffers are full) is treated as gone: its request ends, freeing the worker and the "
                   "scheduler's slot (default %(default)s)")
    p.add_argument("--tls-cert", type=argtypes.existing_file,
                   help="serve both front doors (gRPC and HTTP) over TLS with this PEM certificate chain; needs "
                   "--tls-key (default: plain text)")
    p.add_argument("--tls-key", type=argtypes.existing_file, help="the PEM private key for --tls-cert")
    p.set_defaults(func=cmd_router, check=_check_router, parser_error=p.error)

    p = sub.add_parser("scheduler", help="run the scheduler process")
    _add_common(p)
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
    _add_tickets_flag(p)
    _add_pd_local_prefill(p)
    _add_policy_config_flag(p)
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

    p = sub.add_parser("scaler", help="run the scaler process (it launches the workers)")
    _add_common(p)
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
    _add_pd_local_prefill(p)
    p.add_argument("--scheduler-metrics", type=argtypes.address,
                   help="--autoscale: the scheduler's /metrics HOST:PORT (arrivals, rejections, queue) (default: none)")
    p.add_argument("--router-metrics", type=argtypes.address,
                   help="--autoscale: the router's /metrics HOST:PORT (SLO attainment) (default: none)")
    p.set_defaults(func=cmd_scaler,
                   check=lambda args: standby_check(args) or autoscale_check(args) or adopt_check(args),
                   parser_error=p.error)

    p = sub.add_parser("worker", help="run one worker process")
    _add_common(p)
    p.add_argument("--port", type=argtypes.port_or_zero, default=0, help="gRPC port; 0 = a free one (default %(default)s)")
    p.add_argument("--instance-id", required=True, type=argtypes.non_empty,
                   help="this worker's id in the registry (required)")
    p.add_argument("--model", type=argtypes.model_dir, help="checkpoint dir (default: the built-in tiny model)")
    p.add_argument("--engine", default="vllm", type=argtypes.engine_name,
                   help="vllm, or sim (SIMULATED engine) (default %(default)s)")
    p.add_argument("--sim-profile", default="cpu-tiny", type=argtypes.sim_profile,
                   help="engine sim: built-in latency profile name or profile JSON file (default %(default)s)")
    p.add_argument("--sim-seed", type=argtypes.non_negative_int, default=0,
                   help="engine sim: seed for token ids and step noise (default %(default)s)")
    p.add_argument("--role", type=argtypes.worker_role, default="colocated", metavar="{colocated,prefill,decode}",
                   help="what the scheduler places here: whole requests (colocated), the prefill legs of P/D "
                        "requests (prefill) or their decode legs (decode) (default %(default)s)")
    _add_pd_local_prefill(p)
    p.add_argument("--profile-at-start", action=argparse.BooleanOptionalAction, default=True,
                   help="profile the engine at start and store the fitted model in Redis (default on)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"], help="device (default %(default)s)")
    p.add_argument("--scheduler", type=argtypes.address,
                   help="scheduler address HOST:PORT for load reports (default: none, no reports)")
    p.add_argument("--kv-cache-mib", type=argtypes.positive_int, default=256,
                   help="KV cache size on CPU, MiB (default %(default)s)")
    p.add_argument("--max-num-seqs", type=argtypes.positive_int, default=64,
                   help="most requests batched at once (default %(default)s)")
    p.add_argument("--session-coalesce-ms", type=argtypes.non_negative_float, default=WorkerConfig.session_coalesce_ms,
                   help="send further decode tokens at most this often per router stream (first tokens and "
                        "ends go at once); fewer messages, less CPU; 0 = every engine step (default %(default)s)")
    p.add_argument("--max-model-len", type=argtypes.non_negative_int, default=0,
                   help="context length in tokens; 0 = the model's own (default %(default)s)")
    p.add_argument("--cpu-cores", default="", help="device cpu: cores for the engine's threads, e.g. 0 or 2-3 "
                   "(the scaler gives each worker its own share) (default: not pinned)")
    p.add_argument("--metrics-port", type=argtypes.port_or_zero, default=0,
                   help="Prometheus /metrics port; 0 = off (default %(default)s)")
    p.add_argument("--weights-from", type=argtypes.weights_from, default=None,
                   help="engine vllm (sim: the stream is received and checked, then dropped; SIMULATED load): start "
                        "with dummy weights, then take them from a donor worker's weight stream "
                        "HOST:PORT (falls back to the checkpoint if the donor dies, stalls or sends anything that "
                        "does not check out), or 'storage' (reload from the checkpoint, timed apart) "
                        "(default: vLLM reads the checkpoint while it starts)")
    p.add_argument("--weights-stall-timeout", type=argtypes.positive_float, default=10.0,
                   help="seconds without a byte from the donor before falling back to storage (default %(default)s)")
    p.add_argument("--weights-deadline", type=argtypes.positive_float, default=300.0,
                   help="seconds a whole pull may take before falling back to storage (default %(default)s)")
    p.add_argument("--weights-transport", default="auto", choices=["auto", "tcp", "shm"],
                   help="how a pull crosses: shm maps the donor's memory (same host only), tcp streams it; auto "
                        "tries shm, then tcp (default %(default)s)")
    p.add_argument("--serve-weights", action="store_true",
                   help="be a donor: keep the checkpoint in memory (its size in RAM) and stream it to new workers "
                        "(default: off)")
    p.add_argument("--weights-port", type=argtypes.port_or_zero, default=0,
                   help="port of the weight stream with --serve-weights; 0 = a free one (default %(default)s)")
    p.add_argument("--standby", action="store_true",
                   help="engine vllm (or sim, SIMULATED): start the engine with dummy weights and wait, unregistered, for a LoadWeights "
                        "call (donor address or storage) before registering (default: off)")
    p.add_argument("--kv-transfer", action="store_true",
                   help="engine vllm: P/D KV transfer: stage a prefill leg's KV for a decode worker and pull a "
                        "decode leg's KV from its prefill worker (default: off)")
    p.add_argument("--kv-port", type=argtypes.port_or_zero, default=0,
                   help="port of the KV transfer server with --kv-transfer; 0 = a free one (default %(default)s)")
    p.add_argument("--kv-lease-s", type=argtypes.positive_float, default=WorkerConfig.kv_lease_s,
                   help="seconds staged KV waits for its decode worker before it is freed (default %(default)s)")
    p.add_argument("--kv-deadline-s", type=argtypes.positive_float, default=WorkerConfig.kv_deadline_s,
                   help="seconds a KV pull may take before the decode worker recomputes the prefill "
                        "(default %(default)s)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("profile", help="profile an engine's step times, fit the latency model, write a profile JSON")
    p.add_argument("--model", type=argtypes.model_dir, help="checkpoint dir (default: the built-in tiny model)")
    p.add_argument("--engine", default="vllm", type=argtypes.engine_name,
                   help="vllm, or sim (profiles the simulator) (default %(default)s)")
    p.add_argument("--sim-profile", default="cpu-tiny", type=argtypes.sim_profile,
                   help="engine sim: the profile to simulate (default %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"], help="device (default %(default)s)")
    p.add_argument("--kv-cache-mib", type=argtypes.positive_int, default=256,
                   help="KV cache size on CPU, MiB (default %(default)s)")
    p.add_argument("--max-num-seqs", type=argtypes.positive_int, default=64,
                   help="most requests batched at once (default %(default)s)")
    p.add_argument("--grid", default="full", choices=["full", "quick"],
                   help="probe grid; quick is what workers run at start (default %(default)s)")
    p.add_argument("--out", type=argtypes.output_file,
                   help="write the profile JSON here, usable as --sim-profile and `hfx sim --profile` (default: not written)")
    p.add_argument("--json", action="store_true", help="print the profile JSON instead of a table (default: a table)")
    p.set_defaults(func=cmd_profile)

    from services.common.model import add_model_commands

    add_model_commands(sub)
    from services.sim.cli import add_sim_commands

    add_sim_commands(sub)
    from services.bench.cli import add_bench_command

    add_bench_command(sub)
    from services.explain.cli import add_parser as add_explain

    add_explain(sub)
    from services.role_cli import add_parser as add_role

    add_role(sub)
    return parser


def _add_pd_local_prefill(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pd-local-prefill", action=argparse.BooleanOptionalAction, default=None,
                   help="P/D: a decode worker may prefill a short prompt itself instead of taking its KV from a "
                        "prefill worker (default: --policy-config's pd_local_prefill, else on; off: only colocated "
                        "and prefill workers prefill)")


def _add_policy_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy-config", default=None, type=argtypes.policy_config_file, metavar="FILE",
                   help="YAML/JSON of the scheduling policy's settings (PolicyConfig fields, e.g. `chunk_tokens: "
                   "2048`); they win over what --profile and --classes imply (default: none)")


def _check_router(args) -> str | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together"
    return None


def _check_up(args) -> str | None:
    """What one flag's type cannot see: flags that contradict each other."""
    if args.router_port == args.http_port:
        return f"--router-port and --http-port are both {args.router_port}"
    if args.workers is None:   # one colocated worker unless P/D workers were asked for
        args.workers = 0 if args.prefill or args.decode else 1
    local_prefill = _policy_settings(args).get("pd_local_prefill", True)
    problem = pd_counts_problem(args.workers, args.prefill, args.decode, local_prefill)
    return problem or standby_check(args) or autoscale_check(args, for_up=True) or adopt_check(args)


def pd_counts_problem(colocated: int, prefill: int, decode: int, local_prefill: bool) -> str | None:
    """A mix of workers that cannot serve a request: the scheduler's own rule (serving_gap), asked
    before anything starts."""
    from services.common.domain import ClusterSnapshot, InstanceView, Role
    from services.scheduler.policy import PolicyConfig
    from services.scheduler.policy.base import serving_gap

    if colocated + prefill + decode == 0:
        return "no workers: give --workers, or --prefill and --decode"
    views = [InstanceView(f"{role.value}-{i}", "", role) for role, n in
             ((Role.COLOCATED, colocated), (Role.PREFILL, prefill), (Role.DECODE, decode)) for i in range(n)]
    gap = serving_gap(ClusterSnapshot(tuple(views)), PolicyConfig(pd_local_prefill=local_prefill))
    return f"--workers {colocated} --prefill {prefill} --decode {decode}: {gap}" if gap else None


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, then run the command's cross-flag `check`: its complaint is a usage error (exit 2)."""
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    problem = check(args) if check else None
    if problem:
        getattr(args, "parser_error", parser.error)(problem)
    return args


def _key_file(path: str) -> tuple:
    if not path:
        return ()
    from services.router.auth import read_key_file

    try:
        return read_key_file(path)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def _present_cluster_token(args) -> None:
    """Commands run beside a local cluster (`hfx status`, `down`, `bench`...) present its internal
    token on their calls to its services; the services `hfx up` starts have it already."""
    from services.common import internal_auth

    home = getattr(args, "home", None)
    for name, env in ((internal_auth.TOKEN_FILE_NAME, internal_auth.TOKEN_FILE_ENV),
                      (internal_auth.REDIS_PASSWORD_FILE_NAME, internal_auth.REDIS_PASSWORD_FILE_ENV)):
        if home and (home / name).exists() and not os.environ.get(env):
            internal_auth.use_token_file(home / name, env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    _logging(args)
    _present_cluster_token(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
