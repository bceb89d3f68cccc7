"""The live mesh on SIMULATED workers (engine "sim", no vLLM): `hfx bench --target` against the
router, the admission reject path end to end, `hfx status` labels, and every policy serving."""

from __future__ import annotations

import json

import grpc
import pytest
import yaml

from services.common import grpcutil
from services.cli import main
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.scheduler.policy import policy_names
from services.sim.workload import load_workload
from tests.harness import local_cluster

pytestmark = pytest.mark.slow

DEFAULT_WORKLOAD = "services/sim/workloads/default.yaml"


def classes_file(tmp_path) -> str:
    """The default workload's classes, plus 'strict': rejected when its SLO cannot be met."""
    rows = [{"name": "default", "ttft_ms": 10_000, "tpot_ms": 1_000, "priority": 1},
            {"name": "strict", "ttft_ms": 10_000, "tpot_ms": 1_000, "priority": 2, "on_miss": "reject"}]
    rows += [{"name": c.name, "ttft_ms": 10_000, "tpot_ms": 1_000, "priority": c.priority, "on_miss": c.on_miss}
             for c in load_workload(DEFAULT_WORKLOAD).classes]
    path = tmp_path / "classes.yaml"
    path.write_text(yaml.safe_dump({"classes": rows}))
    return str(path)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live-sim")
    with local_cluster(tmp / "home", workers=3, policy="hfx", engine="sim", classes=classes_file(tmp),
                       http=True) as running:
        yield running


def generate(address: str, **fields) -> list:
    with grpcutil.sync_channel(address) as channel:
        return list(router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(**fields), timeout=30))


def test_status_labels_the_workers_as_sim(mesh, capsys):
    assert main(["--home", str(mesh.home), "status", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["instances"]
    assert len(rows) == 3 and {r["engine"] for r in rows} == {"sim"}
    assert "SIMULATED ENGINE" in (mesh.log_dir / "hfx-w0.log").read_text()


def test_bench_target_runs_the_workload_and_writes_the_record_schema(mesh, tmp_path, capsys):
    out = tmp_path / "live.json"
    assert main(["bench", "--target", f"grpc://{mesh.state.router}", "--workload", DEFAULT_WORKLOAD,
                 "--rate", "20", "--requests", "40", "--probes", "1", "--label", "hfx", "--quiet",
                 "--json", str(out), "--plot", str(tmp_path)]) == 0
    doc = json.loads(out.read_text())
    assert doc["unloaded"]["tpot_ms"] > 0 and set(doc["unloaded"]["ttft_ms"]) == {"chat", "code", "summarise", "batch"}
    (rec,) = doc["records"]
    for key in ("policy", "rate_rps", "requests", "slo_attainment", "per_class", "goodput_rps", "ttft_ms",
                "tpot_ms", "e2e_ms"):
        assert key in rec
    assert rec["policy"] == "hfx" and rec["requests"] == 40 and rec["failed"] == 0
    assert rec["completed"] + rec["rejected"] == 40 and rec["completed"] > 0
    assert set(rec["ttft_ms"]) >= {"p50", "p90", "p99"} and rec["ttft_ms"]["p50"] > 0
    assert "live target" in rec["engine"] and (tmp_path / "attainment_vs_rate.png").exists()


def test_bench_target_speaks_openai_http_too(mesh, tmp_path):
    """The same workload through the router's OpenAI API (the path a plain `vllm serve` takes):
    model name from /v1/models, SLOs and class as headers, streamed completions measured."""
    out = tmp_path / "http.json"
    assert main(["bench", "--target", f"http://{mesh.state.http}", "--workload", DEFAULT_WORKLOAD,
                 "--rate", "20", "--requests", "30", "--probes", "1", "--label", "hfx-http", "--quiet",
                 "--json", str(out)]) == 0
    (rec,) = json.loads(out.read_text())["records"]
    assert rec["policy"] == "hfx-http" and rec["failed"] == 0 and rec["completed"] + rec["rejected"] == 30
    assert rec["completed"] > 0 and rec["ttft_ms"]["p50"] > 0 and rec["tpot_ms"]["p50"] > 0
    assert "live target http://" in rec["engine"]


def test_impossible_slo_on_a_reject_class_is_resource_exhausted_with_a_retry_hint(mesh):
    with pytest.raises(grpc.RpcError) as info:
        generate(mesh.state.router, text="hello there", task_class="strict",
                 slo=common_pb2.Slo(ttft_ms=0.01, tpot_ms=0.01),
                 sampling=common_pb2.SamplingParams(max_tokens=4))
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rejected by admission" in err.details() and "slack" in err.details()  # with the reason
    retry = dict(err.trailing_metadata())["retry-after-ms"]
    assert float(retry) > 0
    # The same impossible SLO on a best-effort class is served anyway.
    msgs = generate(mesh.state.router, text="hello there", task_class="batch",
                    slo=common_pb2.Slo(ttft_ms=0.01, tpot_ms=0.01), sampling=common_pb2.SamplingParams(max_tokens=4))
    assert msgs[-1].final.usage.completion_tokens == 4 and not msgs[-1].final.slo_met


@pytest.mark.parametrize("policy", policy_names())
def test_every_policy_is_selectable_and_serves_on_sim_workers(policy, tmp_path):
    with local_cluster(tmp_path / "home", workers=1, policy=policy, engine="sim") as running:
        msgs = generate(running.state.router, text="hi", sampling=common_pb2.SamplingParams(max_tokens=5))
        assert msgs[-1].final.usage.completion_tokens == 5
        assert f"(policy {policy})" in (running.log_dir / "scheduler.log").read_text()
