"""Router gRPC service: validation and admission, then tokens straight from the worker to the client.

Per request: validate + tokenise -> Scheduler.Place (bounded wait) -> Worker.Generate stream ->
deltas to the client -> final result with measured TTFT/TPOT -> Scheduler.Complete. Tokens never
pass through the scheduler. A worker that fails or goes silent mid-stream ends the request with
UNAVAILABLE within the idle timeout; the scheduler is told so it stops counting the request.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import uuid
from dataclasses import dataclass

import grpc

from services.common import convert, grpcutil, tracing
from services.common.domain import FinishReason, RequestSpec, Verdict
from services.common.errors import NotFound, Rejected, Unavailable
from services.common.pb.hfx.v1 import (
    router_pb2, router_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc,
)
from services.router.config import RouterConfig
from services.router.metrics import StreamTimer
from services.router.tokenizer import Tokenizer
from services.router.validate import Limits, ValidRequest, validate

log = logging.getLogger("hfx.router")
_tracer = tracing.tracer("hfx.router")
SERVICE_NAME = "hfx.v1.Router"


@dataclass
class Active:
    call: grpc.aio.UnaryStreamCall | None = None
    aborted: bool = False


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, config: RouterConfig, tokenizer: Tokenizer, scheduler: scheduler_pb2_grpc.SchedulerStub) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.classes = {c.name: c for c in config.classes}
        self.limits = Limits(
            vocab_size=tokenizer.vocab_size, max_model_len=tokenizer.max_model_len,
            default_max_tokens=config.default_max_tokens, max_prompt_bytes=config.max_prompt_bytes,
            max_stop_strings=config.max_stop_strings,
        )
        self._workers: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._active: dict[str, Active] = {}  # by request id and by client request id
        self._background: set[asyncio.Task] = set()

    def _worker(self, address: str) -> worker_pb2_grpc.WorkerStub:
        if address not in self._workers:
            self._workers[address] = worker_pb2_grpc.WorkerStub(grpcutil.aio_channel(address))
        return self._workers[address]

    async def _place(self, spec: RequestSpec) -> scheduler_pb2.Placement:
        try:
            return await self.scheduler.Place(
                convert.spec_to_pb(spec), timeout=self.config.place_timeout_s, metadata=grpcutil.outgoing_metadata()
            )
        except grpc.aio.AioRpcError as err:
            raise Unavailable(f"scheduler unavailable: {err.code().name}: {err.details()}") from None

    def _complete_later(self, spec: RequestSpec, instance_id: str, outcome: int, timer: StreamTimer, met: bool) -> None:
        """Tells the scheduler the request ended, off the client's path, bounded by a timeout."""
        msg = scheduler_pb2.CompleteRequest(
            request_id=spec.request_id, instance_id=instance_id, outcome=outcome, ttft_ms=timer.ttft_ms,
            tpot_ms=timer.tpot_ms, output_tokens=timer.tokens, slo_met=met, task_class=spec.task_class,
        )

        async def send() -> None:
            try:
                await self.scheduler.Complete(msg, timeout=self.config.scheduler_call_timeout_s)
            except grpc.aio.AioRpcError as err:
                log.warning("complete %s not delivered: %s", spec.request_id, err.code().name)

        task = asyncio.create_task(send())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def Generate(self, request: router_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        arrival_s = time.time()
        parent = tracing.extract_context(context.invocation_metadata())
        with _tracer.start_as_current_span("router.generate", context=parent) as span:
            valid = validate(request, self.tokenizer.encode, self.classes, self.limits)
            spec = RequestSpec(
                request_id=f"r-{uuid.uuid4().hex[:16]}", prompt_tokens=len(valid.prompt_token_ids),
                max_tokens=valid.sampling.max_tokens, slo=valid.slo, priority=valid.priority,
                task_class=valid.task_class, tenant=valid.tenant, arrival_s=arrival_s,
            )
            for key, value in (
                (tracing.ATTR_REQUEST_ID, spec.request_id), (tracing.ATTR_TTFT_SLO_MS, spec.slo.ttft_ms),
                (tracing.ATTR_TPOT_SLO_MS, spec.slo.tpot_ms), (tracing.ATTR_PRIORITY, spec.priority),
                (tracing.ATTR_TASK_CLASS, spec.task_class), (tracing.ATTR_PROMPT_TOKENS, spec.prompt_tokens),
            ):
                span.set_attribute(key, value)
            placement = await self._place(spec)
            verdict = convert.verdict_from_pb(placement.verdict)
            span.set_attribute(tracing.ATTR_VERDICT, verdict.value)
            span.set_attribute(tracing.ATTR_REASON, placement.reason)
            if verdict is Verdict.REJECT or (verdict is Verdict.BEST_EFFORT and valid.on_miss == "reject"):
                if verdict is Verdict.BEST_EFFORT:  # placed, but this class prefers a fast no
                    self._complete_later(spec, placement.instance_id, scheduler_pb2.OUTCOME_ABORTED, StreamTimer(arrival_s), False)
                span.set_attribute(tracing.ATTR_SLO_MET, False)
                raise Rejected(placement.reason, placement.retry_after_ms)
            span.set_attribute(tracing.ATTR_INSTANCE, placement.instance_id)
            await context.send_initial_metadata(
                (("x-hfx-request-id", spec.request_id), ("x-hfx-instance", placement.instance_id))
            )
            async for item in self._stream(spec, valid, placement, context, span):
                yield item

    async def _stream(self, spec: RequestSpec, valid: ValidRequest, placement: scheduler_pb2.Placement, context, span):
        timer = StreamTimer(spec.arrival_s)
        active = Active()
        keys = [spec.request_id] + ([valid.client_request_id] if valid.client_request_id else [])
        for k in keys:
            self._active[k] = active
        outcome, finish = scheduler_pb2.OUTCOME_FAILED, FinishReason.ERROR
        try:
            active.call = self._worker(placement.address).Generate(
                worker_pb2.WorkerGenerateRequest(
                    request_id=spec.request_id, prompt_token_ids=valid.prompt_token_ids,
                    sampling=convert.sampling_to_pb(valid.sampling), priority=spec.priority,
                    slo=convert.slo_to_pb(spec.slo),
                ),
                metadata=grpcutil.outgoing_metadata(),
            )
            while True:
                idle = self.config.first_token_timeout_s if timer.tokens == 0 else self.config.token_idle_timeout_s
                try:
                    chunk = await asyncio.wait_for(active.call.read(), timeout=idle)
                except asyncio.TimeoutError:
                    raise Unavailable(
                        f"instance {placement.instance_id} sent nothing for {idle:.0f}s after {timer.tokens} tokens"
                    ) from None
                except asyncio.CancelledError:
                    if not active.aborted:
                        raise
                    outcome, finish = scheduler_pb2.OUTCOME_ABORTED, FinishReason.ABORT
                    break
                except grpc.aio.AioRpcError as err:
                    if active.aborted:
                        outcome, finish = scheduler_pb2.OUTCOME_ABORTED, FinishReason.ABORT
                        break
                    raise Unavailable(
                        f"instance {placement.instance_id} failed after {timer.tokens} tokens: "
                        f"{err.code().name}: {err.details()}"
                    ) from None
                if chunk is grpc.aio.EOF:
                    raise Unavailable(f"instance {placement.instance_id} closed the stream without finishing")
                now = time.time()
                timer.on_tokens(len(chunk.token_ids), now)
                if chunk.token_ids or chunk.text:
                    yield router_pb2.GenerateResponse(
                        delta=router_pb2.TokenDelta(token_ids=chunk.token_ids, text=chunk.text, emitted_unix_s=now)
                    )
                if chunk.finished:
                    outcome = scheduler_pb2.OUTCOME_FINISHED
                    finish = convert.finish_from_pb(chunk.finish_reason) or FinishReason.STOP
                    break
            met = outcome == scheduler_pb2.OUTCOME_FINISHED and timer.slo_met(spec.slo)
            yield router_pb2.GenerateResponse(final=self._final(spec, placement, timer, met, finish))
        finally:
            for k in keys:
                self._active.pop(k, None)
            if active.call is not None:
                active.call.cancel()  # no-op when finished; stops the worker when the client left
            met = outcome == scheduler_pb2.OUTCOME_FINISHED and timer.slo_met(spec.slo)
            self._complete_later(spec, placement.instance_id, outcome, timer, met)
            span.set_attribute(tracing.ATTR_TTFT_MS, timer.ttft_ms)
            span.set_attribute(tracing.ATTR_TPOT_MS, timer.tpot_ms)
            span.set_attribute(tracing.ATTR_OUTPUT_TOKENS, timer.tokens)
            span.set_attribute(tracing.ATTR_SLO_MET, met)
            if not met:
                span.add_event("slo_missed", {"ttft_ms": timer.ttft_ms, "tpot_ms": timer.tpot_ms, "outcome": outcome})
            log.info("%s %s on %s: %d tokens ttft %.1fms tpot %.1fms slo_met=%s", spec.request_id,
                     scheduler_pb2.Outcome.Name(outcome), placement.instance_id, timer.tokens, timer.ttft_ms,
                     timer.tpot_ms, met)

    def _final(self, spec, placement, timer: StreamTimer, met: bool, finish: FinishReason) -> router_pb2.FinalResult:
        return router_pb2.FinalResult(
            request_id=spec.request_id,
            usage=router_pb2.Usage(prompt_tokens=spec.prompt_tokens, completion_tokens=timer.tokens),
            ttft_ms=timer.ttft_ms, tpot_ms=timer.tpot_ms, e2e_ms=timer.e2e_ms(time.time()), slo_met=met,
            finish_reason=convert.finish_to_pb(finish), instance_id=placement.instance_id,
            placement_reason=placement.reason,
        )

    async def Abort(self, request: router_pb2.AbortRequest, context) -> router_pb2.AbortResponse:
        active = self._active.get(request.request_id)
        if active is None:
            raise NotFound(f"no running request {request.request_id!r}")
        active.aborted = True
        if active.call is not None:
            active.call.cancel()
        return router_pb2.AbortResponse(found=True)


async def serve(config: RouterConfig) -> None:
    tracing.setup("hfx-router", config.tracing)
    tokenizer = Tokenizer.load(config.model)
    scheduler = scheduler_pb2_grpc.SchedulerStub(grpcutil.aio_channel(config.scheduler_address))
    servicer = RouterServicer(config, tokenizer, scheduler)
    server, health = grpcutil.make_server([(router_pb2_grpc.add_RouterServicer_to_server, servicer)], [SERVICE_NAME])
    port = grpcutil.bind(server, config.host, config.port)
    await server.start()
    await grpcutil.set_serving(health, [SERVICE_NAME])
    log.info("router serving on %s:%d", config.host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2.0)
    tracing.shutdown()
