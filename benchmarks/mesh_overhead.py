"""What the mesh adds to time-to-first-token over calling a worker directly.

Starts a local cluster with one vLLM worker (or uses --home's running cluster), then sends
--requests short greedy requests alternately through the router and straight to the worker's
gRPC API, one at a time, with the same token-id prompt. Prints p50/p99 TTFT of both paths and
their difference (router path = validation + Scheduler.Place + the extra hop).

  python benchmarks/mesh_overhead.py --requests 200
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

from services.common import procs
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


def measure(state: ClusterFile, worker_address: str, n: int, max_tokens: int) -> dict:
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    via_router, direct = [], []
    with grpc.insecure_channel(state.router) as rc, grpc.insecure_channel(worker_address) as wc:
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
    import redis

    from services.common.keys import Keys

    keys, client = Keys(state.redis_prefix), redis.Redis.from_url(state.redis_url, socket_timeout=2)
    iid = sorted(i.decode() for i in client.smembers(keys.instances()))[0]
    return common_pb2.Instance.FromString(client.hget(keys.instance(iid), "pb")).address


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=2, help="short requests: TTFT is what is measured")
    parser.add_argument("--home", type=Path, help="use the running cluster recorded here instead of starting one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be >= 1")
    with tempfile.TemporaryDirectory(prefix="hfx-overhead-") as tmp:
        home = args.home or Path(tmp)
        own = args.home is None
        if own:
            cluster.up(cluster.UpOptions(home=home, model=str(ensure_default_model()), workers=1,
                                         router_port=procs.free_port(), redis_url=None, policy="least-load",
                                         engine="vllm", tracing="off", timeout_s=300))
        try:
            state = ClusterFile.load(home)
            if state is None:
                parser.error(f"no cluster recorded under {home}")
            worker_address = _first_worker(state)
            result = measure(state, worker_address, args.requests, args.max_tokens)
        finally:
            if own:
                cluster.down(home, quiet=True)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key in ("router_ttft_ms", "direct_ttft_ms", "overhead_ms"):
            print(f"{key:<16} " + "  ".join(f"{k} {v:7.2f}" for k, v in result[key].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
