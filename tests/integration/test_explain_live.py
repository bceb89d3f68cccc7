"""`hfx explain` on a live mesh: real Redis, router, scheduler, scaler and one SIMULATED worker
(engine "sim"), spans in the cluster's own span store (`--tracing local`, the `hfx up` default).

A request with a tight TTFT arrives while a long prompt's prefill runs on the only worker: it
misses its TTFT on purpose, and `hfx explain` must name the long request's prefill as the cause.
The same request's spans must form one trace across router, scheduler (place and complete, the
complete sent batched on the router's link) and worker.
"""

from __future__ import annotations

import json
import threading

import pytest

from services.cli import main
from services.common import grpcutil, tracing
from services.common.pb.hfx.v1 import (common_pb2, router_pb2, router_pb2_grpc, scheduler_pb2,
                                       scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc)
from services.common.spanstore import read_spans
from services.local.cluster import traces_dir
from services.sim.profiles import PROFILES, profile_to_dict
from tests.harness import local_cluster, wait_until

pytestmark = pytest.mark.slow

LONG_PROMPT = [10 + i % 1500 for i in range(1900)]
# A simulated engine whose prefill is slow (1 ms per prompt token): the long prompt's prefill
# takes about 1.9 s, in 512-token chunks. Simulated timing, not a claim about any real engine.
SLOW_PREFILL = {**profile_to_dict(PROFILES["cpu-tiny"]), "name": "slow-prefill", "step_noise": 0.0,
                "note": "test profile: slow prefill"}
SLOW_PREFILL["model"] = {**SLOW_PREFILL["model"], "c1_ms_per_prefill_token": 1.0}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("explain-live")
    profile = tmp / "slow-prefill.json"
    profile.write_text(json.dumps(SLOW_PREFILL))
    with local_cluster(tmp / "home", workers=1, policy="fcfs", engine="sim", tracing="local",
                       sim_profile=str(profile)) as running:
        yield running


def _request(ids, max_tokens, ttft_ms, tpot_ms) -> router_pb2.GenerateRequest:
    request = router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=ids),
                                         sampling=common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    request.slo.ttft_ms, request.slo.tpot_ms = ttft_ms, tpot_ms
    return request


def _final(stub, request) -> router_pb2.FinalResult:
    return [m for m in stub.Generate(request, timeout=60) if m.HasField("final")][0].final


def _worker_running(mesh) -> int:
    with grpcutil.sync_channel(mesh.state.scheduler) as channel:
        state = scheduler_pb2_grpc.SchedulerStub(channel).GetClusterState(scheduler_pb2.GetClusterStateRequest(),
                                                                          timeout=5)
    with grpcutil.sync_channel(state.instances[0].address) as channel:
        return worker_pb2_grpc.WorkerStub(channel).GetLoad(worker_pb2.GetLoadRequest(), timeout=5).running_requests


@pytest.fixture(scope="module")
def behind_long_prefill(mesh):
    """(long request's final, tight request's final): the tight one sent once the long one runs."""
    finals = {}
    with mesh.channel() as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        _final(stub, _request([5, 6, 7], 2, 60_000, 10_000))  # warm: the worker has served once
        long_done = threading.Thread(
            target=lambda: finals.setdefault("long", _final(stub, _request(LONG_PROMPT, 4, 60_000, 10_000))))
        long_done.start()
        assert wait_until(lambda: _worker_running(mesh) >= 1, timeout_s=20), "the long request never started"
        finals["tight"] = _final(stub, _request(list(range(20, 30)), 4, 300, 10_000))
        long_done.join(timeout=60)
    return finals["long"], finals["tight"]


def _spans_of(mesh, request_id: str, names: set[str]):
    def ready():
        spans = [s for s in read_spans(traces_dir(mesh.home)) if s.attributes.get(tracing.ATTR_REQUEST_ID) == request_id]
        return spans if names <= {s.name for s in spans} else None
    return wait_until(ready, timeout_s=15) or []


def test_explain_names_the_long_prefill_as_the_cause_of_a_ttft_miss(mesh, behind_long_prefill, capsys, tmp_path):
    long, tight = behind_long_prefill
    assert long.slo_met and not tight.slo_met and tight.ttft_ms > 300
    assert _spans_of(mesh, tight.request_id, {tracing.SPAN_ROUTER, tracing.SPAN_WORKER, tracing.SPAN_COMPLETE})
    plot = tmp_path / "waterfall.png"
    assert main(["--home", str(mesh.home), "explain", tight.request_id, "--json", "--plot", str(plot)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["request_id"] == tight.request_id and not doc["met"]
    assert set(doc["missed"]) == {"ttft"} and doc["missed"]["ttft"] == pytest.approx(tight.ttft_ms - 300, abs=1.0)
    assert doc["cause"] == "prefill_interference", doc["cause_text"]
    assert long.request_id in doc["cause_text"]
    assert doc["legs"][0]["interfering_requests"][0] == long.request_id
    assert doc["placements"][0]["policy"] == "fcfs" and doc["placements"][0]["instance_id"] == "hfx-w0"
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # The text form says the same, for people.
    assert main(["--home", str(mesh.home), "explain", tight.request_id]) == 0
    out = capsys.readouterr().out
    assert "MISSED TTFT" in out and long.request_id in out


def test_explain_missed_lists_the_miss_and_not_the_request_that_met(mesh, behind_long_prefill, capsys):
    long, tight = behind_long_prefill
    _spans_of(mesh, tight.request_id, {tracing.SPAN_ROUTER})
    assert main(["--home", str(mesh.home), "explain", "--missed", "--since", "5m", "--json"]) == 0
    ids = [d["request_id"] for d in json.loads(capsys.readouterr().out)]
    assert tight.request_id in ids and long.request_id not in ids


def test_one_trace_across_router_scheduler_and_worker_including_complete(mesh, behind_long_prefill):
    _, tight = behind_long_prefill
    names = {tracing.SPAN_ROUTER, tracing.SPAN_PLACE, tracing.SPAN_WORKER, tracing.SPAN_COMPLETE}
    spans = _spans_of(mesh, tight.request_id, names)
    by_name = {s.name: s for s in spans}
    assert set(by_name) >= names, sorted(by_name)
    assert len({s.trace_id for s in spans}) == 1
    assert {s.service for s in spans} == {"hfx-router", "hfx-scheduler", "hfx-worker"}
    root = by_name[tracing.SPAN_ROUTER]
    for name in (tracing.SPAN_PLACE, tracing.SPAN_WORKER, tracing.SPAN_COMPLETE):
        assert by_name[name].parent_id == root.span_id, name
    # SLO attributes on every span of the request: targets everywhere; measured and verdict where known.
    for span in spans:
        assert span.attributes[tracing.ATTR_TTFT_SLO_MS] == 300.0, span.name
    for name in (tracing.SPAN_ROUTER, tracing.SPAN_WORKER, tracing.SPAN_COMPLETE):
        attrs = by_name[name].attributes
        assert attrs[tracing.ATTR_SLO_MET] is False and "ttft" in attrs[tracing.ATTR_SLO_MISSED], name
    # The worker measured the TTFT from the router's arrival time: the client's TTFT, less the relay back.
    worker_ttft = by_name[tracing.SPAN_WORKER].attributes[tracing.ATTR_TTFT_MS]
    assert 0 < worker_ttft <= tight.ttft_ms
    assert by_name[tracing.SPAN_WORKER].event(tracing.EVENT_FIRST_TOKEN) is not None


