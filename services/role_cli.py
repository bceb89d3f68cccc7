"""`hfx role INSTANCE ROLE [--reason ...]`: change a worker's role at run time (issue 11), through
the scaler (Scaler.SetRole: the change, then the instance's P-D links)."""

from __future__ import annotations

import argparse
import sys

import grpc

from services import argtypes
from services.common import convert, grpcutil
from services.common.domain import Role
from services.common.pb.hfx.v1 import scaler_pb2, scaler_pb2_grpc
from services.local.statefile import ClusterFile

TIMEOUT_S = 30.0   # the worker's change plus warm-up transfers over its new links


def add_parser(sub) -> None:
    p = sub.add_parser("role", help="change an instance's role (colocated, prefill, decode) without restarting it")
    p.add_argument("instance_id", help="the instance (see `hfx status`)")
    p.add_argument("role", help="colocated, prefill or decode")
    p.add_argument("--reason", default="operator request", help="recorded in Redis, the log and a span "
                   "(default: %(default)r)")
    p.add_argument("--scaler", type=argtypes.address, help="scaler HOST:PORT (default: the local cluster's)")
    p.set_defaults(func=cmd_role)


def cmd_role(args: argparse.Namespace) -> int:
    try:
        role = Role(args.role)
    except ValueError:
        print(f"error: role: unknown role {args.role!r} (one of {', '.join(r.value for r in Role)})", file=sys.stderr)
        return 2
    address = args.scaler
    if not address:
        state = ClusterFile.load(args.home)
        if state is None or not state.scaler:
            print("error: no local cluster found (start one with `hfx up`, or pass --scaler)", file=sys.stderr)
            return 1
        address = state.scaler
    stub = scaler_pb2_grpc.ScalerStub(grpcutil.sync_channel(address))
    try:
        reply = stub.SetRole(scaler_pb2.ScalerSetRoleRequest(instance_id=args.instance_id, role=convert.role_to_pb(role),
                                                             reason=args.reason), timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 2 if err.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
    previous = convert.role_from_pb(reply.previous).value
    if not reply.changed:
        print(f"{args.instance_id} already is {role.value}; nothing changed")
        return 0
    print(f"{args.instance_id}: {previous} -> {role.value} ({args.reason}); registry updated in "
          f"{reply.role_s * 1000:.0f} ms, {reply.links} P-D link(s) after {reply.link_s * 1000:.0f} ms of linking; "
          f"{reply.inflight} request leg(s) finish there under their old role")
    return 0
