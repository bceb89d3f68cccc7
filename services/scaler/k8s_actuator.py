"""The Kubernetes actuator: the autoscaler's instances are the pods of the workers' Deployment
(deploy/k8s/worker.yaml; each registers in Redis under its pod name), through the official
Python client (`kubernetes`).

- start: one replica more, through the Deployment's scale subresource (AppsV1
  read/patch_namespaced_deployment_scale). The pod's name comes from its ReplicaSet, so until the
  pod exists the start counts as a placeholder member (`{deployment}-pending-N`, starting), and a
  second tick cannot buy the same capacity again.
- drain: the scheduler's draining mark in Redis (no new placements there), and the pod gets the
  lowest `controller.kubernetes.io/pod-deletion-cost`, so any scale-down of the Deployment, ours or
  a person's `kubectl scale`, takes drained pods first. undrain clears both.
- remove (the autoscaler asks only once the drained pod has nothing in flight): the pod is deleted
  BY NAME (it gets SIGTERM, drains what is left and deregisters), then the Deployment gets one
  replica less. The ReplicaSet answers the deletion with a replacement pod, which is pending, and
  the decrement then removes a pending pod (a ReplicaSet deletes unscheduled, pending and
  not-ready pods before running ones): never a pod that serves.

Every API call runs in a thread with a timeout (`_request_timeout`). The pure part is small:
which pods are members (`members_of`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from services.common.store import ClusterStore
from services.scaler.actuator import Member
from services.scaler.autoscale.signals import StartKind

log = logging.getLogger("hfx.scaler.k8s")

CALL_TIMEOUT_S = 5.0
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
DRAINED_COST = str(-(2 ** 31))   # the lowest an int32 annotation can say


def members_of(pods: list[Any], replicas: int, deployment: str, scaled_at_s: float) -> list[Member]:
    """The Deployment's pods that run or start (not terminating, not finished), plus one
    placeholder for every replica asked for whose pod does not exist yet."""
    out = [Member(p.metadata.name, p.metadata.creation_timestamp.timestamp()) for p in pods
           if p.metadata.deletion_timestamp is None and (p.status is None or p.status.phase not in ("Succeeded", "Failed"))]
    out.sort(key=lambda m: (m.started_s, m.instance_id))
    out += [Member(f"{deployment}-pending-{k}", scaled_at_s) for k in range(max(0, replicas - len(out)))]
    return out


class Kubernetes:
    kind = "kubernetes"

    def __init__(self, cluster: ClusterStore, namespace: str, deployment: str, apps: Any, core: Any,
                 timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.store = cluster
        self.namespace = namespace
        self.deployment = deployment
        self.apps = apps        # kubernetes.client.AppsV1Api
        self.core = core        # kubernetes.client.CoreV1Api
        self.timeout_s = timeout_s
        self._selector: str | None = None
        self._scaled_at_s = time.time()

    @classmethod
    def connect(cls, cluster: ClusterStore, namespace: str, deployment: str) -> "Kubernetes":
        """With the pod's service account inside a cluster, else the local kubeconfig."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(cluster, namespace, deployment, client.AppsV1Api(), client.CoreV1Api())

    async def _call(self, fn, *args, **kwargs):
        call = functools.partial(fn, *args, _request_timeout=self.timeout_s, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def _label_selector(self) -> str:
        if self._selector is None:
            deployment = await self._call(self.apps.read_namespaced_deployment, self.deployment, self.namespace)
            labels = deployment.spec.selector.match_labels or {}
            if not labels:
                raise ValueError(f"deployment {self.namespace}/{self.deployment} selects its pods without "
                                 "matchLabels; the Kubernetes actuator needs them to list its pods")
            self._selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return self._selector

    async def _replicas(self) -> int:
        scale = await self._call(self.apps.read_namespaced_deployment_scale, self.deployment, self.namespace)
        return scale.spec.replicas or 0

    async def _set_replicas(self, replicas: int) -> None:
        await self._call(self.apps.patch_namespaced_deployment_scale, self.deployment, self.namespace,
                         {"spec": {"replicas": replicas}})
        self._scaled_at_s = time.time()

    async def _deletion_cost(self, pod: str, cost: str | None) -> None:
        # None removes the annotation (a strategic merge patch deletes a key set to null).
        await self._call(self.core.patch_namespaced_pod, pod, self.namespace,
                         {"metadata": {"annotations": {DELETION_COST: cost}}})

    async def members(self) -> list[Member]:
        pods = await self._call(self.core.list_namespaced_pod, self.namespace,
                                label_selector=await self._label_selector())
        return members_of(list(pods.items), await self._replicas(), self.deployment, self._scaled_at_s)

    async def start(self, device: str, start_kind: StartKind, role: str = "colocated") -> str:
        if role != "colocated":   # refused at the command line (autoscale_cli.check); here for other callers
            raise ValueError(f"the Kubernetes actuator scales one Deployment of colocated workers, not {role}")
        replicas = await self._replicas()
        await self._set_replicas(replicas + 1)
        return f"{self.deployment} replica {replicas + 1}"   # the pod is named by its ReplicaSet

    async def drain(self, instance_id: str) -> None:
        await self.store.mark_draining(instance_id, True)
        await self._deletion_cost(instance_id, DRAINED_COST)

    async def undrain(self, instance_id: str) -> None:
        await self.store.mark_draining(instance_id, False)
        await self._deletion_cost(instance_id, None)

    async def remove(self, instance_id: str) -> None:
        from kubernetes.client import ApiException

        replicas = await self._replicas()
        try:
            await self._call(self.core.delete_namespaced_pod, instance_id, self.namespace)
        except ApiException as err:
            if err.status != 404:
                raise
            # Gone already (evicted, deleted by hand): its ReplicaSet replaced it, so one replica
            # less is still what the autoscaler decided.
            log.warning("pod %s/%s was already gone at its removal", self.namespace, instance_id)
        await self._set_replicas(max(0, replicas - 1))
