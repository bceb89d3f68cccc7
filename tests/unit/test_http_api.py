"""The OpenAI front door's pure parts: body -> GenerateRequest, SLO headers, error shapes, chunks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidArgument, Rejected, Unavailable
from services.common.pb.hfx.v1 import common_pb2, router_pb2
from services.router.auth import bearer_token, key_allowed
from services.router.oai import requests as oai
from services.router.oai.errors import ApiError, from_domain, retry_after_s
from services.router.oai.responses import Shaper, finish_reason, sse
from services.router.oai.schema import ChatBody, CompletionBody


def completion(**overrides) -> CompletionBody:
    return CompletionBody(**{"model": "m", "prompt": "hello", **overrides})


def chat(**overrides) -> ChatBody:
    return ChatBody(**{"model": "m", "messages": [{"role": "user", "content": "hi"}], **overrides})


def fake_render(messages: list[dict]) -> list[int]:
    """Stands in for a chat template: one id per message, 10 + length of its content."""
    return [10 + len(m["content"]) for m in messages]


def refused(fn, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    assert info.value.status == 400
    return info.value


# -- body -> GenerateRequest -------------------------------------------------------------------

def test_completion_text_prompt_and_sampling():
    req = oai.completion_request(completion(max_tokens=7, temperature=0, top_p=0.5, seed=3, stop="\n",
                                            ignore_eos=True), oai.SloHints(), "cid")
    assert req.WhichOneof("prompt") == "text" and req.text == "hello"
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.seed, list(s.stop), s.ignore_eos) == (7, 0.0, 0.5, 3, ["\n"], True)
    assert req.client_request_id == "cid"
    assert not req.slo.HasField("ttft_ms") and not req.HasField("priority") and req.task_class == ""


def test_completion_defaults_follow_openai():
    s = oai.completion_request(completion(), oai.SloHints()).sampling
    assert s.temperature == 1.0 and s.top_p == 1.0 and s.max_tokens == 0  # 0: the router's default
    assert not s.HasField("seed")


@pytest.mark.parametrize("prompt, ids", [([5, 6, 7], [5, 6, 7]), ([[5, 6]], [5, 6])])
def test_completion_token_id_prompts(prompt, ids):
    req = oai.completion_request(completion(prompt=prompt), oai.SloHints())
    assert list(req.token_ids.ids) == ids


def test_batch_of_one_string_is_accepted():
    assert oai.completion_request(completion(prompt=["x"]), oai.SloHints()).text == "x"


@pytest.mark.parametrize("overrides, param", [
    ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": []}, "prompt"), ({"n": 2}, "n"), ({"echo": True}, "echo"),
    ({"logprobs": 2}, "logprobs"), ({"best_of": 3}, "best_of"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"repetition_penalty": 1.2}, "repetition_penalty"), ({"logit_bias": {"5": 1.0}}, "logit_bias"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_unsupported_completion_fields_are_refused_by_name(overrides, param):
    err = refused(oai.completion_request, completion(**overrides), oai.SloHints())
    assert err.param == param and err.message.startswith(param)


def test_benchmark_neutral_fields_are_accepted():
    # What vLLM's serving benchmark sends along: neutral values, and fields HFX ignores.
    body = completion(repetition_penalty=1.0, logprobs=None, stream=True, stream_options={"include_usage": True},
                      some_future_field={"x": 1})
    assert oai.completion_request(body, oai.SloHints()).text == "hello"


def test_chat_renders_messages_and_prefers_max_completion_tokens():
    body = chat(messages=[{"role": "system", "content": "be brief"},
                          {"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "c"}]}],
                max_tokens=3, max_completion_tokens=9)
    req = oai.chat_request(body, oai.SloHints(), fake_render, 1 << 20)
    assert list(req.token_ids.ids) == [18, 13] and req.sampling.max_tokens == 9


@pytest.mark.parametrize("overrides, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"tools": [{"type": "function"}]}, "tools"), ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_unsupported_chat_fields_are_refused_by_name(overrides, param):
    assert refused(oai.chat_request, chat(**overrides), oai.SloHints(), fake_render, 1 << 20).param == param


def test_chat_size_limit():
    body = chat(messages=[{"role": "user", "content": "x" * 100}])
    assert refused(oai.chat_request, body, oai.SloHints(), fake_render, 50).param == "messages"


def test_bad_body_types_fail_validation():
    with pytest.raises(ValidationError):
        CompletionBody(prompt="x", max_tokens="many")
    with pytest.raises(ValidationError):
        CompletionBody(prompt="x", hfx={"ttft": 5})  # a typo in the extension is an error, not ignored


# -- SLO headers and the body extension --------------------------------------------------------

def test_headers_parse_to_hints():
    hints = oai.parse_headers({"x-slo-ttft-ms": "250", "x-slo-tpot-ms": "12.5", "x-priority": "3",
                               "x-task-class": " code "})
    assert (hints.ttft_ms, hints.tpot_ms, hints.priority, hints.task_class) == (250.0, 12.5, 3, "code")
    assert hints.header_fields() == {"slo.ttft_ms": "x-slo-ttft-ms", "slo.tpot_ms": "x-slo-tpot-ms",
                                     "priority": "x-priority", "task_class": "x-task-class"}


def test_no_headers_no_hints():
    hints = oai.parse_headers({})
    assert hints == oai.SloHints() and hints.header_fields() == {}


@pytest.mark.parametrize("header, value", [
    ("x-slo-ttft-ms", "fast"), ("x-slo-ttft-ms", "0"), ("x-slo-tpot-ms", "-5"), ("x-slo-tpot-ms", "nan"),
    ("x-slo-ttft-ms", "inf"), ("x-priority", "high"), ("x-priority", "-1"), ("x-task-class", "  "),
])
def test_bad_header_values_name_the_header(header, value):
    err = refused(oai.parse_headers, {header: value})
    assert err.param == header and err.message.startswith(header)


def test_headers_win_over_body_extension_and_user_is_tenant():
    body = completion(hfx={"ttft_ms": 900, "tpot_ms": 40, "priority": 1, "task_class": "chat"}, user="alice")
    hints = oai.merge_hints(oai.parse_headers({"x-slo-ttft-ms": "300"}), body.hfx, body.user)
    req = oai.completion_request(body, hints)
    assert (req.slo.ttft_ms, req.slo.tpot_ms, req.priority, req.task_class, req.tenant) == (300, 40, 1, "chat", "alice")


def test_extension_tenant_overrides_user():
    body = completion(hfx={"tenant": "team-a"}, user="alice")
    assert oai.merge_hints(oai.SloHints(), body.hfx, body.user).tenant == "team-a"


# -- error shapes ------------------------------------------------------------------------------

def shape(err: ApiError) -> dict:
    body = err.body()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_invalid_argument_is_400_with_the_openai_param():
    err = from_domain(InvalidArgument("sampling.max_tokens", "too many"))
    assert err.status == 400 and shape(err)["param"] == "max_tokens"
    assert from_domain(InvalidArgument("prompt.token_ids", "bad id"), chat=True).param == "messages"


def test_invalid_argument_from_a_header_names_the_header():
    err = from_domain(InvalidArgument("task_class", "unknown class 'x'"), header_fields={"task_class": "x-task-class"})
    assert err.param == "x-task-class" and err.message.startswith("x-task-class")


def test_rejection_is_429_with_retry_after_in_whole_seconds():
    err = from_domain(Rejected("cannot meet TTFT", 1200.0))
    assert err.status == 429 and err.headers == {"Retry-After": "2"} and shape(err)["code"] == "rejected_by_admission"


@pytest.mark.parametrize("ms, seconds", [(0, 1), (1, 1), (1000, 1), (1001, 2), (float("nan"), 1)])
def test_retry_after_rounds_up_and_is_never_zero(ms, seconds):
    assert retry_after_s(ms) == seconds


def test_unavailable_is_503():
    err = from_domain(Unavailable("no capacity"))
    assert err.status == 503 and shape(err)["type"] == "service_unavailable_error"


# -- API keys ------------------------------------------------------------------------------------

def test_keys():
    assert key_allowed(None, ())  # no keys configured: open
    assert key_allowed("Bearer k2", ("k1", "k2")) and key_allowed("bearer k1", ("k1",))
    assert not key_allowed(None, ("k1",)) and not key_allowed("Bearer nope", ("k1",))
    assert not key_allowed("Basic k1", ("k1",)) and bearer_token("Bearer  ") is None


def test_a_keys_priority_limit_lowers_class_defaults_and_refuses_explicit_priorities_above_it():
    from services.common.errors import PermissionDenied
    from services.router.auth import ApiKey, max_priority
    from services.router.config import DEFAULT_CLASSES
    from services.router.validate import Limits, validate

    keys = (ApiKey("low", max_priority=1), ApiKey("any"), "plain")
    assert max_priority("Bearer low", keys) == 1
    assert max_priority("Bearer any", keys) is None and max_priority("Bearer plain", keys) is None
    assert max_priority(None, ()) is None
    assert "low" not in repr(keys[0])
    classes = {c.name: c for c in DEFAULT_CLASSES}
    limits = Limits(vocab_size=100, max_model_len=64, default_max_tokens=8, max_prompt_bytes=1024, max_stop_strings=4)
    code = router_pb2.GenerateRequest(text="hi", task_class="code")   # class priority 3
    assert classes["code"].priority > 1
    assert validate(code, lambda t: [1, 2], classes, limits, max_priority=1).priority == 1
    assert validate(code, lambda t: [1, 2], classes, limits).priority == classes["code"].priority
    asked = router_pb2.GenerateRequest(text="hi", priority=2)
    with pytest.raises(PermissionDenied, match="above this API key's limit of 1"):
        validate(asked, lambda t: [1, 2], classes, limits, max_priority=1)
    assert validate(asked, lambda t: [1, 2], classes, limits, max_priority=2).priority == 2
    assert from_domain(PermissionDenied("priority: too high")).status == 403


# -- response shapes ---------------------------------------------------------------------------

def final(reason=common_pb2.FINISH_REASON_LENGTH) -> router_pb2.FinalResult:
    return router_pb2.FinalResult(usage=router_pb2.Usage(prompt_tokens=3, completion_tokens=2), finish_reason=reason)


def test_finish_reasons():
    assert finish_reason(final()) == "length" and finish_reason(final(common_pb2.FINISH_REASON_STOP)) == "stop"


def test_chat_stream_puts_the_role_on_the_first_token():
    shaper = Shaper(True, "chatcmpl-1", "m", 0, token_ids=False)
    first, second = shaper.chunk("a", [5], None), shaper.chunk("b", [6], None)
    assert first["choices"][0]["delta"] == {"content": "a", "role": "assistant"}
    assert second["choices"][0]["delta"] == {"content": "b"}
    assert shaper.chunk("", [], "stop")["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": "stop",
                                                          "delta": {}}
    assert shaper.usage_chunk(final())["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_completion_whole_with_token_ids():
    out = Shaper(False, "cmpl-1", "m", 0, token_ids=True).whole("ab", [5, 6], final())
    assert out["object"] == "text_completion"
    assert out["choices"][0] == {"index": 0, "logprobs": None, "finish_reason": "length", "text": "ab",
                                 "token_ids": [5, 6]}


def test_delta_events_are_the_chunks_byte_for_byte():
    import random

    rng = random.Random(3)
    alphabet = ["a", " b", "\n", '"', "\\", "é", "日本", "🙂", "\t", "</s>", ""]
    for chat in (False, True):
        for ids_too in (False, True):
            fast = Shaper(chat, "cmpl-1", "m/x", 7, ids_too)
            slow = Shaper(chat, "cmpl-1", "m/x", 7, ids_too)
            for _ in range(200):
                text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))
                ids = [rng.randint(0, 50000) for _ in range(rng.randint(0, 3))]
                assert fast.delta_event(text, ids) == sse(slow.chunk(text, ids, None))


def test_sse_framing():
    assert sse({"a": 1}) == b'data: {"a":1}\n\n'


# -- SSE framing, including a failure mid-stream -------------------------------------------------

class ScriptedRelay:
    """Plays back messages, then raises or ends, like services.router.http.PlacedStream."""

    def __init__(self, items: list, error: Exception | None = None) -> None:
        self.items, self.error, self.closed = list(items), error, False

    async def next(self):
        if self.items:
            return self.items.pop(0)
        if self.error is not None:
            raise self.error
        return None

    async def aclose(self) -> None:
        self.closed = True


def delta(text: str, *ids: int) -> router_pb2.GenerateResponse:
    return router_pb2.GenerateResponse(delta=router_pb2.TokenDelta(text=text, token_ids=ids))


def play(relay: ScriptedRelay, include_usage: bool = False) -> list[bytes]:
    import asyncio

    from services.router.http import _events

    async def run():
        return [e async for e in _events(relay, Shaper(False, "cmpl-1", "m", 0, False), include_usage)]

    return asyncio.run(run())


def test_stream_ends_with_usage_then_done():
    relay = ScriptedRelay([delta("a", 5), delta(" b", 6), router_pb2.GenerateResponse(final=final())])
    events = play(relay, include_usage=True)
    # the finish and usage events leave with [DONE], one write (test_sse_tail.py)
    assert len(events) == 3 and events[-1].endswith(b"data: [DONE]\n\n") and b'"usage"' in events[-1]
    assert relay.closed


def test_failure_mid_stream_sends_one_error_event_then_stops():
    relay = ScriptedRelay([delta("a", 5), delta(" b", 6)], Unavailable("instance w0 failed after 2 tokens"))
    events = play(relay)
    assert len(events) == 3 and events[-1].startswith(b'data: {"error":') and b"[DONE]" not in b"".join(events)
    assert relay.closed


def test_a_priority_beyond_int32_is_a_400_naming_where_it_came_from():
    # found by tests/unit/test_fuzz_input.py: it used to be a 500 (protobuf's int32 range)
    with pytest.raises(ApiError) as body:
        oai.completion_request(completion(), oai.SloHints(priority=2**31))
    assert body.value.status == 400 and ("hfx.priority: must be between -2147483648 and 2147483647, got 2147483648"
                                         in body.value.body()["error"]["message"])
    with pytest.raises(ApiError) as header:
        oai.completion_request(completion(), oai.parse_headers({"x-priority": str(2**31)}))
    assert header.value.status == 400 and header.value.body()["error"]["message"].startswith("x-priority:")
    # and below it (the fuzz test again, sixteenth session: -2**31 - 1 was a 500 too)
    with pytest.raises(ApiError) as low:
        oai.completion_request(completion(), oai.SloHints(priority=-2**31 - 1))
    assert low.value.status == 400 and "hfx.priority: must be between" in low.value.body()["error"]["message"]
