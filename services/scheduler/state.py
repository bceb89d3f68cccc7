"""The scheduler's mutable state and the snapshots policies see. No I/O here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from services.common import convert
from services.common.domain import (
    ClusterSnapshot, InstanceLoad, InstanceView, LatencyModel, RequestSpec, Role, RunningRequest,
)
from services.common.pb.hfx.v1 import common_pb2


@dataclass
class Waiting:
    spec: RequestSpec
    enqueued_s: float
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class ClusterState:
    instances: dict[str, common_pb2.Instance] = field(default_factory=dict)
    loads: dict[str, InstanceLoad] = field(default_factory=dict)
    running: dict[str, dict[str, RunningRequest]] = field(default_factory=dict)  # instance -> id -> req
    models: dict[str, LatencyModel] = field(default_factory=dict)
    # instance -> its engine's step token budget, from the profile it stored (0 / absent: unknown)
    chunk_tokens: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, Waiting] = field(default_factory=dict)  # insertion (arrival) order
    # instance -> when a request failed on it. It takes no new work until it reports load again
    # after that time: a dead worker stays in the registry until its heartbeat TTL runs out.
    quarantined: dict[str, float] = field(default_factory=dict)
    # Instances the scaler is draining (Redis {prefix}:draining): they finish what runs there
    # and get no new placements, whatever their own load reports say.
    draining: set[str] = field(default_factory=set)
    prefill_done: dict[str, float] = field(default_factory=dict)  # instance -> its last prefill leg's end
    # request -> the instances it holds (one, or P and D for a split request until P's leg ends).
    held: dict[str, set[str]] = field(default_factory=dict)
    # P-D links from Redis ({prefix}:links): the pairs a split request may use; None: no link table.
    links: frozenset[tuple[str, str]] | None = None

    def set_instances(self, instances: list[common_pb2.Instance]) -> None:
        self.instances = {i.instance_id: i for i in instances}
        for inst in instances:
            if inst.HasField("load") and inst.load.reported_unix_s > self._reported(inst.instance_id):
                self.set_load(inst.instance_id, convert.load_from_pb(inst.load))
        for gone in set(self.loads) - set(self.instances):
            del self.loads[gone]

    def _reported(self, instance_id: str) -> float:
        load = self.loads.get(instance_id)
        return load.reported_s if load else 0.0

    def set_load(self, instance_id: str, load: InstanceLoad) -> None:
        self.loads[instance_id] = load
        if load.reported_s > self.quarantined.get(instance_id, float("inf")):
            del self.quarantined[instance_id]

    def quarantine(self, instance_id: str, now_s: float) -> None:
        self.quarantined[instance_id] = now_s
        for rid in self.running.pop(instance_id, {}):  # failed there, or will be reported
            self._release(rid, instance_id)

    def place(self, instance_id: str, spec: RequestSpec, now_s: float, role: Role = Role.COLOCATED) -> None:
        """One leg of a placement (Decision.stages()): counted in that instance's running set."""
        self.running.setdefault(instance_id, {})[spec.request_id] = RunningRequest(spec, now_s, role)
        self.held.setdefault(spec.request_id, set()).add(instance_id)

    def complete(self, instance_id: str, request_id: str) -> RunningRequest | None:
        """The leg on `instance_id` ended; the RunningRequest it was, if it was counted."""
        done = self.running.get(instance_id, {}).pop(request_id, None)
        self._release(request_id, instance_id)
        return done

    def finish(self, request_id: str) -> RunningRequest | None:
        """The request is over: every leg it still holds ends. Returns the last leg's record."""
        done = None
        for iid in sorted(self.held.get(request_id, ())):
            done = self.complete(iid, request_id) or done
        return done

    def _release(self, request_id: str, instance_id: str) -> None:
        held = self.held.get(request_id)
        if held is not None:
            held.discard(instance_id)
            if not held:
                del self.held[request_id]

    def snapshot(self) -> ClusterSnapshot:
        views = []
        for iid in sorted(self.instances):
            if iid in self.quarantined:
                continue
            inst = self.instances[iid]
            load = self.loads.get(iid, InstanceLoad())
            if iid in self.draining and not load.draining:
                load = replace(load, draining=True)
            views.append(
                InstanceView(
                    instance_id=iid,
                    address=inst.address,
                    role=convert.role_from_pb(inst.role),
                    max_model_len=inst.max_model_len,
                    load=load,
                    running=tuple(self.running.get(iid, {}).values()),
                    latency_model=self.models.get(iid),
                    chunk_tokens=self.chunk_tokens.get(iid, 0),
                    prefill_done_s=self.prefill_done.get(iid, float("-inf")),
                )
            )
        return ClusterSnapshot(instances=tuple(views), links=self.links)

    def inflight_count(self) -> int:
        return sum(len(v) for v in self.running.values())
