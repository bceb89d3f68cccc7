"""A worker service over a real vLLM engine with KV transfer on, for the P/D tests: no Redis, no
scheduler; prints "READY <grpc address> <kv address>" once it serves. Run as `python -m tests.kv_worker`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading

from services.common import grpcutil, tracing
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, worker_pb2_grpc
from services.worker.engine.vllm_engine import VllmEngine, VllmEngineConfig
from services.worker.server import WorkerServicer


async def main(args) -> None:
    if args.traces:  # the worker's spans (worker.generate, kv.transfer) in a local span store
        tracing.setup(f"hfx-worker-{args.instance_id}", tracing.TracingConfig("file", directory=args.traces))
    engine = VllmEngine(VllmEngineConfig(str(ensure_default_model()), kv_cache_memory_bytes=64 << 20, max_num_seqs=16,
                                         kv_transfer=True, kv_deadline_s=args.deadline_s, kv_lease_s=args.lease_s))
    await engine.start()
    servicer = WorkerServicer(engine, common_pb2.Instance(instance_id=args.instance_id, max_model_len=engine.max_model_len))
    server, _ = grpcutil.make_server([(worker_pb2_grpc.add_WorkerServicer_to_server, servicer)], ["hfx.v1.Worker"])
    port = grpcutil.bind(server, "127.0.0.1", 0)
    await server.start()
    print(f"READY 127.0.0.1:{port} {engine.kv_address}", flush=True)
    threading.Thread(target=answer_stdin, args=(engine, asyncio.get_running_loop()), daemon=True).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)
    await engine.shutdown()
    tracing.shutdown()


def answer_stdin(engine: VllmEngine, loop: asyncio.AbstractEventLoop) -> None:
    """The test's questions on stdin, one a line (a daemon thread: it never holds up the exit):
    "IDLE?" -> "IDLE True" when every KV block of the engine is free (it empties the prefix cache)."""
    for line in sys.stdin:
        if line.strip() == "IDLE?":
            idle = asyncio.run_coroutine_threadsafe(engine.kv_blocks_idle(), loop).result()
            print(f"IDLE {idle}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--instance-id", default="w")
    parser.add_argument("--deadline-s", type=float, default=5.0)
    parser.add_argument("--lease-s", type=float, default=30.0)
    parser.add_argument("--traces", default="", help="span store directory (default: no tracing)")
    asyncio.run(main(parser.parse_args()))
