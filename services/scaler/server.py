"""Scaler gRPC service: launches the configured workers, restarts crashed ones, scales on request.

The decisions come from `reconcile` (pure); this module only spawns and stops processes.
A Scale call is idempotent per decision id (claimed in Redis), since its caller may not know
whether an earlier attempt landed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import signal
import subprocess
import time

from services.common import convert, lifeline, metrics, procs, store
from services.common.domain import Role
from services.common.errors import InvalidArgument
from services.common.pb.hfx.v1 import common_pb2, scaler_pb2, scaler_pb2_grpc
from services.scaler.adopt import adopt_into
from services.scaler.config import ScalerConfig
from services.scaler.donor import DonorCandidate, choose_donor
from services.scaler.linking import Linker
from services.scaler.managed import STATES, Managed, check_gone, describe as _describe, observe_exit, state_of
from services.scaler.role_change import RoleChanges
from services.scaler.reconcile import (POOL_STRIDE, WorkerSlot, cpu_share, pool_of, pool_slots, reconcile, reconcile_set,
                                       slot_name)
from services.scaler.standby import StandbyPool

log = logging.getLogger("hfx.scaler")
SERVICE_NAME = "hfx.v1.Scaler"
_STATE_PB = {"starting": scaler_pb2.WORKER_STATE_STARTING, "ready": scaler_pb2.WORKER_STATE_READY,
             "stopping": scaler_pb2.WORKER_STATE_STOPPING, "exited": scaler_pb2.WORKER_STATE_EXITED}


class ScalerServicer(scaler_pb2_grpc.ScalerServicer):
    def __init__(self, config: ScalerConfig, cluster: store.ClusterStore) -> None:
        self.config = config
        self.store = cluster
        # P-D links (issue 11): kept in Redis by this scaler; the scheduler pairs only linked instances.
        self.linker = Linker(cluster) if config.links else None
        self.roles = RoleChanges(cluster, self.linker, config.pd_local_prefill)
        self.desired = config.replicas
        self.workers: dict[int, Managed] = {}
        self._promised: collections.deque[int] = collections.deque(maxlen=64)   # ports handed out lately
        self.ready_ids: set[str] = set()
        self.registry: list[common_pb2.Instance] = []  # live instances as last read (donor choice)
        # Autoscaled: the slots wanted (any may be retired after a drain); None: the first `desired`.
        self.wanted: set[int] | None = None
        # Prefill and decode slots (fixed counts, set by config or a Scale call with that role).
        self.pd_wanted = pool_slots("prefill", config.prefill_replicas) | pool_slots("decode", config.decode_replicas)
        if config.autoscale is not None:
            a = config.autoscale
            self.desired = max(a.min_replicas, min(a.max_replicas, config.replicas))
            self.wanted = set(range(self.desired))
        if config.pd_autoscale is not None:   # P/D: the autoscaler scales the prefill and decode slots
            self.desired, self.wanted = 0, set()
        if config.actuator != "local":   # the workers are another system's (a Deployment's pods)
            self.desired, self.wanted = 0, set()
        # Issue 12: engines started ahead (services/scaler/standby.py); None without --standby-pool.
        self.pool = StandbyPool(config.standby_pool, config.cluster_name, self._spawn_standby, self._free_port) \
            if config.standby_pool else None

    def adopt_running(self) -> str:
        """Before the first step: take over the workers a previous scaler left running (with
        --adopt-workers), kill what is left of earlier runs, and want the adopted slots (the
        autoscaler then decides from there; a fixed count keeps its own)."""
        if not self.config.adopt_workers:
            return "adopting off"
        colocated, reason = adopt_into(self.workers, self.config.cluster_name, self.config.log_dir)
        bounds = self.config.autoscale
        if bounds is not None and colocated:
            wanted = set(colocated)
            free = (i for i in range(POOL_STRIDE) if i not in wanted)
            while len(wanted) < bounds.min_replicas:
                wanted.add(next(free))
            self.wanted, self.desired = wanted, len(wanted)
        return reason

    def _instance_id(self, index: int) -> str:
        return slot_name(self.config.cluster_name, index)

    def _role_of(self, index: int) -> str:
        """The role a (re)start of slot `index` takes: the one its worker last had in the registry
        (after any role change), else its slot's. So a restarted worker comes back as it was."""
        w = self.workers.get(index)
        return (w.role if w is not None and w.role else "") or pool_of(index)

    def _remember_roles(self, registry: list[common_pb2.Instance]) -> None:
        roles = {i.instance_id: convert.role_from_pb(i.role).value for i in registry}
        for w in self.workers.values():
            if w.instance_id in roles and w.exited_at_s is None:
                w.role = roles[w.instance_id]

    def _role_flag(self, index: int) -> list[str]:
        role = self._role_of(index)
        # A prefill or decode worker hands KV on or takes it: its engine needs the KV connector
        # (kv_both: either way). With role changes any worker may become one, so every one gets it.
        local = [] if self.config.pd_local_prefill else ["--no-pd-local-prefill"]
        if role == "colocated":
            return ["--kv-transfer", *local] if self.config.role_changes else local
        return ["--role", role, "--kv-transfer", *local]

    def _spawn(self, index: int) -> None:
        # Autoscaled slots take a standby only when the autoscaler chose that start (add_slot).
        if self.pool is not None and self.wanted is None and index < POOL_STRIDE and self._adopt(index):
            return
        w = self.workers.get(index)
        if w is None:
            w = self.workers[index] = Managed(index, self._instance_id(index), self._free_port())
        elif w.proc is not None:
            w.restarts += 1
            check_gone(w, log)
            # A fresh port: the old one may be taken meanwhile (any socket's ephemeral port; a
            # start that failed to bind would otherwise fail the same way on every restart).
            w.port = self._free_port()
        w.proc = self._launch(w.instance_id, w.port, *self._role_flag(index), *self._cpu_flag(w),
                              *self._weights_flags(w))
        w.exited_at_s, w.stopping, w.started_s = None, False, time.time()
        log.info("started worker %s (pid %d, port %d, restarts %d)", w.instance_id, w.proc.pid, w.port, w.restarts)

    def _launch(self, instance_id: str, port: int, *extra: str) -> subprocess.Popen:
        cmd = procs.hfx_command(
            "worker", "--model", self.config.model, "--instance-id", instance_id, "--port", str(port),
            "--engine", self.config.engine, "--device", self.config.device, "--redis-url", self.config.redis_url,
            "--redis-prefix", self.config.redis_prefix, "--scheduler", self.config.scheduler_address,
            "--tracing", self.config.tracing_spec, *extra, *self.config.worker_args, *self._metrics_flag(instance_id),
        )
        log_path, record = self.config.log_dir / f"{instance_id}.log", self.config.log_dir / f"{instance_id}.pid"
        if self.config.adopt_workers:
            # Outlives this scaler so that a restarted one adopts it; it records itself before it
            # runs and dies with the anchor (`hfx up`'s caller) if one is given.
            (self.config.log_dir / f"{instance_id}.port").write_text(str(port))
            anchor = self.config.workers_anchor
            return procs.spawn(lifeline.anchored_command(cmd, str(record), *(anchor or (0, 0))), log_path)
        # Tied to this scaler: if it dies, however, its workers die too (and their engines with them).
        proc = procs.spawn(cmd, log_path, die_with_parent=True)
        # Every group this slot ever had, one a line: `hfx down` checks them all, even if this
        # scaler was killed before it could reap an exited worker's leftovers.
        procs.append_group_record(record, proc.pid)
        return proc

    def _spawn_standby(self, instance_id: str, port: int) -> subprocess.Popen:
        # Its cores: those of the next slot (standbys are idle until taken).
        next_slot = Managed(max(self.wanted or {self.desired - 1}, default=-1) + 1, instance_id, port)
        return self._launch(instance_id, port, *self._cpu_flag(next_slot), "--standby", "--serve-weights")

    def _adopt(self, index: int) -> bool:
        """A colocated slot starts from a ready standby when there is one: the standby keeps its
        own id; LoadWeights from the least loaded donor runs in the background, then it registers."""
        pool = self.pool
        member = pool.take() if pool is not None else None
        if pool is None or member is None:
            return False
        old = self.workers.get(index)
        if old is not None:
            check_gone(old, log)
        now = time.time()
        self.workers[index] = Managed(index, member.instance_id, member.port, member.proc, started_s=now,
                                      restarts=old.restarts + 1 if old else 0, from_standby=True)
        choice = choose_donor((DonorCandidate.from_pb(i) for i in self.registry), self.config.model, member.instance_id,
                              prepared=member.prepared_for)
        log.info("slot %d takes standby %s (pid %d); weights: %s", index, member.instance_id, member.proc.pid,
                 choice.reason)
        pool.load(member, choice, now)
        return True

    def _cpu_flag(self, w: Managed) -> list[str]:
        """vLLM engines on this machine's CPU each get their own cores (see reconcile.cpu_share)."""
        if self.config.engine != "vllm" or self.config.device != "cpu":
            return []
        # P/D workers take the shares after the colocated ones.
        position = w.index
        if w.index >= POOL_STRIDE:
            pd = sorted(self.pd_wanted | {w.index})
            position = self.desired + pd.index(w.index)
        share = cpu_share(position, self.desired + len(self.pd_wanted), sorted(os.sched_getaffinity(0)))
        return ["--cpu-cores", share] if share else []

    def _weights_flags(self, w: Managed) -> list[str]:
        """With d2d: every vLLM worker is a donor, and a new one pulls from the chosen donor."""
        if not self.config.d2d or self.config.engine not in ("vllm", "sim"):  # sim: SIMULATED load, real stream
            return []
        choice = choose_donor((DonorCandidate.from_pb(i) for i in self.registry), self.config.model, w.instance_id)
        log.info("weights for %s: %s", w.instance_id, choice.reason)
        return ["--serve-weights", *(["--weights-from", choice.address] if choice.address else [])]

    def _free_port(self) -> int:
        """A port for a worker to listen on, never one handed out lately: until the worker it
        went to binds it, a promised port still looks free, and two workers launched together
        could be given the same one (the second then fails "Address already in use")."""
        port = procs.free_port(avoid=frozenset(self._promised))
        self._promised.append(port)
        return port

    def _metrics_flag(self, instance_id: str) -> list[str]:
        if not self.config.worker_metrics:
            return []
        port = self._free_port()
        # Recorded next to the pid file so `hfx up` can list every /metrics address.
        (self.config.log_dir / f"{instance_id}.metrics").write_text(f"127.0.0.1:{port}")
        return ["--metrics-port", str(port)]

    def export_metrics(self) -> None:
        name = self.config.cluster_name
        metrics.SCALER_LEFTOVERS.labels(name).inc(0)  # the series exists from the start, at 0
        metrics.SCALER_DESIRED.labels(name).set(self.desired)
        metrics.SCALER_RESTARTS.labels(name).set(sum(w.restarts for w in self.workers.values()))
        states = dict.fromkeys(STATES, 0)
        for w in self.workers.values():
            states[state_of(w, self.ready_ids)] += 1
        for state, count in states.items():
            metrics.SCALER_WORKERS.labels(name, state).set(count)

    def _stop(self, index: int) -> None:
        w = self.workers[index]
        if w.proc is not None and not procs.has_exited(w.proc):  # not poll(): it would reap (see _observe_exit)
            w.stopping = True
            w.proc.send_signal(signal.SIGTERM)  # the worker drains, then exits

    def _observe_exit(self, w: Managed, now_s: float) -> None:
        found = observe_exit(w, now_s)
        if found is None:
            return
        if not w.stopping:
            log.warning("worker %s exited with %s", w.instance_id, w.exit_code)
        if found:
            metrics.SCALER_LEFTOVERS.labels(self.config.cluster_name).inc(len(found))
            log.warning("worker %s (pid %d) left %d process(es) running in its group; killed: %s",
                        w.instance_id, w.proc.pid if w.proc else 0, len(found), _describe(found))

    def step(self, now_s: float) -> None:
        """Observe exits, then apply reconcile's actions."""
        for w in self.workers.values():
            self._observe_exit(w, now_s)
        # A slot stopped on purpose (retired after a drain) that is wanted again starts at once:
        # the crash backoff is for crashes.
        slots = [
            WorkerSlot(w.index, w.exited_at_s is None, None if w.stopping else w.exited_at_s, w.restarts)
            for w in self.workers.values()
            if self.config.restart_crashed or w.exited_at_s is None or w.stopping
        ]
        colocated = [s for s in slots if s.index < POOL_STRIDE]
        if self.wanted is not None:
            actions = reconcile_set(self.wanted, colocated, now_s)
        else:
            actions = reconcile(self.desired, colocated, now_s)
        pd_actions = reconcile_set(self.pd_wanted, [s for s in slots if s.index >= POOL_STRIDE], now_s)
        for acts in (actions, pd_actions):
            for index in acts.start:
                # A retired slot wanted again starts once its old process has exited, not before
                # (it may still be finishing its requests). Skipping it for good after the exit
                # (the mark stayed set) left a reused slot wanted and never started: the
                # autoscaler saw no start and decided another on the next tick (issue 13).
                old = self.workers.get(index)
                if old is not None and old.stopping and old.exited_at_s is None:
                    continue
                self._spawn(index)
            for index in acts.stop:
                self._stop(index)
            if acts.start or acts.stop:
                log.info("reconcile: %s", acts.reason)
        if self.pool is not None:
            self.pool.refill(now_s)

    # -- slots under an autoscaler (services/scaler/actuator.py LocalProcesses) -------------------

    def live_slots(self) -> list[Managed]:
        """Workers wanted and running (starting or ready), or crashed and waiting out the restart
        backoff (step() starts them again: one place restarts a slot, so the autoscaler must not
        start another for it); retired ones on their way out are not.
        P/D autoscaling (config.pd_autoscale): the prefill and decode slots are the autoscaler's."""
        wanted = (self.wanted or set()) | (self.pd_wanted if self.config.pd_autoscale is not None else set())
        return [w for i, w in sorted(self.workers.items())
                if self.wanted is not None and i in wanted and not w.stopping]

    def add_slot(self, now_s: float, take_standby: bool = False, role: str = "colocated") -> str:
        """One more worker of `role`, in the lowest free slot of its pool (from the standby pool
        when asked and one is ready); returns its instance id."""
        assert self.wanted is not None, "add_slot needs autoscaling"
        wanted = self.wanted if role == "colocated" else self.pd_wanted
        index = next(i for i in sorted(pool_slots(role, POOL_STRIDE))
                     if i not in wanted and (i not in self.workers or self.workers[i].exited_at_s is not None))
        wanted.add(index)
        self.desired = len(self.wanted)
        if index in self.workers:   # a new worker in a retired slot takes the slot's role, not its last one's
            self.workers[index].role = ""
        if take_standby and self.pool is not None and role == "colocated":
            self._adopt(index)
        self.step(now_s)
        return self.workers[index].instance_id

    def retire_slot(self, instance_id: str, now_s: float) -> None:
        """Stop a drained worker (SIGTERM: it finishes anything left, deregisters, exits)."""
        assert self.wanted is not None, "retire_slot needs autoscaling"
        index = next((i for i, w in self.workers.items() if w.instance_id == instance_id), None)
        if index is None or index not in self.wanted | self.pd_wanted:
            return
        self.wanted.discard(index)
        self.pd_wanted.discard(index)
        self.desired = len(self.wanted)
        self.step(now_s)

    async def loop(self) -> None:
        while True:
            self.step(time.time())
            try:
                self.registry = await self.store.instances()
                self.ready_ids = {i.instance_id for i in self.registry}
                self._remember_roles(self.registry)
                if self.linker is not None:   # an exited worker is unlinked at once, not after its TTL
                    gone = {w.instance_id for w in self.workers.values() if w.exited_at_s is not None or w.stopping}
                    await self.linker.step(self.registry, gone)
            except Exception as err:
                log.warning("registry read or linking failed: %s", err)
            if self.pool is not None:
                if self.config.d2d:  # each ready standby maps the donor it would pull from now
                    donors = [DonorCandidate.from_pb(i) for i in self.registry]
                    self.pool.prepare(lambda prepared: choose_donor(donors, self.config.model, prepared=prepared))
                await self.pool.tick(self.store, [w.proc.pid for w in self.workers.values()
                                                  if w.proc is not None and w.instance_id in self.ready_ids])
            self.export_metrics()
            await asyncio.sleep(0.5)

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        for w in self.workers.values():
            if w.proc is not None and not procs.has_exited(w.proc):
                w.stopping = True
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers.values():
            if w.proc is not None and w.exited_at_s is None:  # an exited one's group was killed then
                killed = procs.stop_group(w.proc.pid, timeout_s=30.0)
                if killed:
                    log.warning("worker %s did not stop within 30 s; killed: %s", w.instance_id, _describe(killed))

    async def Scale(self, request: scaler_pb2.ScaleRequest, context) -> scaler_pb2.ScaleResponse:
        if not request.decision_id:
            raise InvalidArgument("decision_id", "must not be empty (it makes Scale idempotent)")
        if request.replicas < 0:
            raise InvalidArgument("replicas", f"must be >= 0, got {request.replicas}")
        role = convert.role_from_pb(request.role)
        if role is not Role.COLOCATED:
            return await self._scale_pool(request, role)
        if self.config.autoscale is not None:
            a = self.config.autoscale
            if not a.min_replicas <= request.replicas <= a.max_replicas:
                raise InvalidArgument("replicas", f"{request.replicas} is outside the autoscaler's bounds "
                                      f"[{a.min_replicas}, {a.max_replicas}]")
            raise InvalidArgument("replicas", "the autoscaler decides the count within "
                                  f"[{a.min_replicas}, {a.max_replicas}]; change --min/--max instead")
        first = await self.store.claim_decision(
            request.decision_id, {"replicas": request.replicas, "reason": request.reason, "at": time.time()}
        )
        if first:
            log.info("scale decision %s: %d -> %d (%s)", request.decision_id, self.desired, request.replicas, request.reason)
            self.desired = request.replicas
            if self.config.d2d:  # the donor choice reads the registry as it is now, not as of the last loop
                try:
                    self.registry = await self.store.instances()
                except Exception as err:
                    log.warning("registry read failed, choosing donors from the last one: %s", err)
            self.step(time.time())
        return scaler_pb2.ScaleResponse(decision_id=request.decision_id, applied=first, replicas=self.desired)

    async def _scale_pool(self, request: scaler_pb2.ScaleRequest, role: Role) -> scaler_pb2.ScaleResponse:
        """A fixed count of prefill or decode workers (unless the P/D autoscaler decides them)."""
        if self.config.pd_autoscale is not None:
            raise InvalidArgument("replicas", f"the P/D autoscaler decides the {role.value} count; change "
                                  "--min/--max/--max-total instead")
        if request.replicas >= POOL_STRIDE:
            raise InvalidArgument("replicas", f"at most {POOL_STRIDE - 1} {role.value} workers, got {request.replicas}")
        first = await self.store.claim_decision(
            request.decision_id,
            {"replicas": request.replicas, "role": role.value, "reason": request.reason, "at": time.time()})
        mine = pool_slots(role.value, POOL_STRIDE)
        if first:
            log.info("scale decision %s: %s %d -> %d (%s)", request.decision_id, role.value,
                     len(self.pd_wanted & mine), request.replicas, request.reason)
            self.pd_wanted = (self.pd_wanted - mine) | pool_slots(role.value, request.replicas)
            self.step(time.time())
        return scaler_pb2.ScaleResponse(decision_id=request.decision_id, applied=first,
                                        replicas=len(self.pd_wanted & mine))

    async def SetRole(self, request: scaler_pb2.ScalerSetRoleRequest, context) -> scaler_pb2.ScalerSetRoleResponse:
        reply = await self.roles.set_role(request)
        # At once, not at the next registry read: a crash right after the change restarts it in its new role.
        for w in self.workers.values():
            if w.instance_id == request.instance_id and w.exited_at_s is None:
                w.role = convert.role_from_pb(request.role).value
        return reply

    async def ListWorkers(self, request, context) -> scaler_pb2.ListWorkersResponse:
        out = scaler_pb2.ListWorkersResponse()
        registered = {i.instance_id: i.role for i in self.registry}   # a role change shows here
        for w in sorted(self.workers.values(), key=lambda w: w.index):
            out.workers.add(
                instance_id=w.instance_id, address=f"127.0.0.1:{w.port}",
                role=registered.get(w.instance_id, convert.role_to_pb(Role(self._role_of(w.index)))),
                state=_STATE_PB[state_of(w, self.ready_ids)], pid=w.proc.pid if w.proc else 0, restarts=w.restarts, exit_code=w.exit_code or 0,
            )
        return out

