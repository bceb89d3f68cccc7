"""The OpenAI-compatible HTTP front door against a live cluster: one vLLM CPU worker, the hfx
policy, an API key, and OTLP export to an in-process receiver.

Checks the official `openai` SDK (completions and chat, streaming and not) gets the same greedy
tokens as the gRPC path; errors map to the right status and shape; SLO headers reach the
scheduler's span; metrics move; and vLLM's own serving benchmark runs against the router unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common import grpcutil, procs
from services.common.model import ensure_default_model
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.local import cluster
from tests.harness import wait_until

pytestmark = pytest.mark.slow

KEY = "test-key-1"
PROMPT_IDS = [1, 43, 343, 1515, 1196, 15, 262, 1294, 77, 901]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell me a story."}]
GREEDY = {"temperature": 0, "max_tokens": 16}
EXTRA = {"ignore_eos": True, "return_token_ids": True}

# `strict` prefers a fast "no" to a late answer: with the hfx policy, a TPOT below one decode step
# is out of reach from the start, so such a request is rejected deterministically.
CLASSES = """
classes:
  - {name: default, ttft_ms: 2000, tpot_ms: 200, priority: 1}
  - {name: chat, ttft_ms: 1000, tpot_ms: 100, priority: 2}
  - {name: strict, ttft_ms: 2000, tpot_ms: 200, priority: 1, on_miss: reject}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory, otlp):
    home = tmp_path_factory.mktemp("hfx-openai")
    (home / "classes.yaml").write_text(CLASSES)
    model = str(ensure_default_model())
    opts = cluster.UpOptions(
        home=home, model=model, workers=1, router_port=procs.free_port(), redis_url=None, policy="hfx",
        engine="vllm", tracing=f"otlp=127.0.0.1:{otlp.port}", timeout_s=240, http_port=procs.free_port(),
        api_keys=(KEY,), classes=str(home / "classes.yaml"),
    )
    try:
        yield cluster.up(opts)
    finally:
        cluster.down(home, quiet=True)


@pytest.fixture(scope="module")
def base_url(live) -> str:
    return f"http://{live.http}"


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(live) -> str:
    return os.path.basename(live.model)


@pytest.fixture(scope="module")
def grpc_greedy(live):
    """Greedy token ids and text through the gRPC path, for a given prompt of token ids."""
    channel = grpcutil.sync_channel(live.router)

    def run(ids: list[int]) -> tuple[list[int], str]:
        req = router_pb2.GenerateRequest(
            token_ids=router_pb2.TokenIds(ids=ids),
            sampling=common_pb2.SamplingParams(max_tokens=GREEDY["max_tokens"], temperature=0.0, ignore_eos=True))
        out, text = [], []
        for msg in router_pb2_grpc.RouterStub(channel).Generate(
                req, timeout=60, metadata=(("authorization", f"Bearer {KEY}"),)):
            if msg.HasField("delta"):
                out.extend(msg.delta.token_ids)
                text.append(msg.delta.text)
        return out, "".join(text)

    yield run
    channel.close()


def chat_prompt_ids(model: str) -> list[int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return list(tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True, return_dict=False))


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- the SDK gets what gRPC gets ---------------------------------------------------------------

def test_models_lists_the_served_model(client, model_id):
    assert [m.id for m in client.models.list().data] == [model_id]


def test_completions_match_grpc_greedy(client, model_id, grpc_greedy):
    ids, text = grpc_greedy(PROMPT_IDS)
    assert len(ids) == GREEDY["max_tokens"]

    whole = client.completions.create(model=model_id, prompt=PROMPT_IDS, extra_body=EXTRA, **GREEDY)
    choice = whole.choices[0].model_dump()
    assert choice["token_ids"] == ids and choice["text"] == text and choice["finish_reason"] == "length"
    assert whole.usage.prompt_tokens == len(PROMPT_IDS) and whole.usage.completion_tokens == len(ids)

    chunks = list(client.completions.create(model=model_id, prompt=PROMPT_IDS, stream=True, extra_body=EXTRA,
                                            stream_options={"include_usage": True}, **GREEDY))
    streamed = [c.choices[0].model_dump() for c in chunks if c.choices]
    assert [t for c in streamed for t in c["token_ids"]] == ids
    assert "".join(c["text"] for c in streamed) == text
    assert streamed[-1]["finish_reason"] == "length"
    assert chunks[-1].usage.completion_tokens == len(ids)  # the include_usage chunk comes last


