"""P/D on real vLLM engines behind the whole mesh (`hfx up --prefill 1 --decode 1`, policy hfx,
KV moved by HFX's connector): 50 concurrent requests with mixed SLOs all complete with the
tokens P's engine gives each prompt colocated; the OpenAI API (completions and chat, streamed and
not) answers a split request with P's colocated tokens and text; a decode worker SIGKILLed after the KV transfer
ends its request clearly (failover, or an error naming the instance) and P holds nothing staged.
One cluster (two engines) for the module; the test that kills D runs last.
"""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from services.common import grpcutil
from services.common.pb.hfx.v1 import (common_pb2, router_pb2, router_pb2_grpc, scheduler_pb2,
                                       scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc)
from services.worker.kv import tcp
from tests.harness import local_cluster, wait_until
from tests.integration.test_pd_kv import prompt_of

pytestmark = pytest.mark.slow

CALL_TIMEOUT_S = 180.0
SLOS = [common_pb2.Slo(ttft_ms=2000, tpot_ms=200),     # tight for 2 shared cores
        common_pb2.Slo(ttft_ms=8000, tpot_ms=500),
        common_pb2.Slo(ttft_ms=30000, tpot_ms=1000)]   # batch-like


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    home = tmp_path_factory.mktemp("pd-live") / "home"
    # Both engines start and profile at once (each waits for the other to be quiet): up to minutes.
    with local_cluster(home, workers=0, prefill=1, decode=1, engine="vllm", policy="hfx", timeout_s=540,
                       http=True) as c:
        with grpcutil.sync_channel(c.state.scheduler) as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            instances = lambda: {i.instance_id: i for i in stub.GetClusterState(  # noqa: E731
                scheduler_pb2.GetClusterStateRequest(), timeout=5).instances}
            assert wait_until(lambda: set(instances()) == {"hfx-p0", "hfx-d0"}, 120)
            c.addresses = {iid: i.address for iid, i in instances().items()}
        c.kv_address = {iid: _kv_address(c, iid) for iid in c.addresses}
        yield c


def _kv_address(c, instance_id: str) -> str:
    text = (c.log_dir / f"{instance_id}.log").read_text()
    return re.findall(r"KV transfer server on (\S+),", text)[-1]


def colocated(c, prompt: list[int], max_tokens: int) -> list[int]:
    """The prompt's greedy tokens from P's engine alone (no KV hand-off): the reference."""
    return alone_on(c, "hfx-p0", prompt, max_tokens)


def alone_on(c, instance_id: str, prompt: list[int], max_tokens: int) -> list[int]:
    """The prompt's greedy tokens from one worker's engine, called directly (no router, no KV)."""
    with grpcutil.sync_channel(c.addresses[instance_id]) as ch:
        req = worker_pb2.WorkerGenerateRequest(request_id=f"ref-{time.monotonic_ns()}", prompt_token_ids=prompt,
                                               sampling=common_pb2.SamplingParams(max_tokens=max_tokens,
                                                                                  temperature=0.0, ignore_eos=True))
        return [t for chunk in worker_pb2_grpc.WorkerStub(ch).Generate(req, timeout=CALL_TIMEOUT_S)
                for t in chunk.token_ids]


def request(prompt: list[int], max_tokens: int, slo: common_pb2.Slo) -> router_pb2.GenerateRequest:
    req = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                        ignore_eos=True), slo=slo)
    req.token_ids.ids[:] = prompt
    return req


def stream(c, req: router_pb2.GenerateRequest):
    with grpcutil.sync_channel(c.state.router) as ch:
        yield from router_pb2_grpc.RouterStub(ch).Generate(req, timeout=CALL_TIMEOUT_S)


def tokens_of(c, req: router_pb2.GenerateRequest) -> tuple[list[int], object]:
    tokens, final = [], None
    for msg in stream(c, req):
        if msg.HasField("delta"):
            tokens.extend(msg.delta.token_ids)
        if msg.HasField("final"):
            final = msg.final
    return tokens, final


def kv_stats(c, instance_id: str) -> dict:
    return tcp.request(c.kv_address[instance_id], {"op": "stats"})


def split_placements(c) -> int:
    return (c.log_dir / "scheduler.log").read_text().count("prefill:hfx-p0 -> decode:hfx-d0")


def test_the_prefill_workers_measured_transfer_cost_reaches_the_scheduler(pd):
    """The worker measured its KV transfer at start; the scheduler's model of it carries that cost
    (the whole-vs-split choice charges it), not the policy's default."""
    text = (pd.log_dir / "scheduler.log").read_text()
    assert re.search(r"latency model of hfx-p0 .*KV transfer [0-9.e-]+ ms/token \(measured\)", text), text[-2000:]
    assert "KV transfer measured:" in (pd.log_dir / "hfx-p0.log").read_text()


