"""The worker's reports: its load to the scheduler every report interval (one long-lived
StreamLoad stream), its registry heartbeat to Redis, and its load and KV gauges for /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import grpc

from services.common import grpcutil, metrics, store
from services.common.pb.hfx.v1 import common_pb2, scheduler_pb2_grpc
from services.worker.config import WorkerConfig
from services.worker.engine.base import TransfersKv

if TYPE_CHECKING:
    from services.worker.server import WorkerServicer

log = logging.getLogger("hfx.worker")


async def report_loop(config: WorkerConfig, servicer: WorkerServicer, cluster: store.ClusterStore,
                       profile: dict | None = None) -> None:
    """Every report_interval_s: the load to the scheduler, on one long-lived StreamLoad stream
    (a stream message costs both sides far less CPU than a unary call); every
    heartbeat_interval_s: the registry heartbeat with the same report to Redis."""
    link = LoadStream(config.scheduler_address, config.report_timeout_s) if config.scheduler_address else None
    next_heartbeat_s = 0.0
    try:
        while True:
            report = servicer.load_report()
            export_load(report)
            now = time.monotonic()
            if now >= next_heartbeat_s:
                next_heartbeat_s = now + config.heartbeat_interval_s
                await export_kv(servicer)
                try:
                    await cluster.heartbeat(servicer.info, report, config.heartbeat_ttl_s, profile)
                except Exception as err:  # Redis hiccup: keep serving, the TTL covers a short gap
                    log.warning("heartbeat to redis failed: %s", err)
            if link is not None:
                await link.send(report)
            await asyncio.sleep(config.report_interval_s)
    finally:
        if link is not None:
            link.close()


class LoadStream:
    """The worker's Scheduler.StreamLoad call, reopened after it breaks."""

    def __init__(self, address: str, timeout_s: float) -> None:
        self._stub = scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(address))
        self._timeout_s = timeout_s
        self._call: grpc.aio.StreamUnaryCall | None = None

    async def send(self, report: common_pb2.LoadReport) -> None:
        try:
            if self._call is None or self._call.done():
                self._call = self._stub.StreamLoad()
            call = self._call
            await asyncio.wait_for(call.write(report), self._timeout_s)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.TimeoutError) as err:
            log.debug("load report to scheduler failed: %s", err)
            self.close()

    def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


async def export_kv(servicer: WorkerServicer) -> None:
    engine = servicer.engine
    if not (isinstance(engine, TransfersKv) and engine.kv_address):
        return
    try:
        metrics.set_worker_kv(servicer.info.instance_id, await engine.kv_stats())
    except Exception as err:  # metrics must not stop the reports
        log.debug("KV stats unavailable: %s", err)


def export_load(report: common_pb2.LoadReport) -> None:
    metrics.WORKER_RUNNING.labels(report.instance_id).set(report.running_requests)
    metrics.WORKER_WAITING.labels(report.instance_id).set(report.waiting_requests)
    metrics.WORKER_KV_USAGE.labels(report.instance_id).set(report.kv_usage)
