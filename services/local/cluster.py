"""`hfx up` and `hfx down`: Redis, scheduler, scaler (which launches workers) and router as local
processes, each in its own session and process group, recorded in the state file (workers: in
their pid files) so `down` leaves none behind: after stopping the recorded groups it looks for any
process still in one of the recorded sessions, kills it and says so."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import grpcutil, internal_auth, procs, proctable, redis_server, spanstore, store
from services.common.keys import Keys
from services.local.statefile import ClusterFile
from services.router.auth import key_line


@dataclass(frozen=True)
class UpOptions:
    home: Path
    model: str
    workers: int
    router_port: int
    redis_url: str | None
    policy: str
    engine: str
    tracing: str                       # a --tracing spec, or "local": spans in traces_dir(home)
    timeout_s: float
    worker_args: tuple[str, ...] = ()
    http_port: int = 0                 # the router's OpenAI-compatible HTTP API; 0 = off
    api_keys: tuple = ()               # ApiKey or str; required by the router (HTTP and gRPC) when set
    classes: str = ""                  # YAML task-class table for the router; "" = built-in classes
    metrics: bool = True               # /metrics on free ports for scheduler, scaler and each worker
    # The services die with the calling process, however it dies (SIGKILL too): a foreground
    # `hfx up`, a test, a benchmark. False for `hfx up --detach`, whose caller exits at once.
    tied_to_caller: bool = True
    scaler_args: tuple[str, ...] = ()  # autoscaling flags for the scaler (services/scaler/autoscale_cli.py)
    tickets: bool = True               # the scheduler grants routers tickets (see `hfx scheduler --help`)
    prefill: int = 0                   # P/D: prefill and decode workers beside the `workers` colocated ones
    decode: int = 0
    pd_local_prefill: bool | None = None   # the scheduler's --pd-local-prefill (None: its policy config's)
    # engine sim: the workers' --sim-profile, and the scheduler's --profile (its policy assumes the
    # engine it places on: services/scheduler/policy/settings.py). A file is an absolute path.
    sim_profile: str = "cpu-tiny"
    policy_config: str = ""            # the scheduler's --policy-config FILE (absolute path); "" = none
    role_changes: bool = False         # issue 11: the scheduler flips P/D roles through the scaler
    scheduler_args: tuple[str, ...] = ()   # more `hfx scheduler` flags (e.g. --registry-refresh-s)

    @property
    def total_workers(self) -> int:
        return self.workers + self.prefill + self.decode

    def describe_workers(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.workers, "colocated"), (self.prefill, "prefill"),
                                               (self.decode, "decode")) if n]
        return " + ".join(parts) or "0"


SPAN_STORE_KEEP_S = 7 * 86400.0  # `hfx up` deletes span files of processes that stopped writing longer ago


def traces_dir(home: Path) -> Path:
    """The local span store of the cluster under `home` (`--tracing local`, what `hfx explain` reads)."""
    return home / "traces"


def _step(msg: str, t0: float) -> None:
    print(f"  [{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("    | " + line for line in text)


def wait_serving(address: str, timeout_s: float, proc=None, what: str = "service", log: Path | None = None,
                 service: str = "") -> None:
    """Waits for gRPC health SERVING of `service` (so another process on the port cannot pass for
    it); a process that dies first fails at once, with its log's tail."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = f"; last lines of {log}:\n{log_tail(log)}" if log else ""
                raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready{tail}")
            try:
                request = health_pb2.HealthCheckRequest(service=service)
                if stub.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{what} at {address} not serving after {timeout_s:.0f}s")


def _crashed_worker(scaler_address: str, log_dir: Path) -> str | None:
    """A description of a worker that keeps crashing at start, or None."""
    from services.common.pb.hfx.v1 import scaler_pb2, scaler_pb2_grpc

    with grpcutil.sync_channel(scaler_address) as channel:
        try:
            listing = scaler_pb2_grpc.ScalerStub(channel).ListWorkers(scaler_pb2.ListWorkersRequest(), timeout=2)
        except grpc.RpcError:
            return None
    for w in listing.workers:
        if w.restarts >= 1 and w.state == scaler_pb2.WORKER_STATE_EXITED:
            log = log_dir / f"{w.instance_id}.log"
            return f"worker {w.instance_id} crashed {w.restarts + 1} times (exit code {w.exit_code}); last lines of {log}:\n{log_tail(log)}"
    return None