def test_chat_matches_grpc_greedy(client, model_id, grpc_greedy, live):
    ids, text = grpc_greedy(chat_prompt_ids(live.model))

    whole = client.chat.completions.create(model=live.model, messages=MESSAGES, extra_body=EXTRA, **GREEDY)
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content == text
    assert whole.choices[0].model_dump()["token_ids"] == ids

    chunks = list(client.chat.completions.create(model=model_id, messages=MESSAGES, stream=True, extra_body=EXTRA,
                                                 **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert [t for c in chunks for t in c.choices[0].model_dump()["token_ids"]] == ids
    assert chunks[-1].choices[0].finish_reason == "length"


# -- errors ------------------------------------------------------------------------------------

def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def post(base_url: str, path: str, body: dict, key: str = KEY, **headers) -> httpx.Response:
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return httpx.post(f"{base_url}{path}", json=body, headers={"Authorization": f"Bearer {key}", **headers},
                      timeout=60)


@pytest.mark.parametrize("body, headers, param", [
    ({"prompt": "hi", "max_tokens": 100_000}, {}, "max_tokens"),
    ({"prompt": [1, 2, 10**7]}, {}, "prompt"),
    ({"prompt": "hi", "temperature": 9}, {}, "temperature"),
    ({"prompt": "hi", "n": 3}, {}, "n"),
    ({"prompt": "hi"}, {"x_slo_ttft_ms": "soon"}, "x-slo-ttft-ms"),
    ({"prompt": "hi"}, {"x_task_class": "nope"}, "x-task-class"),
    ({"prompt": "hi", "hfx": {"tpot_ms": -1}}, {}, "hfx.tpot_ms"),
])
def test_bad_input_is_400_naming_the_parameter(base_url, body, headers, param):
    err = error_of(post(base_url, "/v1/completions", body, **headers), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_bad_chat_input_and_unknown_model(base_url):
    assert error_of(post(base_url, "/v1/chat/completions", {"messages": []}), 400)["param"] == "messages"
    assert error_of(post(base_url, "/v1/completions", {"model": "gpt-9", "prompt": "x"}), 404)["code"] == "model_not_found"


def test_bad_key_is_401_on_http_and_unauthenticated_on_grpc(base_url, model_id, live):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()
    assert error_of(post(base_url, "/v1/completions", {"prompt": "x"}, key="wrong"), 401)["code"] == "invalid_api_key"
    assert httpx.get(f"{base_url}/health", timeout=5).status_code == 200  # health stays open
    with grpcutil.sync_channel(live.router) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list(router_pb2_grpc.RouterStub(channel).Generate(router_pb2.GenerateRequest(text="x"), timeout=10))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_admission_rejection_is_429_with_retry_after(base_url):
    response = post(base_url, "/v1/completions", {"prompt": "hi", "max_tokens": 4}, x_task_class="strict",
                    x_slo_tpot_ms="0.5")
    err = error_of(response, 429)
    assert err["code"] == "rejected_by_admission" and int(response.headers["retry-after"]) >= 1


def test_stream_framing_ends_with_done(base_url):
    # The happy path's framing: data events, then [DONE] (a failure would end with an error event).
    with httpx.stream("POST", f"{base_url}/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": True},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as response:
        events = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_client_leaving_a_stream_aborts_the_request(base_url, live):
    router = live.metrics["router"]
    aborted = lambda: metric(scrape(router), "hfx_router_requests_total",  # noqa: E731
                             task_class="default", outcome="aborted")
    before = aborted()
    # The worker is frozen so the decode cannot finish before the client leaves, however late this
    # process gets the CPU; the response headers come before any token (Starlette sends them first
    # and watches for the disconnect while it waits), then the client leaves and the worker thaws.
    worker = procs.read_group_records(Path(live.log_dir) / "hfx-w0.pid")[-1][0]  # its latest start
    body = {"prompt": PROMPT_IDS, "max_tokens": 1900, "ignore_eos": True, "stream": True}
    os.killpg(worker, signal.SIGSTOP)
    try:
        with httpx.stream("POST", f"{base_url}/v1/completions", json=body,
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as response:
            assert response.status_code == 200
    finally:
        os.killpg(worker, signal.SIGCONT)
    # Leaving the block closed the connection mid-stream; the router must stop the worker's decode.
    assert wait_until(lambda: aborted() == before + 1, timeout_s=10)


# -- SLO headers reach the scheduler; metrics move -----------------------------------------------

def test_slo_headers_reach_the_scheduler_span(client, model_id, otlp):
    raw = client.completions.with_raw_response.create(
        model=model_id, prompt="Once upon a time", max_tokens=4,
        extra_headers={"x-slo-ttft-ms": "1234", "x-slo-tpot-ms": "87", "x-priority": "3", "x-task-class": "chat"})
    request_id = raw.headers["x-hfx-request-id"]
    assert raw.parse().choices[0].finish_reason in ("length", "stop")

    def place_span():
        return next((s for s in otlp.snapshot() if s["name"] == "scheduler.place"
                     and s["attributes"].get("hfx.request_id") == request_id), None)

    span = wait_until(place_span, timeout_s=15)
    assert span is not None, "no scheduler.place span for the request"
    attrs = span["attributes"]
    assert (attrs["hfx.slo.ttft_ms"], attrs["hfx.slo.tpot_ms"], attrs["hfx.priority"], attrs["hfx.task_class"]) == (
        1234.0, 87.0, 3, "chat")


def test_metrics_move_on_every_service(client, model_id, live):
    router, scheduler = live.metrics["router"], live.metrics["scheduler"]
    worker = next(v for k, v in live.metrics.items() if k.startswith("hfx-w"))
    before = {name: scrape(addr) for name, addr in (("router", router), ("scheduler", scheduler), ("worker", worker))}
    client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=5, extra_body={"ignore_eos": True},
                              extra_headers={"x-task-class": "chat"})

    def moved() -> bool:
        after = scrape(worker)
        return metric(after, "hfx_worker_generated_tokens_total", instance="hfx-w0") >= \
            metric(before["worker"], "hfx_worker_generated_tokens_total", instance="hfx-w0") + 5

    assert wait_until(moved, timeout_s=5)
    r0, r1 = before["router"], scrape(router)
    for name, labels in (("hfx_router_requests_total", {"task_class": "chat", "outcome": "finished"}),
                         ("hfx_router_ttft_seconds_count", {"task_class": "chat"}),
                         ("hfx_router_e2e_seconds_count", {"task_class": "chat"})):
        assert metric(r1, name, **labels) == metric(r0, name, **labels) + 1, name
    assert metric(r1, "hfx_router_output_tokens_total", task_class="chat") == \
        metric(r0, "hfx_router_output_tokens_total", task_class="chat") + 5
    s0, s1 = before["scheduler"], scrape(scheduler)
    assert metric(s1, "hfx_scheduler_decision_seconds_count", policy="hfx") > \
        metric(s0, "hfx_scheduler_decision_seconds_count", policy="hfx")
    verdicts = lambda s: sum(v for (n, _), v in s.items() if n == "hfx_scheduler_verdicts_total")  # noqa: E731
    assert verdicts(s1) == verdicts(s0) + 1
    assert ("hfx_instance_kv_usage_ratio", (("instance", "hfx-w0"),)) in s1
    assert metric(scrape(live.metrics["scaler"]), "hfx_scaler_desired_replicas", cluster="hfx") == 1


# -- vLLM's own serving benchmark, unchanged ---------------------------------------------------

BENCH = textwrap.dedent("""
    import sys
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    main(parser.parse_args(sys.argv[1:]))
""")


@pytest.mark.parametrize("backend, endpoint", [("openai", "/v1/completions"), ("openai-chat", "/v1/chat/completions")])
def test_vllm_bench_serve_runs_against_the_router(base_url, model_id, live, backend, endpoint):
    args = ["--backend", backend, "--base-url", base_url, "--endpoint", endpoint, "--model", model_id,
            "--tokenizer", live.model, "--dataset-name", "random", "--random-input-len", "32",
            "--random-output-len", "16", "--num-prompts", "20", "--ignore-eos", "--goodput", "ttft:5000", "tpot:500",
            "--ready-check-timeout-sec", "30", "--disable-tqdm"]
    # The benchmark reads the API key from OPENAI_API_KEY, as it does against vLLM's own server.
    out = subprocess.run([sys.executable, "-c", BENCH, *args], capture_output=True, text=True, timeout=180,
                         env={**os.environ, "OPENAI_API_KEY": KEY})
    report = out.stdout
    print(report[report.find("===="):])
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split(":")[0].strip(): line.split(":")[-1].strip() for line in report.splitlines() if ":" in line}
    assert int(lines["Successful requests"]) == 20 and int(lines["Failed requests"]) == 0
    assert float(lines["Request goodput (req/s)"]) > 0
