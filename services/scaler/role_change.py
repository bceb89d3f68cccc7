"""Scaler.SetRole (issue 11): checks a role change, has the worker make it (Worker.SetRole), then
re-links the instance before it takes split traffic in its new role. Bad input is refused here
with the same rule the worker applies (serving_gap, via role_change_gap), before any call."""

from __future__ import annotations

import logging
import time

import grpc

from services.common import convert, grpcutil, store, tracing
from services.common.domain import ROLE_NAMES, ClusterSnapshot
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.pb.hfx.v1 import scaler_pb2, worker_pb2, worker_pb2_grpc
from services.scaler.linking import Linker
from services.scheduler.policy.base import PolicyConfig, role_change_gap

log = logging.getLogger("hfx.scaler")
_tracer = tracing.tracer("hfx.scaler")
SET_ROLE_TIMEOUT_S = 5.0
_PASS_THROUGH = {grpc.StatusCode.INVALID_ARGUMENT: lambda m: InvalidArgument("role", m),
                 grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition}


class RoleChanges:
    def __init__(self, cluster: store.ClusterStore, linker: Linker | None, pd_local_prefill: bool = True) -> None:
        self.store = cluster
        self.linker = linker
        self.policy_config = PolicyConfig(pd_local_prefill=pd_local_prefill)
        self._stubs = grpcutil.StubCache(worker_pb2_grpc.WorkerStub)

    async def set_role(self, request: scaler_pb2.ScalerSetRoleRequest) -> scaler_pb2.ScalerSetRoleResponse:
        if not request.instance_id:
            raise InvalidArgument("instance_id", "must not be empty")
        role = convert.role_asked(request.role)
        if role is None:
            raise InvalidArgument("role", f"unknown role {request.role} (one of {ROLE_NAMES})")
        registry = await self.store.instances()
        target = next((i for i in registry if i.instance_id == request.instance_id), None)
        if target is None:
            known = ", ".join(i.instance_id for i in registry) or "none"
            raise InvalidArgument("instance_id", f"unknown instance {request.instance_id!r} (registered: {known})")
        gap = role_change_gap(ClusterSnapshot(convert.registry_views(registry)), target.instance_id, role,
                              self.policy_config)
        if gap:
            raise InvalidArgument("role", gap)
        reason = request.reason or "operator request"
        with _tracer.start_as_current_span(tracing.SPAN_SCALER_SET_ROLE) as span:
            span.set_attribute(tracing.ATTR_INSTANCE, target.instance_id)
            span.set_attribute(tracing.ATTR_REASON, reason)
            span.set_attribute("hfx.role", role.value)
            started = time.perf_counter()
            try:
                reply = await self._stubs[target.address].SetRole(
                    worker_pb2.SetRoleRequest(role=convert.role_to_pb(role), reason=reason),
                    timeout=SET_ROLE_TIMEOUT_S, metadata=grpcutil.outgoing_metadata())
            except grpc.aio.AioRpcError as err:
                wrap = _PASS_THROUGH.get(err.code())
                if wrap is not None:
                    raise wrap(err.details()) from None
                raise Unavailable(f"instance {target.instance_id} did not change role: {err.details()}") from None
            role_s = time.perf_counter() - started
            if self.linker is not None:
                await self.linker.step(await self.store.instances())
            link_s = time.perf_counter() - started - role_s
            links = sum(1 for pair in await self.store.links() if target.instance_id in pair)
            span.set_attribute("hfx.role.changed", reply.changed)
            span.set_attribute("hfx.role.links", links)
        log.info("role of %s: %s -> %s (%s): worker %.0f ms, links %.0f ms, %d link(s), %d leg(s) finishing",
                 target.instance_id, convert.role_from_pb(reply.previous).value, role.value, reason,
                 role_s * 1000, link_s * 1000, links, reply.inflight)
        return scaler_pb2.ScalerSetRoleResponse(previous=reply.previous, changed=reply.changed, inflight=reply.inflight,
                                                links=links, role_s=role_s, link_s=link_s)
