"""The walking skeleton end to end: real Redis, router, scheduler, scaler and two vLLM CPU workers,
real gRPC over loopback, real OTLP export to an in-process receiver.

The tests share one cluster and run in file order; the worker-kill test is last on purpose.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from services.common import proctable
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.harness import local_cluster, vllm_reference, wait_until

pytestmark = pytest.mark.slow

PROMPT_IDS = [1, 43, 343, 1515, 1196, 15, 262, 1294, 77, 901]


@functools.lru_cache(maxsize=None)
def reference(model: str, max_tokens: int) -> tuple[int, ...]:
    """vLLM's own greedy output for PROMPT_IDS (one offline engine run per length)."""
    return tuple(vllm_reference(model, PROMPT_IDS, max_tokens))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, otlp):
    home = tmp_path_factory.mktemp("hfx-home")
    with local_cluster(home, workers=2, tracing=f"otlp=127.0.0.1:{otlp.port}") as running:
        yield running


@pytest.fixture(scope="module")
def router(mesh):
    with mesh.channel() as channel:
        yield router_pb2_grpc.RouterStub(channel)


def greedy(ids, max_tokens, **kw) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        token_ids=router_pb2.TokenIds(ids=ids),
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True), **kw)


def collect(stub, request, timeout=60):
    deltas, final = [], None
    for msg in stub.Generate(request, timeout=timeout):
        if msg.HasField("delta"):
            deltas.append(msg.delta)
        else:
            final = msg.final
    return [t for d in deltas for t in d.token_ids], deltas, final


def test_greedy_output_through_the_mesh_equals_vllm(mesh, router):
    tokens, deltas, final = collect(router, greedy(PROMPT_IDS, 24))
    assert tokens == list(reference(mesh.model, 24))
    assert final.usage.completion_tokens == 24 and final.usage.prompt_tokens == len(PROMPT_IDS)
    assert final.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert final.ttft_ms > 0 and final.e2e_ms >= final.ttft_ms
    assert final.instance_id in {"hfx-w0", "hfx-w1"} and final.placement_reason
    assert all(d.emitted_unix_s > 0 for d in deltas)


def test_text_prompt_streams_text_and_reports_slo(router):
    request = router_pb2.GenerateRequest(text="The quick brown fox", task_class="chat",
                                         sampling=common_pb2.SamplingParams(max_tokens=12, ignore_eos=True))
    request.slo.ttft_ms = 60_000
    request.slo.tpot_ms = 10_000
    tokens, deltas, final = collect(router, request)
    assert len(tokens) == 12 and "".join(d.text for d in deltas)
    assert final.slo_met  # loose SLOs on an idle cluster
    impossible = router_pb2.GenerateRequest(text="The quick brown fox",
                                            sampling=common_pb2.SamplingParams(max_tokens=12, ignore_eos=True))
    impossible.slo.ttft_ms = 0.001
    assert not collect(router, impossible)[2].slo_met


def test_one_trace_covers_router_scheduler_and_worker(router, otlp):
    request = greedy(PROMPT_IDS, 4, task_class="code")
    request.slo.ttft_ms = 5000
    _, _, final = collect(router, request)

    def spans_of_request():
        spans = [s for s in otlp.snapshot() if s["attributes"].get("hfx.request_id") == final.request_id]
        return spans if {s["service"] for s in spans} >= {"hfx-router", "hfx-scheduler", "hfx-worker"} else None

    spans = wait_until(spans_of_request, timeout_s=15)
    assert spans, f"spans seen: {[(s['service'], s['name']) for s in otlp.snapshot()][-20:]}"
    assert len({s["trace_id"] for s in spans}) == 1
    by_service = {s["service"]: s for s in spans}
    root = by_service["hfx-router"]
    assert root["attributes"]["hfx.slo.ttft_ms"] == 5000.0
    assert root["attributes"]["hfx.task_class"] == "code"
    assert root["attributes"]["hfx.slo_met"] is final.slo_met
    assert root["attributes"]["hfx.instance_id"] == final.instance_id
    sched = by_service["hfx-scheduler"]
    assert sched["attributes"]["hfx.verdict"] == "admit" and sched["attributes"]["hfx.reason"]
    assert sched["parent"] == root["span_id"] and by_service["hfx-worker"]["parent"] == root["span_id"]


