"""`make demo`: start a local cluster, send requests of several task classes and SLOs, print a
per-request table, and tear everything down (also on Ctrl-C or failure)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from services.common import procs
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.local import cluster

# (task class, prompt, max_tokens, ttft_ms SLO or None for the class default, tpot_ms or None)
REQUESTS = [
    ("code", "def fibonacci(n):", 16, None, None),
    ("code", "for i in range(10):", 16, 50.0, 5.0),
    ("chat", "Tell me about the sea and the ships", 32, None, None),
    ("chat", "What is the weather like today in the mountains", 32, 150.0, 20.0),
    ("summarise", "The morning market was busy. " * 40, 24, None, None),
    ("batch", "Write a long story about a river", 64, None, None),
    ("default", "Once upon a time", 24, 1.0, None),  # a deliberately impossible TTFT: shows a miss
    ("batch", "List the planets of the solar system", 48, None, None),
]


def _one(address: str, row) -> dict:
    task_class, prompt, max_tokens, ttft, tpot = row
    req = router_pb2.GenerateRequest(text=prompt, task_class=task_class,
                                     sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    if ttft is not None:
        req.slo.ttft_ms = ttft
    if tpot is not None:
        req.slo.tpot_ms = tpot
    with grpc.insecure_channel(address) as channel:
        try:
            final = [m.final for m in router_pb2_grpc.RouterStub(channel).Generate(req, timeout=120) if m.HasField("final")][0]
        except grpc.RpcError as err:
            return {"class": task_class, "error": f"{err.code().name}: {err.details()}"}
    return {"class": task_class, "final": final}


def _table(address: str, results: list[dict], classes) -> None:
    defaults = {c.name: c for c in classes}
    print(f"\n{'class':<14}{'TTFT SLO':>9}{'TPOT SLO':>9}{'TTFT':>9}{'TPOT':>8}{'tokens':>7}  {'SLO':<7}instance")
    for row, res in zip(REQUESTS, results):
        task_class, _, _, ttft, tpot = row
        slo_ttft = ttft if ttft is not None else defaults[task_class].slo.ttft_ms
        slo_tpot = tpot if tpot is not None else defaults[task_class].slo.tpot_ms
        if "error" in res:
            print(f"{task_class:<14}{slo_ttft:>9.0f}{slo_tpot:>9.0f}  {res['error']}")
            continue
        f = res["final"]
        print(f"{task_class:<14}{slo_ttft:>9.0f}{slo_tpot:>9.1f}{f.ttft_ms:>9.1f}{f.tpot_ms:>8.2f}"
              f"{f.usage.completion_tokens:>7}  {'met' if f.slo_met else 'MISSED':<7}{f.instance_id}")
    met = sum(1 for r in results if "final" in r and r["final"].slo_met)
    print(f"\n{met}/{len(results)} requests met their SLO (times in ms, measured at the router)")


def main(argv: list[str] | None = None) -> int:
    from services.router.config import DEFAULT_CLASSES

    from services import argtypes
    from services.scheduler.policy import policy_names

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=argtypes.positive_int, default=2,
                        help="vLLM workers to start (default %(default)s)")
    parser.add_argument("--policy", default="hfx", choices=policy_names(),
                        help="scheduling policy (default %(default)s)")
    args = parser.parse_args(argv)
    print(f"model: {ensure_default_model()}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="hfx-demo-") as tmp:
        home = Path(tmp)
        opts = cluster.UpOptions(home=home, model=str(ensure_default_model()), workers=args.workers,
                                 router_port=procs.free_port(), redis_url=None, policy=args.policy, engine="vllm",
                                 tracing="off", timeout_s=300)
        started = time.monotonic()
        try:
            state = cluster.up(opts)
            print(f"cluster ready in {time.monotonic() - started:.1f}s; router {state.router}; "
                  f"sending {len(REQUESTS)} requests at once (policy {args.policy})", file=sys.stderr)
            with ThreadPoolExecutor(len(REQUESTS)) as pool:
                results = list(pool.map(lambda r: _one(state.router, r), REQUESTS))
            _table(state.router, results, DEFAULT_CLASSES)
        except (RuntimeError, TimeoutError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        finally:
            cluster.down(home, quiet=True)
            print("cluster stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
