"""What the mesh adds to time-to-first-token over calling a worker directly.

Starts a local cluster with one vLLM worker (or uses --home's running cluster), then sends
--requests short greedy requests alternately through the router and straight to the worker's
gRPC API, one at a time, with the same token-id prompt. Prints p50/p99 TTFT of both paths and
their difference (router path = validation + Scheduler.Place + the extra hop).

With --load-rate R, background requests (Poisson, R per second, --load-tokens each) stream
through the router the whole time, so both paths are measured on a loaded engine and router.

  python benchmarks/mesh_overhead.py --requests 200
  python benchmarks/mesh_overhead.py --requests 200 --load-rate 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
from tqdm import tqdm

from services.common import grpcutil, internal_auth, procs, store
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc
from services.local import cluster
from services.local.statefile import ClusterFile

PROMPT = [1, 43, 343, 1515, 1196, 15, 262, 1294]


def _ttft_ms(start_call, has_tokens) -> float:
    """Client-side time from the call to the first message carrying tokens; drains the stream.

    Takes a thunk: a gRPC stream starts when it is created, so the clock must start first.
    """
    start = time.perf_counter()
    first = None
    for msg in start_call():
        if first is None and has_tokens(msg):
            first = time.perf_counter()
    return (first - start) * 1000


def _router_tokens(msg) -> bool:
    return msg.HasField("delta") and len(msg.delta.token_ids) > 0


def _worker_tokens(msg) -> bool:
    return len(msg.token_ids) > 0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class BackgroundLoad:
    """Poisson arrivals through the router, each stream drained by its own thread, until stopped."""

    def __init__(self, router: str, rate_rps: float, tokens: int, seed: int = 7) -> None:
        import random
        import threading

        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._router, self._rate, self._tokens = router, rate_rps, tokens
        self.sent = self.failed = 0
        self._threads: list = []
        self._driver = threading.Thread(target=self._drive, daemon=True)

    def __enter__(self) -> "BackgroundLoad":
        if self._rate > 0:
            self._driver.start()
            time.sleep(2.0)  # let the load reach its steady state before measuring
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._rate > 0:
            self._driver.join()
        for t in self._threads:
            t.join(timeout=60)

    def _one(self, stub) -> None:
        sampling = common_pb2.SamplingParams(max_tokens=self._tokens, ignore_eos=True)
        try:
            for _ in stub.Generate(router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=PROMPT * 8),
                                                              sampling=sampling), timeout=60):
                pass
        except grpc.RpcError:
            self.failed += 1

    def _drive(self) -> None:
        import threading

        with grpcutil.sync_channel(self._router) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            while not self._stop.wait(self._rng.expovariate(self._rate)):
                t = threading.Thread(target=self._one, args=(stub,), daemon=True)
                t.start()
                self._threads.append(t)
                self.sent += 1
            for t in self._threads:
                t.join(timeout=60)


def measure(state: ClusterFile, worker_address: str, n: int, max_tokens: int) -> dict:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    via_router, direct = [], []
    with grpcutil.sync_channel(state.router) as rc, grpcutil.sync_channel(worker_address) as wc:
        router, worker = router_pb2_grpc.RouterStub(rc), worker_pb2_grpc.WorkerStub(wc)
        for i in range(3):  # warm both paths (connections, engine caches)
            list(router.Generate(router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=PROMPT), sampling=sampling), timeout=30))
            list(worker.Generate(worker_pb2.WorkerGenerateRequest(request_id=f"warm-{i}", prompt_token_ids=PROMPT, sampling=sampling), timeout=30))
        for i in tqdm(range(n), desc="requests", file=sys.stderr):
            via_router.append(_ttft_ms(lambda: router.Generate(
                router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=PROMPT), sampling=sampling), timeout=30),
                _router_tokens))
            direct.append(_ttft_ms(lambda: worker.Generate(
                worker_pb2.WorkerGenerateRequest(request_id=f"direct-{i}", prompt_token_ids=PROMPT, sampling=sampling), timeout=30),
                _worker_tokens))
    diffs = [r - d for r, d in zip(via_router, direct)]
    return {
        "requests": n, "max_tokens": max_tokens,
        "router_ttft_ms": {"p50": _pct(via_router, 0.5), "p99": _pct(via_router, 0.99), "mean": statistics.fmean(via_router)},
        "direct_ttft_ms": {"p50": _pct(direct, 0.5), "p99": _pct(direct, 0.99), "mean": statistics.fmean(direct)},
        "overhead_ms": {"p50": _pct(via_router, 0.5) - _pct(direct, 0.5), "p99": _pct(via_router, 0.99) - _pct(direct, 0.99),
                        "paired_median": statistics.median(diffs)},
    }


def _first_worker(state: ClusterFile) -> str:

    from services.common.keys import Keys

    keys, client = Keys(state.redis_prefix), store.connect_sync(state.redis_url)
    iid = sorted(i.decode() for i in client.smembers(keys.instances()))[0]
    return common_pb2.Instance.FromString(client.hget(keys.instance(iid), "pb")).address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="probe requests per path (default %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=2,
                        help="tokens per probe: TTFT is what is measured (default %(default)s)")
    parser.add_argument("--load-rate", type=float, default=0.0,
                        help="background requests per second through the router while probing (default 0: none)")
    parser.add_argument("--load-tokens", type=int, default=64, help="tokens per background request (default %(default)s)")
    parser.add_argument("--policy", default="hfx", help="scheduling policy of the cluster started (default %(default)s)")
    parser.add_argument("--tickets", action=argparse.BooleanOptionalAction, default=True,
                        help="the scheduler grants the router tickets (`hfx scheduler --help`) (default on)")
    parser.add_argument("--home", type=Path, help="use the running cluster recorded here instead of starting one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be >= 1")
    if args.max_tokens < 1 or args.load_tokens < 1 or args.load_rate < 0:
        parser.error("--max-tokens and --load-tokens must be >= 1, --load-rate >= 0")
    with tempfile.TemporaryDirectory(prefix="hfx-overhead-") as tmp:
        home = args.home or Path(tmp)
        own = args.home is None
        if not own:
            internal_auth.present_home_secrets(home)   # the worker is internal; Redis has a password
        if own:
            cluster.up(cluster.UpOptions(home=home, model=str(ensure_default_model()), workers=1,
                                         router_port=procs.free_port(), redis_url=None, policy=args.policy,
                                         engine="vllm", tracing="off", timeout_s=300, tickets=args.tickets))
        try:
            state = ClusterFile.load(home)
            if state is None:
                parser.error(f"no cluster recorded under {home}")
            worker_address = _first_worker(state)
            with BackgroundLoad(state.router, args.load_rate, args.load_tokens) as load:
                result = measure(state, worker_address, args.requests, args.max_tokens)
            result["cluster"] = {"policy": args.policy, "tickets": args.tickets} if own else {"home": str(home)}
            result["load"] = {"rate_rps": args.load_rate, "tokens": args.load_tokens, "sent": load.sent,
                              "failed": load.failed}
        finally:
            if own:
                cluster.down(home, quiet=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key in ("router_ttft_ms", "direct_ttft_ms", "overhead_ms"):
            print(f"{key:<16} " + "  ".join(f"{k} {v:7.2f}" for k, v in result[key].items()))
        print("cluster: " + ", ".join(f"{k} {v}" for k, v in result["cluster"].items()))
        load = result["load"]
        if load["rate_rps"]:
            print(f"background load: {load['sent']} requests of {load['tokens']} tokens at {load['rate_rps']:g}/s "
                  f"through the router, {load['failed']} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
