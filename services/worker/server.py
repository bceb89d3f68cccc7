"""Worker gRPC service: a thin adapter between the Worker API and an Engine.

Lifecycle: start the engine (slow), serve gRPC, register in Redis, then every report interval
push a LoadReport to the scheduler and refresh the heartbeat. On SIGTERM: mark draining, let
running requests finish (bounded), deregister, stop the engine.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from pathlib import Path
from typing import AsyncIterator

import grpc

from services.common import convert, grpcutil, metrics, runtime, store, tracing
from services.common.domain import FinishReason, InstanceLoad
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.keys import Keys
from services.common.pb.hfx.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from services.worker.config import WorkerConfig
from services.worker.engine import make_engine
from services.worker.engine.base import (Engine, EngineRequest, LoadsWeights, MeasuresKvTransfer, ReportsHealth,
                                         ReportsWeights, TransfersKv, describe_weights)
from services.worker.interference import PrefillLedger
from services.worker.kv import params as kv_params
from services.worker.reporting import report_loop
from services.worker.role_change import RoleChanger
from services.worker.session import WorkerSession
from services.worker.standby_weights import StandbyWeights
from services.worker.trace_spans import LegTimes, record_kv_pull, record_leg

log = logging.getLogger("hfx.worker")
_tracer = tracing.tracer("hfx.worker")
SERVICE_NAME = "hfx.v1.Worker"
STAGED_REMEMBERED = 4096


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, engine: Engine, info: common_pb2.Instance, standby: bool = False,
                 session_coalesce_s: float = 0.0, roles: RoleChanger | None = None) -> None:
        self.engine = engine
        self.info = info
        self.roles = roles or RoleChanger(info, engine, heartbeat_ttl_s=5.0)
        self.session_coalesce_s = session_coalesce_s
        # A standby worker's engine holds dummy weights until LoadWeights: it serves nothing before.
        self.weights = StandbyWeights(engine, info.instance_id, standby)
        self.weights_loaded = self.weights.loaded
        self.draining = False
        self.inflight: dict[str, common_pb2.RunningEntry] = {}   # what load reports list
        self.preempted: dict[str, str] = {}  # request id -> the scheduler's reason
        self.prefills = PrefillLedger()  # whose prefills ran alongside whom, for the spans
        # P/D: prefill legs that staged KV here, request id -> transfer id, so that an abort that
        # comes after the leg ended still frees the staged KV (bounded: the lease frees it anyway).
        self.staged: collections.OrderedDict[str, str] = collections.OrderedDict()

    def load_report(self) -> common_pb2.LoadReport:
        stats = self.engine.stats()
        load = InstanceLoad(
            running_requests=stats.running_requests, waiting_requests=stats.waiting_requests,
            kv_usage=stats.kv_usage, kv_capacity_tokens=stats.kv_capacity_tokens,
            recent_step_ms=tuple(stats.recent_step_ms), reported_s=time.time(), draining=self.draining,
            recent_steps=tuple(stats.recent_steps), steps_total=stats.steps_total,
            reports_step=stats.reports_step, step_in_flight=stats.step_in_flight,
        )
        report = convert.load_to_pb(self.info.instance_id, load)
        report.running.extend(self.inflight.values())
        report.lists_running = True
        return report

    async def Generate(self, request: worker_pb2.WorkerGenerateRequest, context: grpc.aio.ServicerContext):
        async for chunk in self.run(request, tracing.extract_context(context.invocation_metadata())):
            yield chunk

    async def Session(self, request_iterator, context: grpc.aio.ServicerContext):
        async for batch in WorkerSession(self.run, self.session_coalesce_s).serve(request_iterator):
            yield batch

    async def run(self, request: worker_pb2.WorkerGenerateRequest, parent) -> AsyncIterator[worker_pb2.WorkerChunk]:
        """One request on the engine, as chunks; raises InvalidArgument or Unavailable before the
        first chunk. Shared by Generate (a stream of its own) and Session (multiplexed)."""
        if self.draining:
            raise Unavailable(f"instance {self.info.instance_id} is draining")
        if not self.weights_loaded.is_set():
            raise Unavailable(f"instance {self.info.instance_id} is a standby without weights (LoadWeights first)")
        if not request.prompt_token_ids:
            raise InvalidArgument("prompt_token_ids", "must not be empty")
        if request.request_id in self.inflight:
            raise InvalidArgument("request_id", f"{request.request_id!r} is already running here")
        with tracing.detached_span(_tracer, tracing.SPAN_WORKER, parent) as (span, leg_ctx):
            span.set_attribute(tracing.ATTR_REQUEST_ID, request.request_id)
            span.set_attribute(tracing.ATTR_INSTANCE, self.info.instance_id)
            span.set_attribute(tracing.ATTR_PROMPT_TOKENS, len(request.prompt_token_ids))
            leg, finished = LegTimes(), False
            kv = self._kv_params(request)
            sampling = convert.sampling_from_pb(request.sampling)
            if kv is not None and kv.do_remote_decode:
                sampling = dataclasses.replace(sampling, max_tokens=1)  # the prefill leg: one token, then stage
                span.set_attribute("hfx.pd.leg", "prefill")
            elif kv is not None:
                span.set_attribute("hfx.pd.leg", "decode")
                span.set_attribute(tracing.ATTR_KV_TRANSFER_ID, kv.transfer_id)
            pull_of = kv if kv is not None and kv.do_remote_prefill else None  # D's pull to record once it ended
            engine_request = EngineRequest(
                request_id=request.request_id,
                prompt_token_ids=list(request.prompt_token_ids),
                sampling=sampling,
                priority=request.priority,
                kv=kv,
            )
            entry = self.inflight[request.request_id] = common_pb2.RunningEntry(
                request_id=request.request_id, prompt_tokens=len(request.prompt_token_ids),
                max_tokens=request.sampling.max_tokens, slo=request.slo, priority=request.priority,
                started_unix_s=time.time())
            self.prefills.started(request.request_id, len(request.prompt_token_ids), time.time())
            produced, ended = 0, False
            try:
                # The engine aborts its request in its own finally when this loop is cancelled
                # (client gone, router abort), so nothing keeps decoding for nobody.
                async for out in self.engine.generate(engine_request):
                    produced += len(out.new_token_ids)
                    entry.output_tokens = produced
                    if leg.on_tokens(len(out.new_token_ids), time.time()) and leg.first_s is not None:
                        self.prefills.first_token(request.request_id, leg.first_s)
                        span.add_event(tracing.EVENT_FIRST_TOKEN)
                        if pull_of is not None and self._record_pull(leg_ctx, request.request_id, pull_of):
                            pull_of = None
                    finish = convert.finish_to_pb(out.finish_reason)
                    finished = finished or out.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
                    if out.finished and request.request_id in self.preempted:
                        finish, finished = common_pb2.FINISH_REASON_PREEMPTED, False
                        span.add_event(tracing.EVENT_PREEMPTED, {"reason": self.preempted[request.request_id],
                                                                 "output_tokens": produced})
                    chunk = worker_pb2.WorkerChunk(
                        token_ids=out.new_token_ids, text=out.text_delta, finished=out.finished,
                        finish_reason=finish, prompt_tokens=out.prompt_tokens,
                    )
                    if out.kv is not None and out.kv.transfer_id:
                        chunk.kv_transfer.CopyFrom(kv_params.to_pb(out.kv))
                        self._remember_staged(request.request_id, out.kv.transfer_id)
                        span.set_attribute(tracing.ATTR_KV_TRANSFER_ID, out.kv.transfer_id)
                        span.set_attribute("hfx.kv.staged_blocks", out.kv.num_blocks)
                    yield chunk
                    ended = ended or out.finished
                if not ended and request.request_id in self.preempted:  # ended with no last output
                    yield worker_pb2.WorkerChunk(finished=True, finish_reason=common_pb2.FINISH_REASON_PREEMPTED)
            finally:
                if pull_of is not None:  # the leg ended before its first token
                    self._record_pull(leg_ctx, request.request_id, pull_of)
                self.inflight.pop(request.request_id, None)
                self.preempted.pop(request.request_id, None)
                span.set_attribute(tracing.ATTR_OUTPUT_TOKENS, produced)
                record_leg(span, request, leg, finished, self.prefills.ended(request.request_id, time.time()))
                metrics.WORKER_TOKENS.labels(self.info.instance_id).inc(produced)

    def _record_pull(self, parent, request_id: str, kv: kv_params.KvParams) -> bool:
        """The decode leg's pull of `kv` (connector.py reports it before the load is done) as a
        kv.transfer span and in the pull-duration histogram; False while it is not reported yet.
        A leg with KV params runs only on an engine that transfers KV (`_kv_params`)."""
        assert isinstance(self.engine, TransfersKv)
        pull = self.engine.kv_pull(kv.transfer_id)
        if pull is None:
            return False
        record_kv_pull(_tracer, parent, request_id, self.info.instance_id, kv.remote_address, pull)
        metrics.observe_kv_pull(self.info.instance_id, pull)
        return True

    def _kv_params(self, request: worker_pb2.WorkerGenerateRequest) -> kv_params.KvParams | None:
        if not request.HasField("kv_transfer"):
            return None
        try:
            kv = kv_params.from_pb(request.kv_transfer)
        except kv_params.BadKvParams as err:
            raise InvalidArgument("kv_transfer", str(err)) from None
        if kv.active and not (isinstance(self.engine, TransfersKv) and self.engine.kv_address):
            raise FailedPrecondition(f"instance {self.info.instance_id} does not transfer KV (start it with --kv-transfer)")
        return kv if kv.active else None

    def _remember_staged(self, request_id: str, transfer_id: str) -> None:
        self.staged[request_id] = transfer_id
        while len(self.staged) > STAGED_REMEMBERED:
            self.staged.popitem(last=False)

    async def Abort(self, request: worker_pb2.WorkerAbortRequest, context) -> worker_pb2.WorkerAbortResponse:
        with _tracer.start_as_current_span(tracing.SPAN_WORKER_ABORT,
                                           context=tracing.extract_context(context.invocation_metadata())) as span:
            span.set_attribute(tracing.ATTR_REQUEST_ID, request.request_id)
            span.set_attribute(tracing.ATTR_INSTANCE, self.info.instance_id)
            span.set_attribute(tracing.ATTR_REASON, request.reason)
            running = self.inflight.get(request.request_id)
            if running is not None:
                tracing.set_slo_attributes(span, running.slo.ttft_ms, running.slo.tpot_ms)
            reply = await self._abort(request)
            span.set_attribute(tracing.ATTR_ABORT_FOUND, reply.found)
            return reply

    async def _abort(self, request: worker_pb2.WorkerAbortRequest) -> worker_pb2.WorkerAbortResponse:
        transfer_id = self.staged.pop(request.request_id, None)
        if transfer_id is not None and isinstance(self.engine, TransfersKv):
            # The prefill leg is over; its staged KV is what the abort frees.
            try:
                return worker_pb2.WorkerAbortResponse(found=await self.engine.release_kv(transfer_id))
            except Exception as err:  # the lease frees it anyway
                log.warning("releasing staged KV %s failed: %s", transfer_id, err)
                return worker_pb2.WorkerAbortResponse(found=False)
        found = request.request_id in self.inflight
        if found:
            if request.preempt:
                self.preempted[request.request_id] = request.reason or "preempted by the scheduler"
            found = await self.engine.abort(request.request_id)
            if not found:  # it ended on its own meanwhile
                self.preempted.pop(request.request_id, None)
        return worker_pb2.WorkerAbortResponse(found=found)

    async def GetLoad(self, request, context) -> common_pb2.LoadReport:
        return self.load_report()

    async def GetInfo(self, request, context) -> common_pb2.Instance:
        info = common_pb2.Instance()
        info.CopyFrom(self.info)
        info.load.CopyFrom(self.load_report())
        return info

    async def LoadWeights(self, request: worker_pb2.LoadWeightsRequest, context) -> worker_pb2.LoadWeightsResponse:
        return await self.weights.load(request, context)

    async def PrepareWeights(self, request: worker_pb2.PrepareWeightsRequest, context
                             ) -> worker_pb2.PrepareWeightsResponse:
        return await self.weights.prepare(request, context)

    async def SetRole(self, request: worker_pb2.SetRoleRequest, context) -> worker_pb2.SetRoleResponse:
        return await self.roles.change(request, len(self.inflight),
                                       tracing.extract_context(context.invocation_metadata()))

    async def Drain(self, request, context) -> worker_pb2.DrainResponse:
        self.draining = True
        return worker_pb2.DrainResponse(remaining=len(self.inflight))


async def _profile_at_start(config: WorkerConfig, engine: Engine) -> dict | None:
    if not config.profile_at_start:
        return None
    from services.worker.profile import startup_profile

    started = time.monotonic()
    try:
        profile = await startup_profile(engine, config.engine, config.model, config.max_num_seqs)
    except Exception as err:  # serve anyway: the scheduler falls back to its default model
        log.warning("profiling at start failed, serving without a fitted model: %s", err)
        return None
    m = profile["model"]
    if isinstance(engine, MeasuresKvTransfer) and isinstance(engine, TransfersKv) and engine.kv_address:
        try:
            profile["kv_transfer"] = await engine.measure_kv_transfer()
            m["kv_transfer_ms_per_token"] = profile["kv_transfer"]["ms_per_token"]
            log.info("KV transfer measured: %(ms).2f ms for %(tokens)d tokens (%(bytes)d bytes, %(staging)s)",
                     profile["kv_transfer"])
        except Exception as err:  # the scheduler then charges its default per-token cost
            log.warning("measuring the KV transfer failed: %s", err)
    log.info("latency model (%s, %.1fs): step_ms = %.3g + %.3g*prefill + %.3g*decode_seqs + %.3g*kv_tokens%s",
             profile["source"], time.monotonic() - started, m["c0_ms"], m["c1_ms_per_prefill_token"],
             m["c2_ms_per_decode_seq"], m["c3_ms_per_kv_token"],
             f" (R^2 {profile['fit']['r2']:.3f}, MAPE {profile['fit']['mape']:.1%})" if "fit" in profile else "")
    return profile


async def _serve_weights(config: WorkerConfig) -> str:
    """Start this worker's weight stream (a donor); returns its address, or "" when it cannot."""
    from services.worker.weights.source import CheckpointSource
    from services.worker.weights.transport import TransportUnavailable, transport_for

    try:
        transport = transport_for(config.device)
    except TransportUnavailable as err:
        log.warning("not serving weights: %s", err)
        return ""
    started = time.monotonic()
    try:
        source = await asyncio.get_running_loop().run_in_executor(None, CheckpointSource.load, Path(config.model))
        handle = transport.serve(source, config.host, config.weights_port)
    except Exception as err:  # serving tokens matters more than donating weights
        log.warning("not serving weights: %s", err)
        return ""
    log.info("serving weights on %s (%s, %.0f MB in memory, %d tensors, read in %.2fs, model %s)", handle.address,
             transport.name, source.nbytes / 1e6, source.tensor_count, time.monotonic() - started, source.identity[:12])
    return handle.address


