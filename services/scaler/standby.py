"""The standby pool (issue 12): engines started ahead with dummy weights, handed out on scale-up.

A standby is a worker started with `--standby --serve-weights`: its engine is up (dummy weights),
its gRPC serves LoadWeights, it is not in the registry, so nothing is placed on it. Once ready,
and whenever the donor the scaler would choose changes, it is told that donor (PrepareWeights:
on one host it maps the donor's weight files and faults their pages in), so that the pull at
hand-out is only the checks and vLLM's copy. A scale-up
takes the oldest ready standby instead of spawning a process: the scaler calls its LoadWeights
with the least loaded donor's address (services/scaler/donor.py; "" = storage, and a failed pull
falls back to storage inside the worker), the worker then registers as itself, and the pool
starts a replacement in the background. The decisions (`plan_pool`, `standby_equivalents`) are
pure; `StandbyPool` only spawns, probes and calls.

Cost: every standby holds an engine's memory while serving nothing. The pool reports it in
instance-equivalents, its processes' RSS over a serving worker's RSS (one each until a serving
worker has been measured), which the autoscaler adds to the instances it pays for.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from services.common import grpcutil, procs, proctable
from services.common.pb.hfx.v1 import worker_pb2, worker_pb2_grpc
from services.scaler.donor import DonorChoice

log = logging.getLogger("hfx.scaler.standby")
PROBE_TIMEOUT_S = 1.0
MEASURE_EVERY_S = 5.0     # reading /proc for RSS costs a walk over every process
# A pull that fails falls back to storage inside the worker: the call can take a pull's deadline
# (the worker's --weights-deadline, 300 s) plus a load from storage.
LOAD_TIMEOUT_S = 600.0
PREPARE_TIMEOUT_S = 60.0  # mapping a checkpoint's files and faulting them in: ~0.1 s per GB here


@dataclass(frozen=True)
class PoolPlan:
    start: int          # standbys to launch now
    reason: str


def plan_pool(size: int, alive: int, ready: int) -> PoolPlan:
    """Keep `size` standbys alive (starting or ready): launch the missing ones."""
    missing = max(0, size - alive)
    state = f"standby pool: {ready} ready + {alive - ready} starting of {size}"
    return PoolPlan(missing, f"{state}; start {missing}" if missing else state)


def standby_equivalents(count: int, pool_rss_bytes: int, serving_rss_bytes: float) -> float:
    """The pool's cost in serving instances: its RSS over one serving worker's RSS; unmeasured
    (no serving worker seen yet), each standby counts as a whole instance."""
    if count == 0:
        return 0.0
    if serving_rss_bytes <= 0:
        return float(count)
    return pool_rss_bytes / serving_rss_bytes


@dataclass
class Standby:
    instance_id: str
    port: int
    proc: subprocess.Popen
    started_s: float
    ready_s: float | None = None
    prepared_for: str = ""      # the donor weight address it mapped ahead (PrepareWeights), "" none
    prepare_asked: str = ""     # the last address asked for (not asked again after a failure)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


# (instance id, port) -> the started worker process (the scaler builds the command line).
Spawn = Callable[[str, int], subprocess.Popen]


class StandbyPool:
    def __init__(self, size: int, cluster_name: str, spawn: Spawn,
                 free_port: Callable[[], int] = procs.free_port) -> None:
        self.size = size
        self.cluster_name = cluster_name
        self._spawn = spawn
        self._free_port = free_port   # the scaler's: never a port it promised a worker lately
        self.members: list[Standby] = []
        self._seq = 0
        self._loads: set[asyncio.Task] = set()
        self.taken: list[dict] = []           # the last hand-outs, newest last (for status)
        self.last_reason = ""
        self.rss = 0                          # the pool's resident bytes, as last measured
        self.equivalents = 0.0                # the pool's cost in serving instances (standby_equivalents)
        self._measured_s = 0.0

    # -- keeping it full --------------------------------------------------------------------------

    def refill(self, now_s: float) -> None:
        """Drop standbys that exited (their group killed first, as the scaler does for workers),
        then launch the missing ones."""
        for m in [m for m in self.members if procs.exited(m.proc.pid)]:
            procs.kill_group(m.proc.pid)
            m.proc.poll()
            log.warning("standby %s exited with %s; replacing it", m.instance_id, m.proc.returncode)
            self.members.remove(m)
        plan = plan_pool(self.size, len(self.members), sum(m.ready_s is not None for m in self.members))
        for _ in range(plan.start):
            name = f"{self.cluster_name}-s{self._seq}"
            self._seq += 1
            port = self._free_port()
            self.members.append(Standby(name, port, self._spawn(name, port), now_s))
            log.info("started standby %s on port %d", name, port)
        if plan.reason != self.last_reason:
            log.info("%s", plan.reason)
            self.last_reason = plan.reason

    async def probe(self) -> None:
        """A standby is ready once its gRPC answers (it serves only after its engine is up)."""
        for m in self.members:
            if m.ready_s is not None:
                continue
            try:
                async with grpcutil.aio_channel(m.address) as channel:
                    await worker_pb2_grpc.WorkerStub(channel).GetInfo(worker_pb2.GetInfoRequest(),
                                                                      timeout=PROBE_TIMEOUT_S)
            except grpc.aio.AioRpcError:
                continue
            m.ready_s = time.time()
            log.info("standby %s ready (%.1f s after launch)", m.instance_id, m.ready_s - m.started_s)

    def prepare(self, choose: Callable[[str], DonorChoice]) -> None:
        """Tell each ready standby the donor it would pull from now, `choose(its prepared
        address)` (a donor it prepared for stays its choice while it is one), unless it was
        already told; in the background (until done, its pull is the one it had without it)."""
        for m in self.members:
            if m.ready_s is None:
                continue
            donor = choose(m.prepared_for)
            if not donor.address or donor.address in (m.prepare_asked, m.prepared_for):
                continue
            m.prepare_asked = donor.address
            task = asyncio.get_running_loop().create_task(self._prepare(m, donor))
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)

    async def _prepare(self, member: Standby, donor: DonorChoice) -> None:
        try:
            async with grpcutil.aio_channel(member.address) as channel:
                reply = await worker_pb2_grpc.WorkerStub(channel).PrepareWeights(
                    worker_pb2.PrepareWeightsRequest(donor_address=donor.address), timeout=PREPARE_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            log.warning("standby %s: PrepareWeights from %s failed (%s: %s); its pull maps the files itself",
                        member.instance_id, donor.instance_id, err.code().name, err.details())
            return
        member.prepared_for = donor.address if reply.prepared else ""
        log.info("standby %s prepared its pull from donor %s: %s (%.2f s)", member.instance_id, donor.instance_id,
                 reply.detail, reply.seconds)

    # -- handing out ------------------------------------------------------------------------------

    def take(self) -> Standby | None:
        """The oldest ready standby, out of the pool (None: none ready; the caller starts cold)."""
        ready = [(m.ready_s, k, m) for k, m in enumerate(self.members) if m.ready_s is not None]
        if not ready:
            return None
        oldest = min(ready)[2]
        self.members.remove(oldest)
        return oldest

    def load(self, member: Standby, donor: DonorChoice, now_s: float) -> None:
        """LoadWeights on a taken standby, in the background (the caller's loop keeps running).
        A failed call stops the worker: its slot then restarts it as a cold worker."""
        record = {"instance_id": member.instance_id, "at": now_s, "donor": donor.instance_id or "storage",
                  "reason": donor.reason, "state": "loading"}
        self.taken = (self.taken + [record])[-5:]
        task = asyncio.get_running_loop().create_task(self._load(member, donor.address, record))
        self._loads.add(task)
        task.add_done_callback(self._loads.discard)

    async def _load(self, member: Standby, donor_address: str, record: dict) -> None:
        try:
            async with grpcutil.aio_channel(member.address) as channel:
                reply = await worker_pb2_grpc.WorkerStub(channel).LoadWeights(
                    worker_pb2.LoadWeightsRequest(donor_address=donor_address), timeout=LOAD_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            record.update(state="failed", error=f"{err.code().name}: {err.details()}")
            log.error("standby %s: LoadWeights failed (%s); stopping it, its slot restarts it cold",
                      member.instance_id, record["error"])
            if not procs.exited(member.proc.pid):
                member.proc.send_signal(signal.SIGTERM)
            return
        record.update(state="loaded", weights_source=reply.weights_source, load_s=reply.load_s,
                      seconds=time.time() - record["at"])
        log.info("standby %s loaded weights from %s in %.2f s (call %.2f s); it registers now",
                 member.instance_id, reply.weights_source, reply.load_s, record["seconds"])

    # -- cost and status --------------------------------------------------------------------------

    async def tick(self, cluster, serving_pids: list[int]) -> None:
        """Each scaler loop: probe starting standbys; every MEASURE_EVERY_S, measure the pool's
        RSS against the serving workers' (their process groups: worker and engine) and publish
        the pool for `hfx status`."""
        await self.probe()
        now = time.time()
        if now - self._measured_s < MEASURE_EVERY_S:
            return
        self._measured_s = now
        table = proctable.snapshot()
        self.rss = sum(_group_rss(table, m.proc.pid) for m in self.members)
        serving = [_group_rss(table, pid) for pid in serving_pids]
        self.equivalents = standby_equivalents(len(self.members), self.rss, sum(serving) / len(serving) if serving else 0)
        try:
            await cluster.put_standby_status(self.status(now))
        except Exception as err:  # status is best effort; the pool keeps working
            log.warning("standby status not written: %s", err)

    def ready_count(self) -> int:
        return sum(m.ready_s is not None for m in self.members)

    def status(self, now_s: float) -> dict:
        return {"at": now_s, "size": self.size, "ready": self.ready_count(),
                "starting": len(self.members) - self.ready_count(),
                "members": [m.instance_id for m in self.members], "rss_bytes": self.rss,
                "instance_equivalents": round(self.equivalents, 3), "taken": self.taken}

    def shutdown(self) -> None:
        for m in self.members:
            if not procs.exited(m.proc.pid):
                m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            procs.stop_group(m.proc.pid, timeout_s=30.0)


def _group_rss(table: dict[int, proctable.ProcInfo], pgid: int) -> int:
    return sum(p.rss_bytes for p in proctable.group_members(table, pgid))
