"""A worker's role as control-plane state (issue 11): what the scheduler places here, changed at
run time without restarting the engine.

The engine serves any leg (vLLM started with --kv-transfer runs HFX's KV connector as kv_both:
it stages KV for a decode worker and pulls it from a prefill worker alike), so a role is only
what the registry says. A change writes the registry entry at once with the new role and its
reason (the scheduler reads it on its next refresh and stops placing legs of the old role);
legs already running here, a decode in progress included, finish here, counted by the
scheduler under the role they were placed with.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.common import convert, metrics, store, tracing
from services.common.domain import ROLE_NAMES, ClusterSnapshot, Role
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.pb.hfx.v1 import common_pb2, worker_pb2
from services.scheduler.policy.base import PolicyConfig, role_change_gap
from services.worker.engine.base import Engine, TransfersKv

log = logging.getLogger("hfx.worker")
_tracer = tracing.tracer("hfx.worker")


class RoleChanger:
    """Checks and applies Worker.SetRole for one worker. `cluster` is set once it registered."""

    def __init__(self, info: common_pb2.Instance, engine: Engine, heartbeat_ttl_s: float,
                 pd_local_prefill: bool = True) -> None:
        self.info = info
        self.engine = engine
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.policy_config = PolicyConfig(pd_local_prefill=pd_local_prefill)
        self.cluster: store.ClusterStore | None = None
        self._lock = asyncio.Lock()   # one change at a time: each checks the registry the last one wrote

    def wanted(self, request: worker_pb2.SetRoleRequest) -> Role:
        role = convert.role_asked(request.role)
        if role is None:
            raise InvalidArgument("role", f"unknown role {request.role} (one of {ROLE_NAMES})")
        if role is not Role.COLOCATED and not (isinstance(self.engine, TransfersKv) and self.engine.kv_address):
            raise FailedPrecondition(f"instance {self.info.instance_id} cannot take role {role.value}: its engine "
                                     "does not transfer KV (start it with --kv-transfer)")
        return role

    async def change(self, request: worker_pb2.SetRoleRequest, inflight: int, parent=None) -> worker_pb2.SetRoleResponse:
        role = self.wanted(request)
        previous = convert.role_from_pb(self.info.role)
        reply = worker_pb2.SetRoleResponse(previous=self.info.role, inflight=inflight)
        if role is previous:
            return reply
        if self.cluster is None:
            raise FailedPrecondition(f"instance {self.info.instance_id} is not registered yet")
        async with self._lock:
            registry = await self.cluster.instances()
            gap = role_change_gap(ClusterSnapshot(convert.registry_views(registry)), self.info.instance_id,
                                  role, self.policy_config)
            if gap:
                raise InvalidArgument("role", gap)
            reason = request.reason or "no reason given"
            with _tracer.start_as_current_span(tracing.SPAN_SET_ROLE, context=parent) as span:
                now = time.time()
                self.info.role = convert.role_to_pb(role)
                self.info.role_reason = reason
                self.info.role_changed_unix_s = now
                await self.cluster.register(self.info, self.heartbeat_ttl_s)
                span.set_attribute(tracing.ATTR_INSTANCE, self.info.instance_id)
                span.set_attribute(tracing.ATTR_REASON, reason)
                span.set_attribute("hfx.role.previous", previous.value)
                span.set_attribute("hfx.role", role.value)
                span.set_attribute("hfx.role.inflight", inflight)
                metrics.ROLE_CHANGES.labels(self.info.instance_id, previous.value, role.value).inc()
            log.info("role %s -> %s (%s); %d leg(s) in flight finish here under their old role",
                     previous.value, role.value, reason, inflight)
            reply.changed, reply.changed_unix_s = True, now
            return reply