def test_fifty_concurrent_mixed_slo_requests_over_pd_all_complete_with_the_right_tokens(pd):
    # Every fifth prompt is short (kept whole by the policy), the rest long enough to split.
    prompts = [prompt_of(24 + i if i % 5 == 0 else 140 + 23 * i, 300 + i) for i in range(50)]
    max_tokens = [6 + i % 7 for i in range(50)]
    # The reference: P's engine alone, one request at a time, with the prompt already in its prefix
    # cache, as the P/D prefill leg then finds it. (A cold prefill and a cached one may differ in
    # bf16 at a near tie: one 1,152-token prompt's 4th token did, cold against cached, while the
    # cached one matched the mesh alone and the mesh among the 50.)
    for prompt, n in zip(prompts, max_tokens):
        colocated(pd, prompt, n)
    expected = [colocated(pd, prompt, n) for prompt, n in zip(prompts, max_tokens)]
    pulls_before = kv_stats(pd, "hfx-d0")["pulls"]["outcomes"].get("ok", 0)
    with ThreadPoolExecutor(50) as pool:
        got = list(pool.map(lambda i: tokens_of(pd, request(prompts[i], max_tokens[i], SLOS[i % 3])), range(50)))
    for i, (tokens, final) in enumerate(got):
        assert final is not None and final.finish_reason == common_pb2.FINISH_REASON_LENGTH, (i, final)
    wrong = [i for i, (tokens, _) in enumerate(got) if tokens != expected[i]]
    # A split request's first decode step on D recomputes the prompt's last token over the KV it
    # loaded (as vLLM's connectors do), in a decode kernel rather than P's prefill kernel: in bf16 a
    # near tie later on may tip. Such a request gives the same tokens (or P's) when sent alone and
    # split again, and agrees with P on the first token (P's prefill). A request served whole on D decodes in a
    # batch of others where the reference ran alone: on an AMX CPU 2-3 of 50 tipped so (the same ones
    # in two runs, from their 7th-11th token), while D's engine called directly gave the reference.
    # Wrong or misplaced KV would not stay this rare: at most 5 of the 50 may differ from P alone,
    # each agreeing on the first token, and only in these ways.
    alone = {i: (tokens_of(pd, request(prompts[i], max_tokens[i], SLOS[2])), colocated(pd, prompts[i], max_tokens[i]),
                 alone_on(pd, got[i][1].instance_id, prompts[i], max_tokens[i]))
             for i in wrong}
    detail = "; ".join(f"#{i} L={len(prompts[i])} got {got[i][0]} want {expected[i]} ({got[i][1].placement_reason[:60]} "
                       f"on {got[i][1].instance_id}) alone {alone[i][0][0]} ({alone[i][0][1].placement_reason[:30]}) "
                       f"P alone {alone[i][1]} {got[i][1].instance_id} alone {alone[i][2]}"
                       for i in wrong)

    def tipped(i: int) -> bool:
        (tokens, final), (mesh_alone, p_alone, engine_alone) = got[i], alone[i]
        if tokens[0] != expected[i][0] or p_alone != expected[i]:
            return False
        if "P/D: " in final.placement_reason:
            # Alone and split again: the same near tie, or none (P's tokens): the KV was right.
            return mesh_alone[0] in (tokens, expected[i]) and "P/D: " in mesh_alone[1].placement_reason
        return final.instance_id != "hfx-p0" and engine_alone == expected[i]  # the engines agree alone
    if wrong:
        print(f"differ from P alone: {detail}")
    assert len(wrong) <= 5 and all(map(tipped, wrong)), f"{len(wrong)} of 50 with other tokens: {detail}"
    splits = sum("P/D: " in final.placement_reason for _, final in got)
    loaded = kv_stats(pd, "hfx-d0")["pulls"]["outcomes"].get("ok", 0) - pulls_before
    print(f"50 requests: {splits} split P -> D, {loaded} KV pulls loaded on D")
    assert splits >= 1 and loaded >= 1  # the split path carried some of them, with KV moved
    assert wait_until(lambda: kv_stats(pd, "hfx-p0")["leases"] == 0, 10)  # nothing left staged on P