def _wait_workers(state: ClusterFile, count: int, timeout_s: float, log_dir: Path, scaler_proc) -> None:
    from tqdm import tqdm

    client = store.connect_sync(state.redis_url)
    keys = Keys(state.redis_prefix)
    deadline = time.monotonic() + timeout_s
    # A live bar on a terminal; in logs (CI) it would print a line per redraw, so it stays quiet.
    with tqdm(total=count, desc="  workers ready", unit="worker", file=sys.stderr, leave=False,
              disable=not sys.stderr.isatty(), mininterval=0.5) as bar:
        while True:
            ready = sum(1 for iid in client.smembers(keys.instances()) if client.exists(keys.instance(store.as_text(iid))))
            bar.update(ready - bar.n)
            if ready >= count:
                return
            if scaler_proc.poll() is not None:
                raise RuntimeError(f"scaler exited (code {scaler_proc.returncode}); last lines:\n{log_tail(log_dir / 'scaler.log')}")
            crashed = _crashed_worker(state.scaler, log_dir)
            if crashed:
                raise RuntimeError(crashed)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ready}/{count} workers ready after {timeout_s:.0f}s; see worker logs in {log_dir}")
            time.sleep(0.25)


def _wait_scheduler_sees(address: str, count: int, timeout_s: float) -> None:
    """Waits until the scheduler knows `count` instances: it reads the registry every registry_refresh_s,
    and a cluster called ready before that sent a burst all to one worker (`make demo`: 8 of 8 on hfx-w0)."""
    from services.common.pb.hfx.v1 import scheduler_pb2, scheduler_pb2_grpc

    deadline = time.monotonic() + timeout_s
    seen = 0
    with grpcutil.sync_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerStub(channel)
        while time.monotonic() < deadline:
            try:
                seen = len(stub.GetClusterState(scheduler_pb2.GetClusterStateRequest(), timeout=1).instances)
            except grpc.RpcError:
                pass
            if seen >= count:
                return
            time.sleep(0.1)
    raise TimeoutError(f"the scheduler at {address} sees {seen} of {count} workers after {timeout_s:.0f}s")


def up(opts: UpOptions) -> ClusterFile:
    """Starts everything and returns the recorded cluster; on any failure stops what it started."""
    existing = ClusterFile.load(opts.home)
    if existing and any(_members(p, existing.starts.get(str(p))) for p in existing.pgids.values()):
        raise RuntimeError(f"a cluster is already running (router {existing.router}); run `hfx down` first")
    t0 = time.monotonic()
    log_dir = opts.home / "logs" / time.strftime("%Y%m%d-%H%M%S")
    state = ClusterFile(router=f"127.0.0.1:{opts.router_port}", scheduler="", scaler="", redis_url=opts.redis_url or "",
                        redis_prefix="hfx", model=opts.model, log_dir=str(log_dir), started_unix_s=time.time())
    try:
        _start_all(opts, state, log_dir, t0)
    except BaseException:
        state.save(opts.home)  # so a failed start can still be cleaned by `down`
        down(opts.home, quiet=True)
        raise
    state.save(opts.home)
    return state


def _policy_flags(opts: UpOptions) -> list[str]:
    """The scheduler's PolicyConfig sources (services/scheduler/policy/settings.py), then scheduler_args."""
    flags = []
    if opts.pd_local_prefill is not None:
        flags.append("--pd-local-prefill" if opts.pd_local_prefill else "--no-pd-local-prefill")
    if opts.engine == "sim":
        flags += ["--profile", opts.sim_profile]
    if opts.classes:
        flags += ["--classes", opts.classes]
    if opts.policy_config:
        flags += ["--policy-config", opts.policy_config]
    return flags + list(opts.scheduler_args)


def _worker_flags(opts: UpOptions) -> tuple[str, ...]:
    """Every worker's flags: the simulated engine's profile first, so a --worker-arg can still add more."""
    return ((f"--sim-profile={opts.sim_profile}",) if opts.engine == "sim" else ()) + tuple(opts.worker_args)


def _fixed_ports(opts: UpOptions) -> frozenset[int]:
    """The ports the user chose; they must be free now and are never handed out as random ones."""
    fixed = frozenset(p for p in (opts.router_port, opts.http_port) if p)
    for port in sorted(fixed):
        if not procs.port_free(port):
            raise RuntimeError(f"port {port} is already in use (another HFX cluster or server?); "
                               "choose others with --router-port / --http-port")
    return fixed


