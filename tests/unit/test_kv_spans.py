"""The KV transfer in the request's trace: D's decode leg records a kv.transfer span (bytes,
blocks, ms, outcome, over the pull's own start and end) under its worker.generate span, from the
pull its connector reported to the worker's KV server (services/worker/kv/tcp.py PullLog)."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import metrics, tracing
from services.common.domain import FinishReason
from services.common.pb.hfx.v1 import common_pb2, worker_pb2
from services.worker import server as worker_server
from services.worker.engine.base import EngineOutput, EngineStats, TransfersKv
from services.worker.kv import tcp
from services.worker.server import WorkerServicer

PULL = {"transfer_id": "t-1", "outcome": "ok", "bytes": 3 * 262144, "blocks": 3, "ms": 1.5,
        "start_unix_s": 1000.0, "end_unix_s": 1000.002}


class PullingEngine:
    """A decode worker's engine whose connector reported one pull (the fake of the engine seam)."""

    max_model_len = 4096
    kv_address = "127.0.0.1:7010"

    def __init__(self, pulls: dict[str, dict]) -> None:
        self.pulls = pulls

    async def start(self) -> None:
        pass

    async def generate(self, req):
        yield EngineOutput([7], "a", False, None, len(req.prompt_token_ids))
        yield EngineOutput([8], "b", True, FinishReason.LENGTH, len(req.prompt_token_ids))

    async def abort(self, request_id: str) -> bool:
        return False

    def stats(self) -> EngineStats:
        return EngineStats()

    async def shutdown(self) -> None:
        pass

    async def release_kv(self, transfer_id: str) -> bool:
        return False

    async def kv_stats(self) -> dict:
        return {}

    def kv_pull(self, transfer_id: str) -> dict | None:
        return self.pulls.pop(transfer_id, None)


def run_leg(monkeypatch, engine, kv: worker_pb2.KvTransferParams | None) -> list:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(worker_server, "_tracer", provider.get_tracer("test"))
    req = worker_pb2.WorkerGenerateRequest(request_id="r-d", prompt_token_ids=[1, 2, 3],
                                           sampling=common_pb2.SamplingParams(max_tokens=3))
    if kv is not None:
        req.kv_transfer.CopyFrom(kv)

    async def scenario():
        servicer = WorkerServicer(engine, common_pb2.Instance(instance_id="d0"))
        return [chunk async for chunk in servicer.run(req, None)]

    assert len(asyncio.run(scenario())) == 2
    return exporter.get_finished_spans()


def decode_leg(tid: str = "t-1") -> worker_pb2.KvTransferParams:
    return worker_pb2.KvTransferParams(do_remote_prefill=True, remote_address="127.0.0.1:7001", transfer_id=tid,
                                       num_tokens=3)


def test_a_decode_leg_records_its_pull_as_a_kv_transfer_span_under_its_own(monkeypatch):
    engine = PullingEngine({"t-1": dict(PULL)})
    assert isinstance(engine, TransfersKv)
    spans = run_leg(monkeypatch, engine, decode_leg())
    (kv,) = [s for s in spans if s.name == tracing.SPAN_KV_TRANSFER]
    (leg,) = [s for s in spans if s.name == tracing.SPAN_WORKER]
    assert kv.name.startswith(tracing.SPAN_KV_PREFIX)  # what `hfx explain` counts as transfer time
    assert kv.parent is not None and kv.parent.span_id == leg.context.span_id
    assert kv.context.trace_id == leg.context.trace_id
    a = kv.attributes
    assert (a[tracing.ATTR_KV_BYTES], a[tracing.ATTR_KV_BLOCKS], a[tracing.ATTR_KV_MS], a[tracing.ATTR_KV_OUTCOME]) == (
        3 * 262144, 3, 1.5, "ok")
    assert (a[tracing.ATTR_KV_TRANSFER_ID], a[tracing.ATTR_KV_FROM], a[tracing.ATTR_INSTANCE],
            a[tracing.ATTR_REQUEST_ID]) == ("t-1", "127.0.0.1:7001", "d0", "r-d")
    assert (kv.start_time, kv.end_time) == (1000 * 10**9, 1000002 * 10**6)
    assert engine.pulls == {}  # taken once


