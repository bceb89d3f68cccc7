"""`hfx up`, `down`, `status` and `generate`: a local cluster and its client."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services import argtypes
from services.commands.common import (add_api_key_flags, add_pd_local_prefill, add_policy_config_flag,
                                      add_tickets_flag, default_model, env, key_file, policy_settings)
from services.scaler.autoscale_cli import add_autoscale_flags
from services.scaler.adopt_cli import add_adopt_flags, adopt_check
from services.scaler.autoscale_cli import check as autoscale_check
from services.scaler.standby_cli import add_standby_flags, forward_standby_flags, standby_check


def add_parsers(sub) -> None:
    from services.client import generate, status
    from services.scheduler.policy import policy_names

    p = sub.add_parser("up", help="start a local cluster and wait until every part is ready")
    p.add_argument("--workers", type=argtypes.non_negative_int, default=None,
                   help="colocated workers (default 1, or 0 with --prefill/--decode)")
    p.add_argument("--prefill", type=argtypes.non_negative_int, default=0,
                   help="P/D: prefill workers (role prefill) (default %(default)s)")
    p.add_argument("--decode", type=argtypes.non_negative_int, default=0,
                   help="P/D: decode workers (role decode) (default %(default)s)")
    add_pd_local_prefill(p)
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
    add_tickets_flag(p)
    add_policy_config_flag(p)
    p.add_argument("--router-port", type=argtypes.port, default=50051, help="router's gRPC port (default %(default)s)")
    p.add_argument("--http-port", type=argtypes.port_or_zero, default=8000,
                   help="router's OpenAI-compatible HTTP API and /metrics; 0 = off (default %(default)s)")
    add_api_key_flags(p, " at the router")
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
    p.add_argument("--api-key", default=env("HFX_API_KEY", ""),
                   help="the router's API key (default: $HFX_API_KEY, else none)")
    p.set_defaults(func=generate)


def cmd_up(args) -> int:
    from services.common.errors import InvalidArgument
    from services.local import cluster
    from services.scaler.autoscale_cli import config_from_args, forward_flags, is_pd

    try:
        autoscale = config_from_args(args)
    except InvalidArgument as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    if autoscale is not None:  # start within the bounds; the autoscaler takes it from there
        clamp = lambda n: max(autoscale.min_replicas, min(autoscale.max_replicas, n))  # noqa: E731
        if is_pd(args):
            args.prefill, args.decode = clamp(args.prefill), clamp(args.decode)
        else:
            args.workers = clamp(args.workers)

    model = default_model(args)
    worker_args = list(args.worker_arg)
    if not args.profile_at_start:
        worker_args.append("--no-profile-at-start")
    opts = cluster.UpOptions(
        home=args.home, model=model, workers=args.workers, router_port=args.router_port, redis_url=args.redis_url,
        policy=args.policy, engine=args.engine, tracing=args.tracing_spec, timeout_s=args.timeout,
        worker_args=tuple(worker_args), http_port=args.http_port,
        api_keys=tuple(args.api_key) + key_file(args.api_key_file),
        classes=args.classes or "", tied_to_caller=not args.detach,
        scaler_args=(*forward_flags(args), *forward_standby_flags(args),
                     *(["--adopt-workers"] if args.adopt_workers else [])),
        prefill=args.prefill, decode=args.decode,
        # Resolved once (the flag, else --policy-config's): the scaler's role-change check and the
        # workers get the value the scheduler's policy uses, not only a flag given on this line.
        pd_local_prefill=policy_settings(args).get("pd_local_prefill"),
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


def cmd_down(args) -> int:
    from services.local import cluster

    return 0 if cluster.down(args.home) else 1


def _check_up(args) -> str | None:
    """What one flag's type cannot see: flags that contradict each other."""
    if args.router_port == args.http_port:
        return f"--router-port and --http-port are both {args.router_port}"
    if args.workers is None:   # one colocated worker unless P/D workers were asked for
        args.workers = 0 if args.prefill or args.decode else 1
    local_prefill = policy_settings(args).get("pd_local_prefill", True)
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
