"""The live adapter of the role policy (issue 11, opt-in with `--role-changes`): every tick it
hands RolePolicy the scheduler's own snapshot and queue, and carries a flip out through the
scaler's SetRole (which has the worker change role and re-links it). The decision and its reason
go to the log and the `scheduler.role_change` span; the change itself to the scaler's and the
worker's spans and the registry entry."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import grpc

from services.common import convert, grpcutil, metrics, tracing
from services.common.domain import ClusterSnapshot, RequestSpec
from services.common.pb.hfx.v1 import scaler_pb2, scaler_pb2_grpc
from services.scheduler.roles import RolePolicy

log = logging.getLogger("hfx.scheduler")
_tracer = tracing.tracer("hfx.scheduler")
SET_ROLE_TIMEOUT_S = 30.0   # the worker's change plus a warm-up transfer per new link


async def run_role_loop(policy: RolePolicy, scaler_address: str,
                        view: Callable[[], tuple[ClusterSnapshot, list[RequestSpec], list[RequestSpec]]]) -> None:
    """`view`: the snapshot, the queue, and the requests rejected for their SLO since the last call."""
    stub = scaler_pb2_grpc.ScalerStub(grpcutil.aio_channel(scaler_address))
    held_by = ""
    while True:
        await asyncio.sleep(policy.config.tick_s)
        cluster, waiting, refused = view()
        decision = policy.on_tick(cluster, waiting, time.time(), refused)
        to_role, from_role = decision.to_role, decision.from_role
        if not decision.flip or to_role is None or from_role is None:
            metrics.ROLE_DECISIONS.labels("none", decision.held_by).inc()
            # Every tick at debug; at info when the rule holding roles back changes, so a run
            # without a flip says why (the numbers change every tick, the rule seldom).
            log.log(logging.INFO if decision.held_by != held_by else logging.DEBUG, "roles: %s", decision.reason)
            held_by = decision.held_by
            continue
        held_by = ""
        metrics.ROLE_DECISIONS.labels(to_role.value, "").inc()
        with _tracer.start_as_current_span("scheduler.role_change") as span:
            span.set_attribute(tracing.ATTR_INSTANCE, decision.instance_id)
            span.set_attribute(tracing.ATTR_REASON, decision.reason)
            span.set_attribute("hfx.role", to_role.value)
            log.info("role change: %s %s -> %s: %s", decision.instance_id, from_role.value,
                     to_role.value, decision.reason)
            try:
                reply = await stub.SetRole(scaler_pb2.ScalerSetRoleRequest(
                    instance_id=decision.instance_id, role=convert.role_to_pb(to_role),
                    reason=decision.reason), timeout=SET_ROLE_TIMEOUT_S, metadata=grpcutil.outgoing_metadata())
                span.set_attribute("hfx.role.links", reply.links)
            except grpc.aio.AioRpcError as err:   # the hold keeps it from being tried again at once
                span.set_attribute("hfx.role.error", f"{err.code().name}: {err.details()}")
                log.warning("role change of %s refused: %s: %s", decision.instance_id, err.code().name, err.details())