BAD_INPUTS = {
    "empty text": (router_pb2.GenerateRequest(text="  "), "prompt.text"),
    "no prompt": (router_pb2.GenerateRequest(), "prompt"),
    "empty token ids": (router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds()), "prompt.token_ids"),
    "token id outside vocab": (router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=[5, 10**6])), "prompt.token_ids"),
    "negative token id": (router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=[-1])), "prompt.token_ids"),
    "max_tokens negative": (router_pb2.GenerateRequest(text="hi", sampling=common_pb2.SamplingParams(max_tokens=-3)), "sampling.max_tokens"),
    "max_tokens beyond context": (router_pb2.GenerateRequest(text="hi", sampling=common_pb2.SamplingParams(max_tokens=100_000)), "sampling.max_tokens"),
    "oversized prompt": (router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=[7] * 4096)), "prompt"),
    "unknown task class": (router_pb2.GenerateRequest(text="hi", task_class="astrology"), "task_class"),
    "temperature out of range": (router_pb2.GenerateRequest(text="hi", sampling=common_pb2.SamplingParams(temperature=9)), "sampling.temperature"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_invalid_argument_naming_the_field(router, case):
    request, field = BAD_INPUTS[case]
    with pytest.raises(grpc.RpcError) as info:
        collect(router, request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":"), info.value.details()


@pytest.mark.parametrize("field,value", [("ttft_ms", 0.0), ("ttft_ms", -5.0), ("tpot_ms", 0.0), ("tpot_ms", -1.0)])
def test_zero_or_negative_slo_is_invalid_argument(router, field, value):
    request = router_pb2.GenerateRequest(text="hi")
    setattr(request.slo, field, value)
    with pytest.raises(grpc.RpcError) as info:
        collect(router, request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"slo.{field}:")


def test_abort_ends_the_stream_with_abort(router):
    request = greedy(PROMPT_IDS, 1500, client_request_id="abort-me")
    stream = router.Generate(request, timeout=60)
    first = next(stream)
    assert first.HasField("delta")
    assert router.Abort(router_pb2.AbortRequest(request_id="abort-me"), timeout=5).found
    rest = list(stream)
    assert rest[-1].final.finish_reason == common_pb2.FINISH_REASON_ABORT
    assert rest[-1].final.usage.completion_tokens < 1500
    with pytest.raises(grpc.RpcError) as info:
        router.Abort(router_pb2.AbortRequest(request_id="abort-me"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_status_lists_both_workers(mesh):
    out = subprocess.run([sys.executable, "-m", "services.cli", "--home", str(mesh.home), "status", "--json"],
                         capture_output=True, text=True, timeout=30, check=True)
    rows = json.loads(out.stdout)["instances"]
    assert {r["instance_id"] for r in rows} == {"hfx-w0", "hfx-w1"}
    assert all(r["role"] == "colocated" and r["engine"] == "vllm" for r in rows)


def test_generate_cli_json(mesh):
    out = subprocess.run([sys.executable, "-m", "services.cli", "--home", str(mesh.home), "generate", "hello there",
                          "--max-tokens", "6", "--ignore-eos", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) >= {"text", "token_ids", "ttft_ms", "tpot_ms", "slo_met", "finish_reason"}
    assert len(result["token_ids"]) == 6 and result["finish_reason"] == "length"


def _services_via_reflection(address: str) -> set[str]:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        return {s.name for s in reply.list_services_response.service}


def test_every_service_serves_health_and_reflection(mesh):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    workers = json.loads(subprocess.run(
        [sys.executable, "-m", "services.cli", "--home", str(mesh.home), "status", "--json"],
        capture_output=True, text=True, timeout=30, check=True).stdout)["instances"]
    expected = {mesh.state.router: "hfx.v1.Router", mesh.state.scheduler: "hfx.v1.Scheduler",
                mesh.state.scaler: "hfx.v1.Scaler", **{w["address"]: "hfx.v1.Worker" for w in workers}}
    for address, service in expected.items():
        assert {service, "grpc.health.v1.Health"} <= _services_via_reflection(address), address
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING



def test_a_worker_killed_under_a_request_fails_it_over_and_the_cluster_goes_on(mesh, router):
    # Deterministic on a loaded 2-core machine: the workers are frozen (SIGSTOP) before the
    # request, so the chosen one cannot finish the stream before it is killed, however late
    # this process gets the CPU. The stream is open once the router has sent its initial
    # metadata naming the instance; then that worker dies and the other one is thawed. The
    # router places the request again on the survivor (failover; nothing had streamed yet), and
    # the client gets one whole stream, vLLM's own greedy output.
    workers = {iid: mesh.worker_pid(iid) for iid in ("hfx-w0", "hfx-w1")}
    engines = {iid: proctable.descendants(proctable.snapshot(), pid) for iid, pid in workers.items()}
    for pid in workers.values():
        os.killpg(pid, signal.SIGSTOP)
    try:
        stream = router.Generate(greedy(PROMPT_IDS, 24), timeout=120)
        instance = dict(stream.initial_metadata())["x-hfx-instance"]
        os.kill(workers[instance], signal.SIGKILL)  # the worker alone: its engine must go with it
        killed_at = time.monotonic()
    finally:
        for pid in workers.values():
            try:
                os.killpg(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    tokens, final = [], None
    for msg in stream:
        if msg.HasField("delta"):
            tokens += msg.delta.token_ids
        else:
            final = msg.final
    assert time.monotonic() - killed_at < 30
    assert final.instance_id != instance and final.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert tokens == list(reference(mesh.model, 24))
    assert wait_until(lambda: not proctable.still_running(proctable.snapshot(), engines[instance]), 5)
    # The survivor serves what follows; the dead instance is not chosen again.
    for _ in range(3):
        tokens, _, final = collect(router, greedy(PROMPT_IDS, 8))
        assert len(tokens) == 8 and final.instance_id != instance
