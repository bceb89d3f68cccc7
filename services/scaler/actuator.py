"""Actuators: how the autoscaler's decisions become instances. One Protocol, one class per way.

- `LocalProcesses`: worker processes on this machine, through the scaler's slot management
  (what `hfx up` uses). Draining is a mark in Redis that the scheduler reads (no new placements);
  removal retires the slot, and the worker, already empty, stops on SIGTERM.
- `Kubernetes`: declared, not built yet: constructing it says so.
"""

from __future__ import annotations

import time
from typing import Protocol

from services.common.store import ClusterStore
from services.scaler.autoscale.signals import StartKind


class Actuator(Protocol):
    kind: str

    async def start(self, device: str, start_kind: StartKind) -> str:
        """Launch one instance; returns its id (it is STARTING until it registers)."""

    async def drain(self, instance_id: str) -> None:
        """No new placements there from now on; in-flight requests continue."""

    async def undrain(self, instance_id: str) -> None:
        """Back into service."""

    async def remove(self, instance_id: str) -> None:
        """Stop an instance the autoscaler found drained (nothing in flight)."""


class LocalProcesses:
    kind = "local"

    def __init__(self, servicer, cluster: ClusterStore) -> None:
        self.servicer = servicer          # the ScalerServicer owning the worker processes
        self.store = cluster

    async def start(self, device: str, start_kind: StartKind) -> str:
        # STANDBY: the slot takes a ready engine from the standby pool; otherwise a new process.
        return self.servicer.add_slot(time.time(), take_standby=start_kind is StartKind.STANDBY)

    async def drain(self, instance_id: str) -> None:
        await self.store.mark_draining(instance_id, True)

    async def undrain(self, instance_id: str) -> None:
        await self.store.mark_draining(instance_id, False)

    async def remove(self, instance_id: str) -> None:
        self.servicer.retire_slot(instance_id, time.time())


class Kubernetes:
    """Would scale the workers' Deployment (or own worker pods as a controller) through the
    official Python client. Not implemented in this build."""

    kind = "kubernetes"

    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError("the Kubernetes actuator is not implemented in this build (issue 13); "
                                  "use the local actuator (--actuator local)")


ACTUATORS = {"local": LocalProcesses, "kubernetes": Kubernetes}
