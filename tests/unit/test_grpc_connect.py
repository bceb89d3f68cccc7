"""A fresh call to a peer that stalls for a moment waits for it instead of failing.

gRPC ends a connection attempt that got no HTTP/2 SETTINGS by its deadline, and every call
without wait_for_ready fails with it (UNAVAILABLE "connection attempt timed out before receiving
SETTINGS frame"). At 100 ms (the mesh's old channel options) a standby just handed out on a busy
2-core CI machine failed a call that way. Here the peer is a real gRPC server in its own process,
stopped with SIGSTOP for a few hundred milliseconds while the call connects.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import grpcutil

SERVER = """
import asyncio, sys
from services.common import grpcutil

async def main():
    server, _ = grpcutil.make_server([], [])
    port = grpcutil.bind(server, "127.0.0.1", 0)
    await server.start()
    print(port, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""
STALL_S = 0.4   # well past the old 100 ms attempt deadline, well within the call's timeout


def test_a_fresh_call_outlasts_a_peer_stalled_before_its_handshake():
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        port = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGSTOP)
        threading.Timer(STALL_S, os.kill, (proc.pid, signal.SIGCONT)).start()
        with grpcutil.sync_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError as err:
        raise AssertionError(f"the call failed instead of waiting for the stalled peer: {err.details()}") from None
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()
