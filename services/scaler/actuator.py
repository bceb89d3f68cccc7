"""Actuators: how the autoscaler's decisions become instances. One Protocol, one class per way.

- `LocalProcesses`: worker processes on this machine, through the scaler's slot management
  (what `hfx up` uses). Draining is a mark in Redis that the scheduler reads (no new placements);
  removal retires the slot, and the worker, already empty, stops on SIGTERM.
- `Kubernetes` (services/scaler/k8s_actuator.py): the pods of the workers' Deployment, scaled
  through its scale subresource; a drained pod is deleted by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from services.common import convert
from services.common.domain import Role
from services.common.pb.hfx.v1 import scaler_pb2
from services.common.store import ClusterStore
from services.scaler.autoscale.signals import StartKind
from services.scaler.reconcile import pool_of


@dataclass(frozen=True)
class Member:
    """An instance the actuator runs for the autoscaler, starting or ready (not one on its way out)."""
    instance_id: str
    started_s: float            # when it was launched (ready time = registered - this)
    from_standby: bool = False
    adopted: bool = False       # launched by a previous scaler at an unknown time: no ready time
    role: str = "colocated"     # the role it was launched with (a role change since shows in the registry)


class Actuator(Protocol):
    kind: str

    async def members(self) -> list[Member]:
        """The instances it runs now, starting or ready."""

    async def start(self, device: str, start_kind: StartKind, role: str = "colocated") -> str:
        """Launch one instance (P/D: of `role`); returns its id (it is STARTING until it registers)."""

    async def drain(self, instance_id: str) -> None:
        """No new placements there from now on; in-flight requests continue."""

    async def undrain(self, instance_id: str) -> None:
        """Back into service."""

    async def remove(self, instance_id: str) -> None:
        """Stop an instance the autoscaler found drained (nothing in flight)."""


@runtime_checkable
class RoleChanger(Protocol):
    """An actuator that can change a running instance's role (P/D autoscaling's Flip)."""

    async def set_role(self, instance_id: str, role: str, reason: str) -> None:
        """Through Scaler.SetRole's checks (no stage left empty); raises its errors."""


class LocalProcesses:
    kind = "local"

    def __init__(self, servicer, cluster: ClusterStore) -> None:
        self.servicer = servicer          # the ScalerServicer owning the worker processes
        self.store = cluster

    async def members(self) -> list[Member]:
        return [Member(w.instance_id, w.started_s, w.from_standby, w.adopted, pool_of(w.index))
                for w in self.servicer.live_slots()]

    async def start(self, device: str, start_kind: StartKind, role: str = "colocated") -> str:
        # STANDBY: the slot takes a ready engine from the standby pool; otherwise a new process.
        return self.servicer.add_slot(time.time(), take_standby=start_kind is StartKind.STANDBY, role=role)

    async def set_role(self, instance_id: str, role: str, reason: str) -> None:
        await self.servicer.roles.set_role(scaler_pb2.ScalerSetRoleRequest(
            instance_id=instance_id, role=convert.role_to_pb(Role(role)), reason=reason))

    async def drain(self, instance_id: str) -> None:
        await self.store.mark_draining(instance_id, True)

    async def undrain(self, instance_id: str) -> None:
        await self.store.mark_draining(instance_id, False)

    async def remove(self, instance_id: str) -> None:
        self.servicer.retire_slot(instance_id, time.time())