async def serve(config: WorkerConfig, engine: Engine | None = None) -> None:
    entered_unix_s = time.time()
    tracing.setup("hfx-worker", config.tracing)
    metrics.serve_http(config.metrics_port, config.host)  # same address as gRPC, so other hosts can scrape
    engine = engine or make_engine(config.engine, config)
    if config.standby and not isinstance(engine, LoadsWeights):
        raise ValueError(f"--standby needs an engine that loads weights apart (vllm), not {config.engine!r}")
    started = time.monotonic()
    await engine.start()
    engine_ready_s = time.monotonic()
    log.info("engine %s ready in %.1fs (max_model_len %d)", config.engine, engine_ready_s - started, engine.max_model_len)
    profile = await _profile_at_start(config, engine)

    server, health = grpcutil.make_server([], [SERVICE_NAME])
    port = grpcutil.bind(server, config.host, config.port)
    info = common_pb2.Instance(
        instance_id=config.instance_id, address=f"{config.host}:{port}", role=convert.role_to_pb(config.role),
        model=config.model, engine=config.engine, device=config.device, max_model_len=engine.max_model_len,
    )
    roles = RoleChanger(info, engine, config.heartbeat_ttl_s, config.pd_local_prefill)
    servicer = WorkerServicer(engine, info, standby=config.standby,
                              session_coalesce_s=config.session_coalesce_ms / 1000.0, roles=roles)
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    await server.start()
    await grpcutil.set_serving(health, [SERVICE_NAME])
    # From here SIGTERM drains (before, it ends the process: nothing is served yet).
    stop = runtime.stop_on_signals()
    # Before registering (a standby: before its wait): the full collection over the engine's
    # start-up heap blocks this loop for 0.5-0.8 s here, which a request placed on a worker
    # that just registered would wait out.
    runtime.started()
    if config.standby:
        log.info("standby on %s: engine up with dummy weights, not registered; waiting for LoadWeights", info.address)
        waiter = asyncio.create_task(servicer.weights_loaded.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel(), stopper.cancel()
        if stop.is_set():
            await server.stop(grace=1.0)
            await engine.shutdown()
            return
        engine_ready_s = time.monotonic()  # registration counts from the end of the load
    if isinstance(engine, ReportsWeights):
        info.weights_source = describe_weights(engine.weights_report)
        info.startup_s.update(engine.timings)

    cluster = store.ClusterStore(store.connect(config.redis_url), Keys(config.redis_prefix))
    # Registration: the phase from a ready engine (and weights) to being placeable.
    info.startup_s["registration_s"] = time.monotonic() - engine_ready_s
    info.startup_s["entered_unix_s"] = entered_unix_s
    info.registered_unix_s = time.time()
    await cluster.register(info, config.heartbeat_ttl_s)
    roles.cluster = cluster   # from here its role may change (SetRole writes the registry)
    if profile is not None:
        await cluster.put_profile(config.instance_id, profile)  # the scheduler's model for this instance
    reporter = asyncio.create_task(report_loop(config, servicer, cluster, profile))
    if config.serve_weights:  # after registering: serving first; the heartbeat then advertises it
        donor = asyncio.create_task(_serve_weights(config))
        donor.add_done_callback(lambda t: setattr(info, "weights_address", t.result()))
    failed: list[str] = []
    watchdog = asyncio.create_task(_watch_engine(engine, stop, failed, config.engine_check_s))
    log.info("worker %s serving on %s; weights from %s; start-up %s", config.instance_id, info.address,
             info.weights_source or "n/a", {k: round(v, 3) for k, v in info.startup_s.items()})
    await stop.wait()
    watchdog.cancel()

    # Drain: refuse new work, let running requests finish (bounded), then leave the registry.
    servicer.draining = True
    await grpcutil.set_serving(health, [SERVICE_NAME], serving=False)
    deadline = time.monotonic() + (0.0 if failed else config.drain_timeout_s)   # a dead engine finishes nothing
    while servicer.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    reporter.cancel()
    try:
        await cluster.deregister(config.instance_id)
    except Exception as err:
        log.warning("deregister failed (the heartbeat TTL will expire it): %s", err)
    await server.stop(grace=1.0)
    await engine.shutdown()
    tracing.shutdown()
    if failed:   # a non-zero exit: whoever launched the worker (the scaler) starts a new one
        raise EngineFailed(failed[0])


class EngineFailed(RuntimeError):
    """The worker's engine can no longer serve; the worker left the registry and exits."""


async def _watch_engine(engine: Engine, stop: asyncio.Event, failed: list[str], every_s: float) -> None:
    """Health reflects the engine, not only this process: an engine that died (vLLM's engine core
    killed, crashed) ends the worker like SIGTERM does (no new work, deregistered at once), then
    the worker exits with an error so it is replaced."""
    if not isinstance(engine, ReportsHealth):
        return
    while not stop.is_set():
        await asyncio.sleep(every_s)
        why = engine.failure()
        if why is not None:
            log.error("engine failed (%s): leaving the registry and exiting so a new worker replaces this one", why)
            failed.append(why)
            stop.set()
            return