def test_a_failed_pull_is_a_span_with_its_reason(monkeypatch):
    failed = dict(PULL, outcome="integrity", bytes=0, blocks=0, ms=3.0)
    spans = run_leg(monkeypatch, PullingEngine({"t-1": failed}), decode_leg())
    (kv,) = [s for s in spans if s.name == tracing.SPAN_KV_TRANSFER]
    assert kv.attributes[tracing.ATTR_KV_OUTCOME] == "integrity" and kv.attributes[tracing.ATTR_KV_MS] == 3.0


def pulls_observed(outcome: str) -> tuple[float, float]:
    labels = {"instance": "d0", "outcome": outcome}
    return tuple(metrics.REGISTRY.get_sample_value(f"hfx_worker_kv_pull_seconds_{k}", labels) or 0.0  # type: ignore[return-value]
                 for k in ("count", "sum"))


def test_each_decode_legs_pull_is_observed_once_in_the_duration_histogram(monkeypatch):
    (ok_n, ok_s), (lost_n, _) = pulls_observed("ok"), pulls_observed("peer-lost")
    run_leg(monkeypatch, PullingEngine({"t-1": dict(PULL)}), decode_leg())
    run_leg(monkeypatch, PullingEngine({"t-2": dict(PULL, transfer_id="t-2", outcome="peer-lost", ms=9.0)}),
            decode_leg("t-2"))
    run_leg(monkeypatch, PullingEngine({}), decode_leg("t-3"))  # nothing reported: nothing observed
    assert pulls_observed("ok") == (ok_n + 1, pytest.approx(ok_s + 0.0015))
    assert pulls_observed("peer-lost")[0] == lost_n + 1


@pytest.mark.parametrize("kv", [None, worker_pb2.KvTransferParams(do_remote_decode=True)], ids=["whole", "prefill-leg"])
def test_only_a_decode_leg_records_a_kv_transfer_span(monkeypatch, kv):
    engine = PullingEngine({"t-1": dict(PULL)})
    spans = run_leg(monkeypatch, engine, kv)
    assert [s.name for s in spans] == [tracing.SPAN_WORKER]
    assert engine.pulls  # not taken


def test_a_decode_leg_without_a_reported_pull_records_no_span(monkeypatch):
    spans = run_leg(monkeypatch, PullingEngine({}), decode_leg())
    assert [s.name for s in spans] == [tracing.SPAN_WORKER]


def test_the_kv_server_keeps_each_reported_pull_by_transfer_id_until_taken(tmp_path):
    srv = tcp.KvServer(tcp.StagingStore(), str(tmp_path)).start()
    try:
        tcp.request(srv.address, {"op": "pulled", "outcome": "peer-lost", "bytes": 0, "ms": 12.5, "transfer_id": "t-9",
                                  "blocks": 0, "start_unix_s": 5.0, "end_unix_s": 5.0125})
        assert srv.handle({"op": "stats"}, None)["pulls"]["outcomes"] == {"peer-lost": 1}
        assert srv.pulls.take("t-9") == {"transfer_id": "t-9", "outcome": "peer-lost", "bytes": 0, "blocks": 0,
                                         "ms": 12.5, "start_unix_s": 5.0, "end_unix_s": 5.0125}
        assert srv.pulls.take("t-9") is None
    finally:
        srv.close()


def test_pulls_nobody_takes_do_not_pile_up():
    log = tcp.PullLog()
    for i in range(tcp.PullLog.KEPT_PULLS + 5):
        log.record("ok", 10, 1.0, transfer_id=f"t{i}")
    assert log.take("t0") is None and log.take(f"t{tcp.PullLog.KEPT_PULLS + 4}") is not None
    assert log.snapshot()["outcomes"] == {"ok": tcp.PullLog.KEPT_PULLS + 5}
