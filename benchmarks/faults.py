"""Fault injection under a steady live load: nothing lost, every failure a clear error.

Starts a local cluster (`hfx up`: Redis, scheduler, scaler, router, workers; engine sim by
default, SIMULATED, or vllm) plus a second router on the same scheduler, and keeps --clients
client threads sending requests through both routers (alternately) for the whole run. Meanwhile
it kills, in turn and --gap-s apart:

  1. a worker (SIGKILL; the scaler starts a new one; its requests fail over),
  2. the scheduler (SIGKILL, started again on the same port 2 s later),
  3. the second router (SIGKILL; clients that used it move to the first),
  4. Redis (SIGKILL, started again empty on the same port 1 s later).

Each request ends as one of: completed (the whole stream: every token asked for, one final
message), failed with a clear error (a gRPC status with a message: UNAVAILABLE, RESOURCE_EXHAUSTED,
...), wrong (a stream that ended without its tokens or final message, or a status with no message),
or lost (no answer within --request-timeout-s). Goal: 0 lost, 0 wrong. With the sim engine a
failed-over stream's tokens are the simulator's, not a model's: only their count is checked.

  python benchmarks/faults.py --gap-s 8 --json benchmarks/faults.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

from services.common import grpcutil, internal_auth, procs, redis_server
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.local import cluster
from services.local.statefile import ClusterFile

MAX_TOKENS = 48


class Load:
    """Client threads sending requests to the live routers until stopped; outcomes by phase."""

    def __init__(self, routers: list[str], clients: int, timeout_s: float, seed: int) -> None:
        self.routers = list(routers)
        self.timeout_s = timeout_s
        self.phase = "steady"
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.examples: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(clients)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def drop_router(self, address: str) -> None:
        with self._lock:
            if address in self.routers and len(self.routers) > 1:
                self.routers.remove(address)

    def _run(self, k: int) -> None:
        n = 0
        while not self._stop.is_set():
            with self._lock:
                router = self.routers[(k + n) % len(self.routers)]
                prompt = [self._rng.randrange(5, 1000) for _ in range(self._rng.randrange(4, 64))]
            phase = self.phase
            outcome, detail = self._one(router, prompt)
            with self._lock:
                self.counts[phase][outcome] += 1
                if outcome != "completed":
                    self.examples.setdefault(f"{phase}/{outcome}", detail)
            n += 1

    def _one(self, router: str, prompt: list[int]) -> tuple[str, str]:
        request = router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=prompt),
                                             sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
        tokens, final = 0, None
        try:
            with grpcutil.sync_channel(router) as channel:
                for msg in router_pb2_grpc.RouterStub(channel).Generate(request, timeout=self.timeout_s):
                    if msg.HasField("delta"):
                        tokens += len(msg.delta.token_ids)
                    else:
                        final = msg.final
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "lost", f"no answer in {self.timeout_s:.0f}s after {tokens} tokens"
            if err.details():
                return "failed_clear", f"{err.code().name}: {err.details()}"
            return "wrong", f"{err.code().name} with no message after {tokens} tokens"
        if final is None or tokens != MAX_TOKENS or final.usage.completion_tokens != MAX_TOKENS:
            return "wrong", f"{tokens} tokens, final {final is not None}"
        return "completed", ""


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="sim", choices=["sim", "vllm"], help="worker engine (default %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="workers (default %(default)s)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent client threads (default %(default)s)")
    parser.add_argument("--gap-s", type=float, default=8.0, help="seconds between faults (default %(default)s)")
    parser.add_argument("--request-timeout-s", type=float, default=60.0,
                        help="a request with no answer this long counts as lost (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the counts here")
    parser.add_argument("--keep-logs", type=Path, help="copy the services' logs here at the end")
    args = parser.parse_args(argv)
    if args.workers < 2 or args.clients < 1 or args.gap_s <= 0:
        parser.error("--workers must be >= 2, --clients >= 1, --gap-s > 0")

    with tempfile.TemporaryDirectory(prefix="hfx-faults-") as tmp:
        home = Path(tmp)
        state = cluster.up(cluster.UpOptions(
            home=home, model=str(ensure_default_model()), workers=args.workers, router_port=procs.free_port(),
            redis_url=None, policy="hfx", engine=args.engine, tracing="off", timeout_s=600))
        log_dir = Path(state.log_dir)
        extra: list = []
        try:
            second = f"127.0.0.1:{procs.free_port()}"
            router2 = procs.spawn(procs.hfx_command("router", "--port", second.split(":")[1], "--scheduler",
                                                    state.scheduler, "--model", state.model, "--http-port", "0"),
                                  log_dir / "router-2.log", die_with_parent=True)
            extra.append(router2)
            cluster.wait_serving(second, 60, router2, "second router", log_dir / "router-2.log", "hfx.v1.Router")
            faults = _faults(state, log_dir, second, extra)
            with Load([state.router, second], args.clients, args.request_timeout_s, args.seed) as load:
                time.sleep(args.gap_s)
                for name, act in faults:
                    load.phase = name
                    print(f"[{time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
                    act(load)
                    time.sleep(args.gap_s)
                load.phase = "after"
                time.sleep(args.gap_s)
            result = {"engine": args.engine, "workers": args.workers, "clients": args.clients, "gap_s": args.gap_s,
                      "max_tokens": MAX_TOKENS, "phases": {p: dict(c) for p, c in load.counts.items()},
                      "examples": load.examples}
        finally:
            for proc in extra:
                _kill(proc.pid)
            cluster.down(home, quiet=True)
            if args.keep_logs:
                shutil.copytree(log_dir, args.keep_logs, dirs_exist_ok=True)
    totals = collections.Counter()
    print(f"{'phase':<22}{'completed':>10}{'failed_clear':>14}{'wrong':>7}{'lost':>6}")
    for phase, counts in result["phases"].items():
        totals.update(counts)
        print(f"{phase:<22}" + "".join(f"{counts.get(k, 0):>{w}}" for k, w in
                                       (("completed", 10), ("failed_clear", 14), ("wrong", 7), ("lost", 6))))
    print(f"{'total':<22}" + "".join(f"{totals.get(k, 0):>{w}}" for k, w in
                                      (("completed", 10), ("failed_clear", 14), ("wrong", 7), ("lost", 6))))
    for key, detail in sorted(result["examples"].items()):
        print(f"  e.g. {key}: {detail[:160]}")
    result["totals"] = dict(totals)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if not totals.get("lost") and not totals.get("wrong") else 1


def _faults(state: ClusterFile, log_dir: Path, second_router: str, extra: list):
    """(name, action) pairs, in the order they are injected."""

    def kill_worker(load: Load) -> None:
        pid = procs.read_group_records(log_dir / "hfx-w0.pid")[-1][0]
        _kill(pid)

    def restart_scheduler(load: Load) -> None:
        _kill(state.pgids["scheduler"])
        time.sleep(2.0)
        port = state.scheduler.split(":")[1]
        proc = procs.spawn(procs.hfx_command("scheduler", "--port", port, "--policy", "hfx", "--redis-url",
                                             state.redis_url, "--tracing", "off"),
                           log_dir / "scheduler-2.log", die_with_parent=True)
        extra.append(proc)

    def kill_second_router(load: Load) -> None:
        load.drop_router(second_router)
        _kill(extra[0].pid)

    def restart_redis(load: Load) -> None:
        _kill(state.pgids["redis"])
        time.sleep(1.0)
        port = int(state.redis_url.rsplit(":", 1)[1].split("/")[0])
        extra.append(redis_server.start(port, log_dir, log_dir / "redis-2.log", die_with_parent=True,
                                        password=internal_auth.redis_password()))

    return [("kill worker hfx-w0", kill_worker), ("restart scheduler", restart_scheduler),
            ("kill second router", kill_second_router), ("restart redis empty", restart_redis)]


if __name__ == "__main__":
    sys.exit(main())
