#!/usr/bin/env python3
"""A grpc.health.v1 probe for container healthchecks: exit 0 iff the server answers SERVING.

  hfx-health ADDRESS [SERVICE]    ADDRESS is HOST:PORT, or PORT alone: then 127.0.0.1:PORT and
                                  this host's own address are tried in turn (a worker bound to
                                  its container address does not listen on loopback).

Every HFX service serves grpc.health.v1 and sets the overall service ("") to SERVING once
ready (a worker: once its engine is loaded and it is registered). Kubernetes does not need this
script: it probes gRPC health natively (`readinessProbe.grpc`).
"""

from __future__ import annotations

import socket
import sys


def candidates(target: str) -> list[str]:
    if ":" in target:
        return [target]
    out = [f"127.0.0.1:{target}"]
    try:
        own = socket.gethostbyname(socket.gethostname())
    except OSError:
        return out
    if own not in ("127.0.0.1", "127.0.1.1"):
        out.append(f"{own}:{target}")
    return out


def check(address: str, service: str = "", timeout_s: float = 3.0) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            print(f"{address}: {err.code().name}", file=sys.stderr)
            return False
    ok = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not ok:
        print(f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr)
    return ok


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    service = argv[1] if len(argv) > 1 else ""
    return 0 if any(check(a, service) for a in candidates(argv[0])) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
