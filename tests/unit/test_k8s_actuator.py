"""The Kubernetes actuator (services/scaler/k8s_actuator.py) against a fake of the official
client's API objects (AppsV1Api, CoreV1Api) that keeps a Deployment's replica count and pods and
plays its ReplicaSet's part (create pods up to the count; when above it, delete pending pods
first, then ready ones by lowest pod-deletion-cost), with the client's own model classes."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from kubernetes.client import (ApiException, V1Deployment, V1DeploymentSpec, V1LabelSelector, V1ObjectMeta, V1Pod,
                               V1PodList, V1PodStatus, V1Scale, V1ScaleSpec)

from services.scaler.k8s_actuator import DELETION_COST, DRAINED_COST, Kubernetes, members_of
from services.scaler.autoscale.signals import StartKind

NS, DEPLOYMENT = "hfx", "worker"


class FakeCluster:
    """AppsV1Api and CoreV1Api in one object: the calls the actuator makes, each recorded."""

    def __init__(self, running: int) -> None:
        self.replicas = running
        self.pods: dict[str, V1Pod] = {}
        self.calls: list[tuple[str, tuple, dict]] = []
        self.delete_error: ApiException | None = None
        self._n = 0
        for _ in range(running):
            self._create("Running")

    def _create(self, phase: str) -> None:
        self._n += 1
        name = f"worker-5d8f-{self._n:05d}"
        when = datetime.datetime(2026, 12, 3, 12, 0, self._n, tzinfo=datetime.timezone.utc)
        self.pods[name] = V1Pod(metadata=V1ObjectMeta(name=name, namespace=NS, labels={"app": "worker"},
                                                      creation_timestamp=when, annotations={}),
                                status=V1PodStatus(phase=phase))

    def _record(self, name, args, kwargs):
        assert kwargs.get("_request_timeout"), f"{name} without a timeout"
        self.calls.append((name, args, kwargs))

    # AppsV1Api
    def read_namespaced_deployment(self, name, namespace, **kw):
        self._record("read_namespaced_deployment", (name, namespace), kw)
        return V1Deployment(spec=V1DeploymentSpec(selector=V1LabelSelector(match_labels={"app": "worker"}),
                                                  template={}))

    def read_namespaced_deployment_scale(self, name, namespace, **kw):
        self._record("read_namespaced_deployment_scale", (name, namespace), kw)
        return V1Scale(spec=V1ScaleSpec(replicas=self.replicas))

    def patch_namespaced_deployment_scale(self, name, namespace, body, **kw):
        self._record("patch_namespaced_deployment_scale", (name, namespace, body), kw)
        self.replicas = body["spec"]["replicas"]

    # CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector="", **kw):
        self._record("list_namespaced_pod", (namespace, label_selector), kw)
        return V1PodList(items=list(self.pods.values()))

    def patch_namespaced_pod(self, name, namespace, body, **kw):
        self._record("patch_namespaced_pod", (name, namespace, body), kw)
        annotations = self.pods[name].metadata.annotations
        for key, value in body["metadata"]["annotations"].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value

    def delete_namespaced_pod(self, name, namespace, **kw):
        self._record("delete_namespaced_pod", (name, namespace), kw)
        if self.delete_error is not None:
            raise self.delete_error
        del self.pods[name]

    # The ReplicaSet controller, run when the test says so.
    def reconcile(self) -> None:
        while len(self.pods) < self.replicas:
            self._create("Pending")
        while len(self.pods) > self.replicas:
            def rank(pod):
                return (pod.status.phase != "Pending",
                        int(pod.metadata.annotations.get(DELETION_COST, "0")), -pod.metadata.creation_timestamp.timestamp())
            del self.pods[min(self.pods.values(), key=rank).metadata.name]

    def names(self, call: str) -> list[tuple]:
        return [args for name, args, _ in self.calls if name == call]


class FakeStore:
    def __init__(self) -> None:
        self.draining: set[str] = set()

    async def mark_draining(self, instance_id: str, on: bool) -> None:
        (self.draining.add if on else self.draining.discard)(instance_id)


def make(running: int = 1) -> tuple[Kubernetes, FakeCluster, FakeStore]:
    fake, store = FakeCluster(running), FakeStore()
    return Kubernetes(store, NS, DEPLOYMENT, apps=fake, core=fake), fake, store  # type: ignore[arg-type]


def run(coro):
    return asyncio.run(coro)


def test_members_are_the_deployments_live_pods_oldest_first_with_a_placeholder_per_missing_replica():
    actuator, fake, _ = make(running=2)
    members = run(actuator.members())
    assert [m.instance_id for m in members] == ["worker-5d8f-00001", "worker-5d8f-00002"]
    assert fake.names("list_namespaced_pod") == [(NS, "app=worker")]
    assert members[0].started_s == datetime.datetime(2026, 12, 3, 12, 0, 1, tzinfo=datetime.timezone.utc).timestamp()
    # Terminating and finished pods are on their way out; a replica with no pod yet is starting.
    fake.pods["worker-5d8f-00001"].metadata.deletion_timestamp = datetime.datetime.now(datetime.timezone.utc)
    fake.pods["worker-5d8f-00002"].status.phase = "Failed"
    assert [m.instance_id for m in members_of(list(fake.pods.values()), 2, "worker", 5.0)] == \
        ["worker-pending-0", "worker-pending-1"]


def test_a_start_asks_the_scale_subresource_for_one_replica_more_and_counts_as_starting_at_once():
    actuator, fake, _ = make(running=1)
    said = run(actuator.start("cpu", StartKind.COLD))
    assert fake.names("patch_namespaced_deployment_scale") == [(DEPLOYMENT, NS, {"spec": {"replicas": 2}})]
    assert said == "worker replica 2"
    # Before the ReplicaSet made the pod, the start is a placeholder: the next tick sees 2, not 1.
    assert [m.instance_id for m in run(actuator.members())] == ["worker-5d8f-00001", "worker-pending-0"]
    fake.reconcile()
    assert [m.instance_id for m in run(actuator.members())] == ["worker-5d8f-00001", "worker-5d8f-00002"]


def test_drain_marks_redis_and_makes_the_pod_the_first_a_scale_down_takes_and_undrain_clears_both():
    actuator, fake, store = make(running=3)
    run(actuator.drain("worker-5d8f-00002"))
    assert store.draining == {"worker-5d8f-00002"}
    assert fake.pods["worker-5d8f-00002"].metadata.annotations == {DELETION_COST: DRAINED_COST}
    # Anyone's scale-down (a person's kubectl scale too) now takes the drained pod, not the newest.
    fake.replicas = 2
    fake.reconcile()
    assert sorted(fake.pods) == ["worker-5d8f-00001", "worker-5d8f-00003"]
    run(actuator.drain("worker-5d8f-00003"))
    run(actuator.undrain("worker-5d8f-00003"))
    assert store.draining == {"worker-5d8f-00002"} and fake.pods["worker-5d8f-00003"].metadata.annotations == {}


def test_remove_deletes_the_drained_pod_by_name_then_lowers_the_count_and_no_serving_pod_goes():
    actuator, fake, _ = make(running=3)
    run(actuator.remove("worker-5d8f-00001"))   # the OLDEST: a ReplicaSet left alone would pick another
    calls = [name for name, _, _ in fake.calls]
    assert calls.index("delete_namespaced_pod") < calls.index("patch_namespaced_deployment_scale")
    assert fake.names("delete_namespaced_pod") == [("worker-5d8f-00001", NS)]
    assert fake.replicas == 2
    fake.reconcile()   # the replacement for the deleted pod is pending: the decrement takes it
    assert sorted(fake.pods) == ["worker-5d8f-00002", "worker-5d8f-00003"]
    assert all(p.status.phase == "Running" for p in fake.pods.values())


def test_a_pod_already_gone_still_lowers_the_count_and_another_error_changes_nothing():
    actuator, fake, _ = make(running=2)
    fake.delete_error = ApiException(status=404, reason="Not Found")
    run(actuator.remove("worker-5d8f-00009"))
    assert fake.replicas == 1
    actuator, fake, _ = make(running=2)
    fake.delete_error = ApiException(status=403, reason="Forbidden")
    with pytest.raises(ApiException):
        run(actuator.remove("worker-5d8f-00001"))
    assert fake.replicas == 2 and not fake.names("patch_namespaced_deployment_scale")


def test_a_deployment_without_match_labels_is_a_clear_error():
    actuator, fake, _ = make(running=1)
    fake.read_namespaced_deployment = lambda name, namespace, **kw: V1Deployment(   # type: ignore[method-assign]
        spec=V1DeploymentSpec(selector=V1LabelSelector(match_expressions=[]), template={}))
    with pytest.raises(ValueError, match="without matchLabels"):
        run(actuator.members())
