"""A standby worker's servicer: nothing served before LoadWeights, one load only, bad input refused.

The engine here is a stand-in for VllmEngine's weight-loading surface (the code under test is the
servicer); the real pull is tested against vLLM in tests/integration/test_d2d_weights.py."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.pb.hfx.v1 import common_pb2, worker_pb2
from services.worker.engine.base import ReportsWeights
from services.worker.server import WorkerServicer


class WeightsEngine:
    max_model_len = 64

    def __init__(self) -> None:
        self.weights_report = {"source": "none (standby, dummy weights)"}
        self.timings: dict[str, float] = {}
        self.pulls: list[str] = []

    async def pull_weights(self, address: str) -> dict:
        self.pulls.append(address)
        self.weights_report = {"source": "donor", "address": address}
        return self.weights_report

    async def load_from_storage(self) -> dict:
        self.pulls.append("storage")
        self.weights_report = {"source": "storage"}
        return self.weights_report


def request() -> worker_pb2.WorkerGenerateRequest:
    return worker_pb2.WorkerGenerateRequest(request_id="r", prompt_token_ids=[1, 2],
                                            sampling=common_pb2.SamplingParams(max_tokens=1))


def test_standby_serves_nothing_until_loaded_then_loads_once():
    async def scenario():
        engine = WeightsEngine()
        assert isinstance(engine, ReportsWeights)
        servicer = WorkerServicer(engine, common_pb2.Instance(instance_id="s0"), standby=True)
        with pytest.raises(Unavailable, match="standby without weights"):
            await servicer.run(request(), None).__anext__()
        with pytest.raises(InvalidArgument, match="donor_address"):
            await servicer.LoadWeights(worker_pb2.LoadWeightsRequest(donor_address="nohostport"), None)
        reply = await servicer.LoadWeights(worker_pb2.LoadWeightsRequest(donor_address="127.0.0.1:7001"), None)
        assert reply.weights_source == "donor 127.0.0.1:7001" and reply.load_s >= 0
        assert servicer.weights_loaded.is_set() and engine.pulls == ["127.0.0.1:7001"]
        with pytest.raises(FailedPrecondition):
            await servicer.LoadWeights(worker_pb2.LoadWeightsRequest(), None)
        assert engine.pulls == ["127.0.0.1:7001"]

    asyncio.run(scenario())


def test_a_worker_that_is_not_standby_refuses_load_weights():
    async def scenario():
        servicer = WorkerServicer(WeightsEngine(), common_pb2.Instance(instance_id="w0"))
        with pytest.raises(FailedPrecondition, match="not a standby"):
            await servicer.LoadWeights(worker_pb2.LoadWeightsRequest(), None)

    asyncio.run(scenario())


def test_empty_donor_means_storage():
    async def scenario():
        engine = WeightsEngine()
        servicer = WorkerServicer(engine, common_pb2.Instance(instance_id="s1"), standby=True)
        reply = await servicer.LoadWeights(worker_pb2.LoadWeightsRequest(), None)
        assert engine.pulls == ["storage"] and reply.weights_source == "storage"

    asyncio.run(scenario())


class PreparingEngine(WeightsEngine):
    def __init__(self, prepared: bool) -> None:
        super().__init__()
        self.prepared = prepared
        self.prepares: list[str] = []

    async def prepare_pull(self, address: str) -> dict:
        self.prepares.append(address)
        if not self.prepared:
            return {"prepared": False, "reason": "no-shm: no shared-memory donor here", "seconds": 0.01}
        return {"prepared": True, "files": 1, "bytes": 2_000_000, "seconds": 0.25}


def test_prepare_weights_is_for_standbys_with_a_well_formed_donor_and_says_what_it_did():
    async def scenario():
        engine = PreparingEngine(prepared=True)
        servicer = WorkerServicer(engine, common_pb2.Instance(instance_id="s2"), standby=True)
        with pytest.raises(InvalidArgument, match="donor_address"):
            await servicer.PrepareWeights(worker_pb2.PrepareWeightsRequest(donor_address=""), None)
        reply = await servicer.PrepareWeights(worker_pb2.PrepareWeightsRequest(donor_address="127.0.0.1:7001"), None)
        assert reply.prepared and reply.seconds == 0.25 and "2.0 MB of 127.0.0.1:7001" in reply.detail
        assert engine.prepares == ["127.0.0.1:7001"] and not servicer.weights_loaded.is_set()
        await servicer.LoadWeights(worker_pb2.LoadWeightsRequest(donor_address="127.0.0.1:7001"), None)
        with pytest.raises(FailedPrecondition):  # loaded: nothing left to prepare
            await servicer.PrepareWeights(worker_pb2.PrepareWeightsRequest(donor_address="127.0.0.1:7001"), None)

        failing = PreparingEngine(prepared=False)
        servicer = WorkerServicer(failing, common_pb2.Instance(instance_id="s3"), standby=True)
        reply = await servicer.PrepareWeights(worker_pb2.PrepareWeightsRequest(donor_address="127.0.0.1:7001"), None)
        assert not reply.prepared and "no shared-memory donor" in reply.detail

        plain = WorkerServicer(WeightsEngine(), common_pb2.Instance(instance_id="s4"), standby=True)
        reply = await plain.PrepareWeights(worker_pb2.PrepareWeightsRequest(donor_address="127.0.0.1:7001"), None)
        assert not reply.prepared and "nothing to do ahead" in reply.detail

    asyncio.run(scenario())


def test_load_weights_leaves_a_span_with_its_donor_and_source(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.common import tracing
    from services.worker import standby_weights

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(standby_weights, "_tracer", provider.get_tracer("test"))

    async def scenario():
        servicer = WorkerServicer(WeightsEngine(), common_pb2.Instance(instance_id="s0"), standby=True)
        await servicer.LoadWeights(worker_pb2.LoadWeightsRequest(donor_address="127.0.0.1:7001"), None)
        with pytest.raises(FailedPrecondition):   # a second load is refused, and its span says so
            await servicer.LoadWeights(worker_pb2.LoadWeightsRequest(), None)

    asyncio.run(scenario())
    first, second = exporter.get_finished_spans()
    assert first.name == tracing.SPAN_LOAD_WEIGHTS
    assert first.attributes[tracing.ATTR_INSTANCE] == "s0"
    assert first.attributes[tracing.ATTR_WEIGHTS_DONOR] == "127.0.0.1:7001"
    assert first.attributes[tracing.ATTR_WEIGHTS_SOURCE] == "donor 127.0.0.1:7001"
    assert not second.status.is_ok and tracing.ATTR_WEIGHTS_SOURCE not in second.attributes
