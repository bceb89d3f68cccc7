"""The live autoscaler: a thin adapter between the pure policy (services/scaler/autoscale) and
the cluster. Every tick it gathers Signals (the scaler's own workers, the Redis registry and
load reports, the scheduler's view of draining, /metrics counters), asks the policy, claims each
decision id in Redis (a decision is applied at most once, even by a restarted scaler that replays
it) and applies it through the actuator, then records desired vs actual and the last decision
with its reason for `hfx status`.

Draining, end to end: Drain marks the instance in Redis; the scheduler, on its next registry
refresh, places nothing new there and reports it draining in GetClusterState. Until the
scheduler confirms, the instance counts as busy, so the policy cannot remove it; after that it
is removed only once neither the worker's load report nor the scheduler's placements show
anything in flight, and the worker's own SIGTERM drain finishes any straggler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from services.common import convert, grpcutil
from services.common.pb.hfx.v1 import scheduler_pb2, scheduler_pb2_grpc
from services.common.errors import HfxError
from services.common.store import ClusterStore
from services.scaler.autoscale import (Drain, Flip, InstanceSignal, PDAutoscaler, PDSignals, Phase, Plan, Remove,
                                       RoleLoad, Signals, Start, StartKind, Undrain)
from services.scaler.actuator import RoleChanger
from services.scaler.autoscale.cost import CostMeter
from services.scaler.live_signals import Window, parse, scrape

log = logging.getLogger("hfx.scaler.autoscale")
CALL_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class LiveOptions:
    tick_s: float = 5.0
    window_s: float = 30.0
    scheduler_metrics: str = ""     # HOST:PORT of the scheduler's /metrics
    router_metrics: str = ""        # HOST:PORT of the router's /metrics (SLO attainment)


class AutoscaleLoop:
    def __init__(self, servicer, cluster: ClusterStore, actuator, autoscaler, options: LiveOptions,
                 scheduler_address: str, bounds: tuple[int, int] | None = None) -> None:
        self.servicer = servicer
        self.bounds = bounds    # (min, max) workers, for `hfx status` (P/D: per role)
        self.store = cluster
        self.actuator = actuator
        self.autoscaler = autoscaler
        self.options = options
        self.window = Window(options.window_s)
        self.scheduler = scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(scheduler_address))
        self.ready_since: dict[str, float] = {}
        self.drain_since: dict[str, float] = {}
        self.ready_times: dict[StartKind, list[float]] = {StartKind.COLD: [], StartKind.STANDBY: []}
        self.meter = CostMeter()   # instance-seconds, the standby pool's share included
        self.last_decision: dict | None = None
        self._warned: set[str] = set()

    def _warn_once(self, what: str, err: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("autoscaler: %s unavailable (%s); deciding without it", what, err)

    async def gather(self, now_s: float) -> Signals | PDSignals:
        sched_text = router_text = ""
        try:
            sched_text = await scrape(self.options.scheduler_metrics)
        except OSError as err:
            self._warn_once("scheduler /metrics", err)
        try:
            router_text = await scrape(self.options.router_metrics)
        except OSError as err:
            self._warn_once("router /metrics", err)
        counters = parse(now_s, sched_text, router_text)
        self.window.add(counters)
        registry = {i.instance_id: i for i in await self.store.instances()}
        marked = await self.store.draining_ids()
        confirmed: set[str] = set()
        try:
            state = await self.scheduler.GetClusterState(scheduler_pb2.GetClusterStateRequest(),
                                                         timeout=CALL_TIMEOUT_S)
            confirmed = {i.instance_id for i in state.instances if i.load.draining}
        except grpc.aio.AioRpcError as err:
            self._warn_once("scheduler GetClusterState", err)
        instances = []
        alive = set()
        for w in await self.actuator.members():
            iid = w.instance_id
            alive.add(iid)
            inst = registry.get(iid)
            load_inflight = (inst.load.running_requests + inst.load.waiting_requests) if inst is not None else 0
            inflight = max(load_inflight, counters.placed.get(iid, 0))
            queued = inst.load.waiting_requests if inst is not None else 0
            # Its role now: the registry's (a flip shows there), else the one it was launched with.
            role = convert.role_from_pb(inst.role).value if inst is not None else w.role
            if iid in marked:
                since = self.drain_since.setdefault(iid, now_s)
                # Not yet confirmed by the scheduler: it may still place there, so it is not empty.
                instances.append(InstanceSignal(iid, Phase.DRAINING, since, "cpu",
                                                inflight if iid in confirmed else max(1, inflight), queued,
                                                role=role))
            elif inst is not None:
                if iid not in self.ready_since:
                    self.ready_since[iid] = now_s
                    kind = StartKind.STANDBY if w.from_standby else StartKind.COLD
                    if not w.adopted:   # its launch was a previous scaler's: no ready time known
                        self.ready_times[kind].append(now_s - w.started_s)
                instances.append(InstanceSignal(iid, Phase.READY, self.ready_since[iid], "cpu", inflight, queued,
                                                role=role))
            else:
                instances.append(InstanceSignal(iid, Phase.STARTING, w.started_s, role=role))
        # Marks of instances that are gone (removed and deregistered) are cleared.
        for iid in marked - alive - set(registry):
            await self.store.mark_draining(iid, False)
            self.drain_since.pop(iid, None)
        for iid in set(self.ready_since) - alive:
            del self.ready_since[iid]
        ready_times = {kind: sum(times[-5:]) / len(times[-5:]) for kind, times in self.ready_times.items() if times}
        pool = self.servicer.pool
        # A ready standby makes a start take seconds; its engines cost memory whether used or not.
        kinds = (StartKind.STANDBY, StartKind.COLD) if pool is not None and pool.ready_count() else (StartKind.COLD,)
        if isinstance(self.autoscaler, PDAutoscaler):
            return self._pd_signals(tuple(instances), counters.queue_depth, ready_times, kinds)
        return Signals(tuple(instances), self.window.arrival_rps(), self.window.attainment(), counters.queue_depth,
                       0.0, self.window.rejections(), ready_times, kinds,
                       pool.equivalents if pool is not None else 0.0, rate_window_s=self.window.span_s())

    def _pd_signals(self, instances: tuple[InstanceSignal, ...], queue_depth: int, ready_times, kinds) -> PDSignals:
        """Each role's side: the mean prompt and asked output lengths of the window's verdicts (the
        scheduler's counters); the router's SLO attainment for both (it reports met/missed per
        request, not per TTFT and TPOT); prefill's queue is the scheduler's (waiting for a first
        token), decode's the requests queued in decode engines."""
        prompt, output = self.window.mean_tokens()
        att = Signals((), 0.0, self.window.attainment()).overall_attainment()
        rejections = self.window.rejections()
        decode_queue = sum(i.queued for i in instances if i.role == "decode")
        return PDSignals(instances, self.window.arrival_rps(), RoleLoad(prompt, att, queue_depth, 0.0, rejections),
                         RoleLoad(output, att, decode_queue), ready_times, kinds)

    async def apply(self, plan: Plan, now_s: float) -> None:
        for action in plan.actions:
            record = {"action": type(action).__name__.lower(), "reason": action.reason, "at": now_s,
                      "instance_id": getattr(action, "instance_id", ""), "role": _role_of(action)}
            if not await self.store.claim_decision(action.decision_id, record):
                log.info("autoscale decision %s already applied; skipped", action.decision_id)
                continue
            if isinstance(action, Start):
                record["instance_id"] = iid = await self.actuator.start(action.device, action.start_kind, action.role)
                # A start may reuse a retired slot's id whose draining mark is still set (its old
                # worker exited after this tick's signals were read): a new worker is not draining.
                await self.store.mark_draining(iid, False)
                self.drain_since.pop(iid, None)
            elif isinstance(action, Drain):
                await self.actuator.drain(action.instance_id)
                self.drain_since[action.instance_id] = now_s
            elif isinstance(action, Undrain):
                await self.actuator.undrain(action.instance_id)
                self.drain_since.pop(action.instance_id, None)
            elif isinstance(action, Remove):
                await self.actuator.remove(action.instance_id)
            elif isinstance(action, Flip):
                if not await self._flip(action):
                    continue
            log.info("autoscale %s %s %s%s: %s", action.decision_id, record["action"], record["instance_id"],
                     f" ({record['role']})" if record["role"] else "", action.reason)
            self.last_decision = {"decision_id": action.decision_id, **record}

    async def _flip(self, action: Flip) -> bool:
        """A role change through Scaler.SetRole's checks (never a stage left empty); a refusal is
        logged with its reason and the next tick decides again from what it sees."""
        if not isinstance(self.actuator, RoleChanger):
            log.warning("autoscale %s: flip of %s refused: actuator %s cannot change roles", action.decision_id,
                        action.instance_id, self.actuator.kind)
            return False
        try:
            await self.actuator.set_role(action.instance_id, action.to_role, action.reason)
        except (HfxError, grpc.aio.AioRpcError) as err:
            log.warning("autoscale %s: flip of %s to %s refused: %s", action.decision_id, action.instance_id,
                        action.to_role, err)
            return False
        return True

    async def tick(self, now_s: float) -> Plan:
        signals = await self.gather(now_s)
        plan = self.autoscaler.on_tick(signals, now_s)
        self.meter.add(now_s, plan.details)
        await self.apply(plan, now_s)
        phases = [i.phase for i in signals.instances]
        low, high = self.bounds or (None, None)
        await self.store.put_autoscale_status({
            "at": now_s, "policy": self.autoscaler.name, "actuator": self.actuator.kind,
            "desired": plan.desired, "reason": plan.reason,
            "actual": {p.value: phases.count(p) for p in Phase},
            "min": low, "max": high,
            "arrival_rps": signals.arrival_rps, "predicted_rps": plan.predicted_rps,
            "capacity_rps": plan.capacity_rps, "last_decision": self.last_decision,
            "paid_instances": plan.details.get("paid_instances"), "cost_per_s": plan.details.get("cost_per_s"),
            "instance_seconds": self.meter.instance_seconds, "cost": self.meter.cost,
            "standby_instance_seconds": self.meter.standby_instance_seconds,
            # P/D: desired vs actual per role (actual: starting, ready or draining in that role now).
            "roles": {role: {"desired": d.get("desired"), "actual": sum(i.role == role for i in signals.instances)}
                      for role, d in plan.details.get("roles", {}).items()},
            "max_total": self.autoscaler.config.max_total if isinstance(self.autoscaler, PDAutoscaler) else None,
        })
        return plan

    async def run(self) -> None:
        while True:
            try:
                await self.tick(time.time())
            except Exception:  # a Redis or policy hiccup must not end autoscaling
                log.exception("autoscale tick failed")
            await asyncio.sleep(self.options.tick_s)


def _role_of(action) -> str:
    """The role an action gives an instance: a start's, a flip's new one ("" for the others)."""
    if isinstance(action, Start):
        return action.role
    return action.to_role if isinstance(action, Flip) else ""