def _start_all(opts: UpOptions, state: ClusterFile, log_dir: Path, t0: float) -> None:
    fixed = _fixed_ports(opts)
    # One internal token per cluster: every service it starts presents it and the internal ones
    # require it (services/common/internal_auth.py); so does this process, for its own calls in.
    internal_auth.use_token_file(internal_auth.write_token_file(opts.home / internal_auth.TOKEN_FILE_NAME))
    tied = opts.tied_to_caller  # every process started here dies with its caller (die_with_parent)
    if not opts.redis_url:
        # The cluster's own Redis has a password of its own, in a file like the token's.
        password_file = internal_auth.write_token_file(opts.home / internal_auth.REDIS_PASSWORD_FILE_NAME)
        internal_auth.use_token_file(password_file, internal_auth.REDIS_PASSWORD_FILE_ENV)
        port = procs.free_port(avoid=fixed)
        proc = redis_server.start(port, log_dir, log_dir / "redis.log", password=internal_auth.redis_password(),
                                  die_with_parent=tied)
        state.record("redis", proc.pid)
        state.redis_url = f"redis://127.0.0.1:{port}/0"
        redis_server.wait_ready(state.redis_url)
        _step(f"redis ready at {state.redis_url}", t0)
    tracing = opts.tracing
    if tracing == "local":
        tracing = f"file={traces_dir(opts.home).resolve()}"
        spanstore.prune(traces_dir(opts.home), SPAN_STORE_KEEP_S, time.time())
    common = ["--redis-url", state.redis_url, "--tracing", tracing]

    state.scheduler = f"127.0.0.1:{procs.free_port(avoid=fixed)}"
    # Chosen now: a scheduler that flips roles calls the scaler, which starts after it.
    state.scaler = f"127.0.0.1:{procs.free_port(avoid=fixed | {int(state.scheduler.split(':')[1])})}"
    fixed = fixed | {int(state.scaler.split(":")[1])}   # promised to the scaler: nobody else takes it
    local = ["--no-pd-local-prefill"] if opts.pd_local_prefill is False else []   # the scaler's role-change check
    roles = ["--role-changes"] if opts.role_changes else []
    sched = procs.spawn(procs.hfx_command("scheduler", "--port", state.scheduler.split(":")[1], "--policy", opts.policy,
                                          *([] if opts.tickets else ["--no-tickets"]),
                                          *_policy_flags(opts),
                                          *(roles + ["--scaler", state.scaler] if roles else []),
                                          *common, *_metrics_flag(opts, state, "scheduler", fixed)),
                        log_dir / "scheduler.log", die_with_parent=tied)
    state.record("scheduler", sched.pid)
    wait_serving(state.scheduler, 60, sched, "scheduler", log_dir / "scheduler.log", "hfx.v1.Scheduler")
    _step(f"scheduler ready at {state.scheduler} (policy {opts.policy})", t0)

    # The router binds its fixed ports before the scaler picks ports for workers, so they cannot collide.
    router = procs.spawn(
        procs.hfx_command("router", "--port", str(opts.router_port), "--model", opts.model,
                          "--scheduler", state.scheduler, "--tracing", tracing, *_router_flags(opts, state)),
        log_dir / "router.log", die_with_parent=tied,
    )
    state.record("router", router.pid)
    state.save(opts.home)
    wait_serving(state.router, 120, router, "router", log_dir / "router.log", "hfx.v1.Router")
    _step(f"router ready at {state.router}" + (f", HTTP at http://{state.http}" if state.http else ""), t0)

    scaler = procs.spawn(
        procs.hfx_command("scaler", "--port", state.scaler.split(":")[1], "--replicas", str(opts.workers),
                          "--prefill", str(opts.prefill), "--decode", str(opts.decode),
                          "--model", opts.model, "--scheduler", state.scheduler, "--engine", opts.engine,
                          "--log-dir", str(log_dir), *common, *local, *roles,
                          *[f"--worker-arg={a}" for a in _worker_flags(opts)],
                          *_metrics_flag(opts, state, "scaler", fixed), *(["--worker-metrics"] if opts.metrics else []),
                          *opts.scaler_args, *_signal_sources(opts, state), *_anchor(opts)),
        log_dir / "scaler.log", die_with_parent=tied,
    )
    state.record("scaler", scaler.pid)
    wait_serving(state.scaler, 60, scaler, "scaler", log_dir / "scaler.log", "hfx.v1.Scaler")
    _step(f"scaler ready at {state.scaler}, launching {opts.describe_workers()} {opts.engine} worker(s)", t0)

    _wait_workers(state, opts.total_workers, opts.timeout_s, log_dir, scaler)
    _wait_scheduler_sees(state.scheduler, opts.total_workers, 30)
    _step(f"{opts.total_workers} worker(s) ready", t0)
    for path in sorted(log_dir.glob("*.metrics")):  # written by the scaler for each worker it starts
        state.metrics[path.stem] = path.read_text().strip()


def _metrics_flag(opts: UpOptions, state: ClusterFile, service: str, fixed: frozenset[int]) -> list[str]:
    if not opts.metrics:
        return []
    state.metrics[service] = f"127.0.0.1:{procs.free_port(avoid=fixed)}"
    return ["--metrics-port", state.metrics[service].split(":")[1]]


