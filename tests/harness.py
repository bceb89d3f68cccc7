"""One harness for tests that need real processes: a local cluster (Redis, router, scheduler,
scaler, workers) started through the same code as `hfx up`, and an in-process OTLP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from services.common import grpcutil, procs, store
from services.common.keys import Keys
from services.common.model import ensure_default_model
from services.local import cluster
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.local.statefile import ClusterFile

REPO = Path(__file__).resolve().parents[1]


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace collector that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(self, request, context):
        with self._lock:
            for rs in request.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {a.key: _value(a.value) for a in span.attributes}
                        self.spans.append({"service": service, "name": span.name, "trace_id": span.trace_id.hex(),
                                           "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                                           "attributes": attrs, "events": [e.name for e in span.events]})
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.spans)

    def __enter__(self) -> "OtlpReceiver":
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None)


def _value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@dataclass
class RunningCluster:
    state: ClusterFile
    home: Path
    model: str
    log_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_dir = Path(self.state.log_dir)

    def channel(self) -> grpc.Channel:
        return grpcutil.sync_channel(self.state.router)

    def worker_pid(self, instance_id: str) -> int:
        """The pid (and process group id) of the worker's latest start."""
        return procs.read_group_records(self.log_dir / f"{instance_id}.pid")[-1][0]

    def logs(self) -> str:
        return "\n".join(f"==> {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))


@contextlib.contextmanager
def local_cluster(home: Path, workers: int = 1, tracing: str = "off", policy: str = "least-load",
                  worker_args: tuple[str, ...] = (), engine: str = "vllm", classes: str = "",
                  http: bool = False, router_port: int = 0, http_port: int = 0,
                  scaler_args: tuple[str, ...] = (), prefill: int = 0, decode: int = 0,
                  api_keys: tuple = (), model: str = "", sim_profile: str = "cpu-tiny",
                  policy_config: str = "", timeout_s: float = 240,
                  scheduler_args: tuple[str, ...] = ()) -> Iterator[RunningCluster]:
    """engine "sim" starts SIMULATED workers (no vLLM); classes is a router task-class YAML;
    http also serves the router's OpenAI-compatible API (state.http); router_port and http_port
    fix the ports (0: a free one); scaler_args are the scaler's autoscaling flags; prefill and
    decode start P/D workers beside the `workers` colocated ones; model: a checkpoint dir (default:
    the built-in tiny model); sim_profile is engine sim's profile (workers and scheduler);
    policy_config a scheduler --policy-config file; timeout_s bounds the start (two vLLM workers
    profiling at once on a busy machine may need more than the default); scheduler_args are more
    `hfx scheduler` flags."""
    model = model or str(ensure_default_model())
    opts = cluster.UpOptions(home=home, model=model, workers=workers, router_port=router_port or procs.free_port(),
                             redis_url=None, policy=policy, engine=engine, tracing=tracing, timeout_s=timeout_s,
                             worker_args=worker_args, classes=classes,
                             http_port=(http_port or procs.free_port()) if http else 0, scaler_args=scaler_args,
                             prefill=prefill, decode=decode, api_keys=api_keys, sim_profile=sim_profile,
                             policy_config=policy_config, scheduler_args=scheduler_args)
    state = cluster.up(opts)
    running = RunningCluster(state, home, model)
    try:
        yield running
    except BaseException:
        print(running.logs(), file=sys.stderr)  # the services' side of a failure
        raise
    finally:
        cluster.down(home, quiet=True)


@dataclass
class ExtraRouter:
    proc: subprocess.Popen
    port: int
    http_port: int
    log: Path


@contextlib.contextmanager
def extra_router(mesh: RunningCluster, *flags: str, ready=None) -> Iterator[ExtraRouter]:
    """A second `hfx router` beside a running cluster, with its own flags; `ready(router)` says
    when it serves (default: its gRPC health)."""
    port, http_port = procs.free_port(), procs.free_port()
    log = mesh.log_dir / f"router-{port}.log"
    proc = procs.spawn(procs.hfx_command("router", "--port", str(port), "--http-port", str(http_port),
                                         "--scheduler", mesh.state.scheduler, "--model", mesh.model, *flags), log)
    router = ExtraRouter(proc, port, http_port, log)
    try:
        if ready is None:
            cluster.wait_serving(f"127.0.0.1:{port}", 60, proc, "extra router", log, "hfx.v1.Router")
        else:
            assert wait_until(lambda: proc.poll() is not None or ready(router), 60) and proc.poll() is None, \
                log.read_text()
        yield router
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def vllm_reference(model: str, prompt_ids: list[int], max_tokens: int) -> list[int]:
    """Greedy token ids from vLLM's own offline engine, in a separate process."""
    code = (REPO / "tests" / "vllm_reference.py")
    out = subprocess.run([sys.executable, str(code), model, ",".join(map(str, prompt_ids)), str(max_tokens)],
                         capture_output=True, text=True, timeout=300)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return [int(x) for x in line[7:].split(",") if x]
    raise RuntimeError(f"vLLM reference run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1):
    """Polls a condition of the system under test (not a retry of the test itself)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    return predicate()


@dataclass
class Streamed:
    started_s: float
    tokens: list[int]
    final: router_pb2.FinalResult | None
    error: str


def _stream(router: str, stop: threading.Event, results: list[Streamed],
            make_request: Callable[[int], router_pb2.GenerateRequest]) -> None:
    with grpc.insecure_channel(router) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        i = 0
        while not stop.is_set():
            row = Streamed(time.time(), [], None, "")
            try:
                for msg in stub.Generate(make_request(i), timeout=120):
                    if msg.HasField("delta"):
                        row.tokens += msg.delta.token_ids
                    else:
                        row.final = msg.final
            except grpc.RpcError as err:
                row.error = f"{err.code().name}: {err.details()}"
            results.append(row)
            i += 1


def actions_under_load(router: str, make_request: Callable[[int, int], router_pb2.GenerateRequest], clients: int,
                       actions: Sequence[Callable[[], object]], pause_s: float) -> tuple[list[Streamed], list[float]]:
    """`clients` streams through the router (client c's i-th request is make_request(c, i)), one
    request after another, while each action runs in turn, `pause_s` apart (and before the first
    and after the last). Returns every request's outcome and when each action started."""
    stop, results, started = threading.Event(), [], []
    threads = [threading.Thread(target=_stream, args=(router, stop, results, lambda i, c=c: make_request(c, i)))
               for c in range(clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(pause_s)
        for action in actions:
            started.append(time.time())
            action()
            time.sleep(pause_s)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    return results, started


def incomplete(results: Sequence[Streamed], max_tokens: int, reference: Sequence[int] | None = None) -> list:
    """The requests that failed, ended without a final, streamed another count of tokens than
    `max_tokens`, or (given a reference) other tokens: (error, tokens) each."""
    return [(r.error, list(r.tokens)) for r in results
            if r.error or r.final is None or len(r.tokens) != max_tokens
            or (reference is not None and list(r.tokens) != list(reference))]


def registry(redis_url: str, prefix: str = "hfx") -> dict[str, common_pb2.Instance]:
    async def read():
        return {i.instance_id: i for i in await store.ClusterStore(store.connect(redis_url), Keys(prefix)).instances()}
    return asyncio.run(read())


def links_of(redis_url: str, prefix: str = "hfx") -> set[tuple[str, str]]:
    async def read():
        return set(await store.ClusterStore(store.connect(redis_url), Keys(prefix)).links())
    return asyncio.run(read())