def alone_with_text(c, prompt: list[int], max_tokens: int) -> tuple[list[int], str]:
    """As `colocated`, with the text P's engine gives the tokens."""
    with grpcutil.sync_channel(c.addresses["hfx-p0"]) as ch:
        req = worker_pb2.WorkerGenerateRequest(request_id=f"ref-{time.monotonic_ns()}", prompt_token_ids=prompt,
                                               sampling=common_pb2.SamplingParams(max_tokens=max_tokens,
                                                                                  temperature=0.0, ignore_eos=True))
        chunks = list(worker_pb2_grpc.WorkerStub(ch).Generate(req, timeout=CALL_TIMEOUT_S))
    return [t for chunk in chunks for t in chunk.token_ids], "".join(chunk.text for chunk in chunks)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_openai_api_answers_a_split_request_with_ps_colocated_tokens_and_text(pd, chat, stream):
    """Clients change nothing: the official SDK gets one answer, from a prefill leg on P and a decode
    leg on D that loaded P's KV, equal to P's engine alone (prompt in its prefix cache, as above)."""
    import openai
    from transformers import AutoTokenizer

    salt = 2 * chat + stream  # a prompt of its own each: D's prefix cache never holds it yet
    words = [f"w{(i * 7 + salt * 13) % 97}" for i in range(300)]
    messages = [{"role": "user", "content": "Go on: " + " ".join(words)}]
    if chat:
        prompt = list(AutoTokenizer.from_pretrained(pd.model).apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False))
    else:
        prompt = prompt_of(600, 500 + salt)
    assert len(prompt) > 400  # long enough for the policy to split (the 50 above: from 140 tokens)
    colocated(pd, prompt, 1)
    expected, text = alone_with_text(pd, prompt, 12)
    client = openai.OpenAI(base_url=f"http://{pd.state.http}/v1", api_key="none", max_retries=0, timeout=CALL_TIMEOUT_S)
    create = client.chat.completions if chat else client.completions
    ask = {"messages": messages} if chat else {"prompt": prompt}
    pulls = kv_stats(pd, "hfx-d0")["pulls"]["outcomes"]
    args = dict(model=pd.model, temperature=0, max_tokens=12, extra_body={"ignore_eos": True, "return_token_ids": True},
                **ask)
    if stream:
        with create.with_streaming_response.create(stream=True, **args) as response:
            request_id = response.headers["x-hfx-request-id"]
            choices = [c.choices[0] for c in response.parse() if c.choices]
        got_text = "".join((c.delta.content or "") if chat else c.text for c in choices)
        finish = choices[-1].finish_reason
    else:
        response = create.with_raw_response.create(**args)
        request_id, whole = response.headers["x-hfx-request-id"], response.parse()
        choices = whole.choices
        got_text, finish = (choices[0].message.content if chat else choices[0].text), choices[0].finish_reason
    tokens = [t for c in choices for t in c.model_dump()["token_ids"] or ()]
    assert (tokens, got_text, finish) == (expected, text, "length")
    # Split: the scheduler placed it prefill on P -> decode on D, and D loaded P's KV for it.
    split = re.compile(rf"place {re.escape(request_id)} -> \w+ prefill:hfx-p0 -> decode:hfx-d0")
    assert wait_until(lambda: split.search((pd.log_dir / "scheduler.log").read_text()), 5), request_id
    after = kv_stats(pd, "hfx-d0")["pulls"]["outcomes"]
    assert {k: after[k] - pulls.get(k, 0) for k in after if after[k] != pulls.get(k, 0)} == {"ok": 1}


def test_decode_worker_killed_after_the_transfer_ends_the_request_clearly_and_p_keeps_nothing(pd):
    """Last in the module: it kills D."""
    prompt = prompt_of(700, 999)
    max_tokens = 300
    colocated(pd, prompt, 1)  # in P's prefix cache, as for the test above
    expected = colocated(pd, prompt, max_tokens)
    acked = kv_stats(pd, "hfx-p0")["freed"].get("acked", 0)
    splits = split_placements(pd)
    tokens, outcome = [], "finished"
    started = time.monotonic()
    try:
        for msg in stream(pd, request(prompt, max_tokens, SLOS[2])):
            tokens.extend(msg.delta.token_ids if msg.HasField("delta") else ())
            if len(tokens) >= 4 and outcome == "finished" and split_placements(pd) > splits:
                os.killpg(pd.worker_pid("hfx-d0"), signal.SIGKILL)  # D decodes: the KV moved already
                outcome = "killed"
    except grpc.RpcError as err:
        outcome = f"error: {err.code().name}: {err.details()}"
    assert split_placements(pd) > splits, "the request was not split, so there was no transfer to test"
    assert time.monotonic() - started < CALL_TIMEOUT_S
    if outcome.startswith("error"):  # a clear end: it names the instance that died under it
        assert "hfx-d0" in outcome, outcome
        assert tokens == expected[:len(tokens)]  # what did stream was right
    else:  # failed over: every token, once, right
        assert outcome == "killed" and tokens == expected
    print(f"D killed after the transfer: {outcome}, {len(tokens)} of {max_tokens} tokens")
    # D acked the transfer before it decoded, and P has nothing staged for a decode that died.
    assert kv_stats(pd, "hfx-p0")["freed"].get("acked", 0) >= acked + 1
    assert wait_until(lambda: kv_stats(pd, "hfx-p0")["leases"] == 0, 10)
