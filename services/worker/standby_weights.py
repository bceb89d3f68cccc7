"""A standby worker's weights (issue 12): its engine runs on dummy weights and serves nothing until
LoadWeights pulls them from a donor (or reads storage), once; PrepareWeights maps a donor's
weights ahead of that pull. Both leave a span with the donor and the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Iterator

from opentelemetry import trace
from opentelemetry.trace import Span

from services.common import tracing
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.pb.hfx.v1 import worker_pb2
from services.worker.engine.base import Engine, LoadsWeights, PreparesPull, describe_weights

_tracer = trace.get_tracer("hfx.worker")


def check_donor_address(value: str) -> None:
    """INVALID_ARGUMENT unless HOST:PORT."""
    from services.argtypes import address

    try:
        address(value)
    except Exception as err:
        raise InvalidArgument("donor_address", str(err)) from None


class StandbyWeights:
    def __init__(self, engine: Engine, instance_id: str, standby: bool) -> None:
        self.engine, self.instance_id = engine, instance_id
        self.loaded = asyncio.Event()   # set: the worker serves (always, unless it started as a standby)
        if not standby:
            self.loaded.set()
        self._loading = False

    async def load(self, request: worker_pb2.LoadWeightsRequest, context) -> worker_pb2.LoadWeightsResponse:
        with self._span(tracing.SPAN_LOAD_WEIGHTS, request.donor_address, context) as span:
            reply = await self._load(request)
            span.set_attribute(tracing.ATTR_WEIGHTS_SOURCE, reply.weights_source)
            span.set_attribute(tracing.ATTR_WEIGHTS_SECONDS, reply.load_s)
            return reply

    async def prepare(self, request: worker_pb2.PrepareWeightsRequest, context) -> worker_pb2.PrepareWeightsResponse:
        with self._span(tracing.SPAN_PREPARE_WEIGHTS, request.donor_address, context) as span:
            reply = await self._prepare(request)
            span.set_attribute(tracing.ATTR_WEIGHTS_PREPARED, reply.prepared)
            span.set_attribute(tracing.ATTR_WEIGHTS_SECONDS, reply.seconds)
            span.set_attribute(tracing.ATTR_REASON, reply.detail)
            return reply

    @contextlib.contextmanager
    def _span(self, name: str, donor: str, context) -> Iterator[Span]:
        parent = tracing.extract_context(context.invocation_metadata() if context is not None else None)
        with _tracer.start_as_current_span(name, context=parent) as span:
            span.set_attribute(tracing.ATTR_INSTANCE, self.instance_id)
            span.set_attribute(tracing.ATTR_WEIGHTS_DONOR, donor)
            yield span

    def _waiting_engine(self) -> LoadsWeights:
        if self.loaded.is_set() or self._loading or not isinstance(self.engine, LoadsWeights):
            raise FailedPrecondition(f"instance {self.instance_id} is not a standby waiting for weights")
        return self.engine

    async def _load(self, request: worker_pb2.LoadWeightsRequest) -> worker_pb2.LoadWeightsResponse:
        engine = self._waiting_engine()
        if request.donor_address:
            check_donor_address(request.donor_address)
        self._loading = True
        started = time.monotonic()
        try:
            engine.timings["weight_load_started_unix_s"] = time.time()
            if request.donor_address:
                await engine.pull_weights(request.donor_address)
            else:
                await engine.load_from_storage()
            engine.timings["weight_load_s"] = time.monotonic() - started
            engine.timings["weight_load_ended_unix_s"] = time.time()
        finally:
            self._loading = False
        self.loaded.set()
        return worker_pb2.LoadWeightsResponse(weights_source=describe_weights(engine.weights_report),
                                              load_s=engine.timings["weight_load_s"])

    async def _prepare(self, request: worker_pb2.PrepareWeightsRequest) -> worker_pb2.PrepareWeightsResponse:
        engine = self._waiting_engine()
        check_donor_address(request.donor_address)
        if not isinstance(engine, PreparesPull):
            return worker_pb2.PrepareWeightsResponse(prepared=False, detail="this engine has nothing to do ahead")
        report = await engine.prepare_pull(request.donor_address)
        detail = (f"{report.get('files', 0)} file(s), {report.get('bytes', 0) / 1e6:.1f} MB of {request.donor_address} "
                  f"mapped and faulted in" if report.get("prepared") else str(report.get("reason", "")))
        return worker_pb2.PrepareWeightsResponse(prepared=bool(report.get("prepared")), detail=detail,
                                                 seconds=float(report.get("seconds", 0.0)))
