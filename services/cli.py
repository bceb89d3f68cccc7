"""`hfx`: one command for every HFX process and tool.

  hfx up / down / status          a local cluster (Redis, router, scheduler, scaler, workers)
  hfx generate PROMPT             stream one generation through the router
  hfx router|scheduler|scaler|worker   run one service process (what `hfx up` starts)
  hfx model init                  write the default tiny model
  hfx sim / bench                 the simulator and the workload benchmark (--sim, or --target live)
  hfx profile                     profile an engine and fit its step-time model
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from services.common.tracing import TracingConfig


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _add_common(p: argparse.ArgumentParser, redis: bool = True) -> None:
    if redis:
        p.add_argument("--redis-url", default=_env("HFX_REDIS_URL", "redis://127.0.0.1:6379/0"),
                       help="cluster state store (default $HFX_REDIS_URL or %(default)s)")
        p.add_argument("--redis-prefix", default="hfx", help="key prefix, to share one Redis between clusters")
    p.add_argument("--tracing", default=_env("HFX_TRACING", "off"), type=TracingConfig.parse,
                   help="off | console | otlp | otlp=HOST:PORT (OTLP/gRPC, e.g. Jaeger on 4317)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--log-level", default="INFO")


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def _model_path(value: str) -> str:
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(f"{value}: not a Hugging Face checkpoint directory (no config.json)")
    return str(path.resolve())


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
        http_port=args.http_port, api_keys=tuple(args.api_key),
        classes=load_classes(args.classes) if args.classes else DEFAULT_CLASSES,
        default_max_tokens=args.default_max_tokens, tracing=args.tracing,
    )
    asyncio.run(serve(config))
    return 0


def cmd_scheduler(args) -> int:
    from services.scheduler.config import SchedulerConfig
    from services.scheduler.server import serve

    asyncio.run(serve(SchedulerConfig(host=args.host, port=args.port, policy=args.policy, redis_url=args.redis_url,
                                      redis_prefix=args.redis_prefix, tracing=args.tracing,
                                      metrics_port=args.metrics_port)))
    return 0


def cmd_scaler(args) -> int:
    from services.scaler.config import ScalerConfig
    from services.scaler.server import serve

    tracing = args.tracing
    spec = tracing.exporter if tracing.exporter != "otlp" else f"otlp={tracing.otlp_endpoint}"
    asyncio.run(serve(ScalerConfig(
        model=_default_model(args), scheduler_address=args.scheduler, log_dir=Path(args.log_dir), host=args.host,
        port=args.port, replicas=args.replicas, redis_url=args.redis_url, redis_prefix=args.redis_prefix,
        engine=args.engine, device=args.device, tracing_spec=spec, worker_args=tuple(args.worker_arg),
        metrics_port=args.metrics_port, worker_metrics=args.worker_metrics,
    )))
    return 0


def cmd_worker(args) -> int:
    from services.worker.config import WorkerConfig
    from services.worker.server import serve

    config = WorkerConfig(
        model=_default_model(args), instance_id=args.instance_id, host=args.host, port=args.port, engine=args.engine,
        device=args.device, redis_url=args.redis_url, redis_prefix=args.redis_prefix,
        scheduler_address=args.scheduler, kv_cache_memory_bytes=args.kv_cache_mib * 1024 * 1024,
        max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len, tracing=args.tracing,
        cpu_cores=args.cpu_cores,
        metrics_port=args.metrics_port, sim_profile=args.sim_profile, sim_seed=args.sim_seed,
        profile_at_start=args.profile_at_start,
    )
    asyncio.run(serve(config))
    return 0


# -- local cluster and client ------------------------------------------------------------------

def cmd_up(args) -> int:
    from services.local import cluster

    model = _default_model(args)
    worker_args = list(args.worker_arg)
    if args.engine == "sim":
        worker_args.append(f"--sim-profile={_sim_profile_arg(args.sim_profile)}")
    if not args.profile_at_start:
        worker_args.append("--no-profile-at-start")
    opts = cluster.UpOptions(
        home=args.home, model=model, workers=args.workers, router_port=args.router_port, redis_url=args.redis_url,
        policy=args.policy, engine=args.engine, tracing=args.tracing_spec, timeout_s=args.timeout,
        worker_args=tuple(worker_args), http_port=args.http_port, api_keys=tuple(args.api_key),
        classes=args.classes or "", tied_to_caller=not args.detach,
    )
    print(f"starting HFX: {args.workers} {args.engine} worker(s), model {model}", file=sys.stderr)
    try:
        state = cluster.up(opts)
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"HFX cluster ready. router: {state.router}   (logs: {state.log_dir})")
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


def _engine_name(value: str) -> str:
    from services.worker.engine import ENGINES

    if value not in ENGINES:
        raise argparse.ArgumentTypeError(f"unknown engine {value!r}; choose one of {', '.join(sorted(ENGINES))}")
    return value


def _sim_profile(value: str) -> str:
    from services.sim.profiles import load_profile

    try:
        load_profile(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def cmd_profile(args) -> int:
    from services.worker.profile_cli import run_profile_command

    return run_profile_command(args, _default_model(args))


def cmd_down(args) -> int:
    from services.local import cluster

    return 0 if cluster.down(args.home) else 1


def build_parser() -> argparse.ArgumentParser:
    from services.client import generate, status
    from services.local.statefile import resolve_home
    from services.scheduler.policy import policy_names

    parser = argparse.ArgumentParser(prog="hfx", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=resolve_home, default=resolve_home(None),
                        help="where the local cluster keeps its state and logs (default $HFX_HOME or ~/.hfx)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start a local cluster and wait until every part is ready")
    p.add_argument("--workers", type=_positive_int, default=1, help="number of workers (default %(default)s)")
    p.add_argument("--model", type=_model_path, help="local HF checkpoint dir (default: the built-in tiny model)")
    p.add_argument("--engine", default="vllm", type=_engine_name,
                   help="worker engine: vllm, or sim (SIMULATED: timing from a latency model, for scale tests)")
    p.add_argument("--sim-profile", default="cpu-tiny", type=_sim_profile,
                   help="engine sim: built-in latency profile or a JSON file from `hfx profile` (default %(default)s)")
    p.add_argument("--profile-at-start", action=argparse.BooleanOptionalAction, default=True,
                   help="workers profile their engine at start and store the fitted model in Redis (default on)")
    p.add_argument("--policy", default="hfx", choices=policy_names(),
                   help="scheduling policy: hfx (default, SLO-aware) or a baseline for comparison")
    p.add_argument("--router-port", type=int, default=50051)
    p.add_argument("--http-port", type=int, default=8000, help="router's OpenAI-compatible HTTP API; 0 = off")
    p.add_argument("--api-key", action="append", default=[], help="require this API key at the router (repeatable)")
    p.add_argument("--classes", help="YAML task-class table for the router")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    p.add_argument("--tracing", dest="tracing_spec", default="off", help="off | console | otlp[=HOST:PORT]")
    p.add_argument("--timeout", type=_positive_float, default=300, help="seconds to wait for workers (default %(default)s)")
    p.add_argument("--worker-arg", action="append", default=[], help="extra flag for every worker, e.g. --worker-arg=--kv-cache-mib=512")
    p.add_argument("--detach", action="store_true", help="return once ready; stop later with `hfx down`")
    p.set_defaults(func=cmd_up)

    sub.add_parser("down", help="stop the local cluster, leaving no process behind").set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="instances, roles and load, from Redis")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=status)

    p = sub.add_parser("generate", help="stream one generation through the router")
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=0, help="default: the router's (64)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--ttft-ms", type=float, help="TTFT SLO (default: the task class's)")
    p.add_argument("--tpot-ms", type=float, help="TPOT SLO (default: the task class's)")
    p.add_argument("--task-class", default="default", help="default, chat, code, summarise, batch")
    p.add_argument("--priority", type=int, help="higher is more important (default: the task class's)")
    p.add_argument("--tenant", default="")
    p.add_argument("--router", help="router address (default: the local cluster's)")
    p.add_argument("--timeout", type=float, default=300, help="seconds for the whole call")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p.add_argument("--api-key", default=_env("HFX_API_KEY", ""), help="the router's API key (default $HFX_API_KEY)")
    p.set_defaults(func=generate)

    p = sub.add_parser("router", help="run the router process")
    _add_common(p, redis=False)
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--model", type=_model_path, help="checkpoint dir, for its tokenizer")
    p.add_argument("--scheduler", required=True, help="scheduler address host:port")
    p.add_argument("--classes", help="YAML task-class table (SLO/priority defaults per class)")
    p.add_argument("--default-max-tokens", type=int, default=64)
    p.add_argument("--http-port", type=int, default=8000, help="OpenAI-compatible HTTP API and /metrics; 0 = off")
    p.add_argument("--api-key", action="append", default=[], help="require this API key (repeatable; none = open)")
    p.set_defaults(func=cmd_router)

    p = sub.add_parser("scheduler", help="run the scheduler process")
    _add_common(p)
    p.add_argument("--port", type=int, default=50052)
    p.add_argument("--policy", default="hfx", choices=policy_names(),
                   help="scheduling policy: hfx (default, SLO-aware) or a baseline for comparison")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port; 0 = off")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("scaler", help="run the scaler process (it launches the workers)")
    _add_common(p)
    p.add_argument("--port", type=int, default=50053)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--model", type=_model_path)
    p.add_argument("--scheduler", required=True)
    p.add_argument("--engine", default="vllm")
    p.add_argument("--device", default="cpu")
    p.add_argument("--log-dir", default="./hfx-logs")
    p.add_argument("--worker-arg", action="append", default=[])
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port; 0 = off")
    p.add_argument("--worker-metrics", action="store_true", help="give each worker a /metrics port (a free one)")
    p.set_defaults(func=cmd_scaler)

    p = sub.add_parser("worker", help="run one worker process")
    _add_common(p)
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--instance-id", required=True)
    p.add_argument("--model", type=_model_path)
    p.add_argument("--engine", default="vllm", type=_engine_name, help="vllm, or sim (SIMULATED engine)")
    p.add_argument("--sim-profile", default="cpu-tiny", type=_sim_profile,
                   help="engine sim: built-in latency profile name or profile JSON file (default %(default)s)")
    p.add_argument("--sim-seed", type=int, default=0, help="engine sim: seed for token ids and step noise")
    p.add_argument("--profile-at-start", action=argparse.BooleanOptionalAction, default=True,
                   help="profile the engine at start and store the fitted model in Redis (default on)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"])
    p.add_argument("--scheduler", default="", help="scheduler address for load reports")
    p.add_argument("--kv-cache-mib", type=_positive_int, default=256, help="KV cache size on CPU (default %(default)s)")
    p.add_argument("--max-num-seqs", type=_positive_int, default=64, help="most requests batched at once")
    p.add_argument("--max-model-len", type=int, default=0)
    p.add_argument("--cpu-cores", default="", help="device cpu: cores for the engine's threads, e.g. 0 or 2-3 "
                   "(the scaler gives each worker its own share)")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port; 0 = off")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("profile", help="profile an engine's step times, fit the latency model, write a profile JSON")
    p.add_argument("--model", type=_model_path, help="checkpoint dir (default: the built-in tiny model)")
    p.add_argument("--engine", default="vllm", type=_engine_name, help="vllm, or sim (profiles the simulator)")
    p.add_argument("--sim-profile", default="cpu-tiny", type=_sim_profile, help="engine sim: the profile to simulate")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"])
    p.add_argument("--kv-cache-mib", type=_positive_int, default=256, help="KV cache size on CPU (default %(default)s)")
    p.add_argument("--max-num-seqs", type=_positive_int, default=64, help="most requests batched at once")
    p.add_argument("--grid", default="full", choices=["full", "quick"], help="probe grid (quick: what workers run at start)")
    p.add_argument("--out", help="write the profile JSON here (usable as --sim-profile and `hfx sim --profile`)")
    p.add_argument("--json", action="store_true", help="print the profile JSON instead of a table")
    p.set_defaults(func=cmd_profile)

    from services.common.model import add_model_commands

    add_model_commands(sub)
    from services.sim.cli import add_sim_commands

    add_sim_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