def _anchor(opts: UpOptions) -> list[str]:
    """Workers that outlive their scaler (--adopt-workers) still die with a tied caller."""
    if "--adopt-workers" not in opts.scaler_args or not opts.tied_to_caller:
        return []
    return ["--workers-die-with", str(os.getpid())]


def _signal_sources(opts: UpOptions, state: ClusterFile) -> list[str]:
    """An autoscaling scaler reads the scheduler's and the router's /metrics."""
    if "--autoscale" not in opts.scaler_args:
        return []
    return [f"--{name}-metrics={state.metrics[name]}" for name in ("scheduler", "router") if name in state.metrics]


def _router_flags(opts: UpOptions, state: ClusterFile) -> list[str]:
    flags = ["--http-port", str(opts.http_port)]
    if opts.http_port:
        state.http = f"127.0.0.1:{opts.http_port}"
        state.metrics["router"] = state.http  # the router serves /metrics on its HTTP port
    if opts.classes:
        flags += ["--classes", opts.classes]
    if opts.api_keys:   # in a file of the owner's: never on the router's command line
        path = opts.home / "api-keys"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(map(key_line, opts.api_keys)) + "\n")
        flags += ["--api-key-file", str(path)]
    return flags


def down(home: Path, quiet: bool = False) -> bool:
    """Stops the recorded cluster: router first (no new work), then scaler (drains workers), then
    the rest; then checks that no process of the cluster is left, kills any that is, and says so."""
    internal_auth.forget_token_file(home / internal_auth.TOKEN_FILE_NAME)   # this process stops presenting it
    internal_auth.forget_token_file(home / internal_auth.REDIS_PASSWORD_FILE_NAME, internal_auth.REDIS_PASSWORD_FILE_ENV)
    state = ClusterFile.load(home)
    if state is None:
        if not quiet:
            print("no local cluster recorded", file=sys.stderr)
        return False

    def say(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr)

    order = ["router", "scaler", "scheduler", "redis"]
    for name in sorted(state.pgids, key=lambda n: order.index(n) if n in order else len(order)):
        pgid = state.pgids[name]
        if not _members(pgid, state.starts.get(str(pgid))):
            say(f"  {name} was not running")
            continue
        killed = procs.stop_group(pgid, timeout_s=40.0 if name == "scaler" else 10.0)
        say(f"  stopped {name}" + (f" (had to SIGKILL {_describe(killed)})" if killed else ""))
    for pgid, ticks in worker_groups(Path(state.log_dir)):  # normally stopped by the scaler already
        if _members(pgid, ticks):
            killed = procs.stop_group(pgid, timeout_s=10.0)
            say(f"  stopped worker group {pgid}" + (f" (had to SIGKILL {_describe(killed)})" if killed else ""))
    left = leftovers(state)
    if left:
        say(f"  {len(left)} process(es) of the cluster were still running; killed: {_describe(left)}")
        survivors = procs.kill_processes(left)
        if survivors:
            say(f"  warning: still running after SIGKILL: {_describe(survivors)}")
    else:
        say("  checked: no process of the cluster is left")
    ClusterFile.path(home).unlink(missing_ok=True)
    return True


def worker_groups(log_dir: Path) -> list[tuple[int, int | None]]:
    """Every worker group the scaler recorded, with its leader's start time: each start of a
    worker appends a line to its pid file, so a crashed worker's group is still known."""
    return [record for pidfile in sorted(log_dir.glob("*.pid")) for record in procs.read_group_records(pidfile)]


def recorded_sessions(state: ClusterFile) -> list[tuple[int, int | None]]:
    """(session id, its leader's start time) for every service and worker the cluster started."""
    services = [(pgid, state.starts.get(str(pgid))) for pgid in state.pgids.values()]
    return services + worker_groups(Path(state.log_dir))


def leftovers(state: ClusterFile) -> list[proctable.ProcInfo]:
    """The live processes of the cluster: of its recorded sessions (each service and worker leads
    its own, and its descendants stay in it wherever they are re-parented: vLLM's engine too)."""
    table = proctable.snapshot()
    found = {p.pid: p for sid, ticks in recorded_sessions(state) for p in proctable.session_members(table, sid, ticks)}
    return [found[pid] for pid in sorted(found)]


def _members(pgid: int, leader_start_ticks: int | None) -> list[proctable.ProcInfo]:
    """The live processes of a recorded session/group, none if its id now names another one."""
    return proctable.session_members(proctable.snapshot(), pgid, leader_start_ticks)


def _describe(found: list[proctable.ProcInfo]) -> str:
    return ", ".join(f"{p.pid} ({p.comm})" for p in found)


def wait_for_interrupt() -> None:
    stop = {"flag": False}

    def handler(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop["flag"]:
        time.sleep(0.2)
