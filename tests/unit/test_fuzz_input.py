"""Property-based fuzzing of what clients send (hypothesis): the gRPC request as validation sees it,
the OpenAI bodies and SLO headers as the HTTP front door translates them. Whatever comes in, the
answer is a clear refusal (InvalidArgument -> INVALID_ARGUMENT, ApiError / ValidationError -> 4xx)
or a valid request: never another exception (a 500), never a hang."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.common.errors import InvalidArgument
from services.common.pb.hfx.v1 import router_pb2
from services.router.oai import requests as oai
from services.router.oai.errors import ApiError
from services.router.oai.schema import ChatBody, CompletionBody
from services.router.validate import validate
from tests.unit.helpers import CLASSES, LIMITS, tokenize

INT32 = st.integers(-(2**31), 2**31 - 1)
ANY_INT = st.one_of(INT32, st.integers(-(2**80), 2**80))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)
TEXT = st.text(max_size=60)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def grpc_requests(draw) -> router_pb2.GenerateRequest:
    req = router_pb2.GenerateRequest()
    if draw(st.booleans()):
        req.text = draw(TEXT)
    else:
        req.token_ids.ids.extend(draw(st.lists(INT32, max_size=40)))
    s = req.sampling
    s.max_tokens = draw(INT32)
    s.temperature = draw(st.floats(width=32, allow_nan=True, allow_infinity=True))
    s.top_p = draw(st.floats(width=32, allow_nan=True, allow_infinity=True))
    if draw(st.booleans()):
        s.seed = draw(st.integers(-(2**63), 2**63 - 1))
    s.stop.extend(draw(st.lists(TEXT, max_size=20)))
    if draw(st.booleans()):
        req.slo.ttft_ms = draw(FLOATS)
    if draw(st.booleans()):
        req.slo.tpot_ms = draw(FLOATS)
    if draw(st.booleans()):
        req.priority = draw(INT32)
    req.task_class = draw(st.one_of(st.sampled_from(sorted(CLASSES)), TEXT))
    req.tenant, req.client_request_id = draw(TEXT), draw(TEXT)
    return req


@SETTINGS
@given(grpc_requests())
def test_any_grpc_request_is_valid_or_invalid_argument(req):
    try:
        v = validate(req, tokenize, CLASSES, LIMITS)
    except InvalidArgument as err:
        assert err.message
        return
    assert v.prompt_token_ids and all(0 <= t < LIMITS.vocab_size for t in v.prompt_token_ids)
    assert 0 < v.sampling.max_tokens and len(v.prompt_token_ids) + v.sampling.max_tokens <= LIMITS.max_model_len
    assert math.isfinite(v.slo.ttft_ms) and v.slo.ttft_ms > 0 and math.isfinite(v.slo.tpot_ms) and v.slo.tpot_ms > 0
    assert math.isfinite(v.sampling.temperature) and v.sampling.temperature >= 0


JSON_SCALARS = st.one_of(st.none(), st.booleans(), ANY_INT, FLOATS, TEXT)
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
PROMPTS = st.one_of(TEXT, st.lists(ANY_INT, max_size=20), st.lists(TEXT, max_size=3),
                    st.lists(st.lists(ANY_INT, max_size=5), max_size=3), JSON)


def _refused_or_valid(make_request) -> None:
    try:
        req = make_request()
        validate(req, tokenize, CLASSES, LIMITS)
    except (ValidationError, ApiError, InvalidArgument):
        pass


@SETTINGS
@given(prompt=PROMPTS, max_tokens=st.one_of(st.none(), ANY_INT, FLOATS, TEXT),
       temperature=st.one_of(st.none(), FLOATS, ANY_INT), top_p=st.one_of(st.none(), FLOATS),
       seed=st.one_of(st.none(), ANY_INT), stop=st.one_of(st.none(), TEXT, st.lists(TEXT, max_size=30)),
       n=st.one_of(st.none(), ANY_INT), extra=st.dictionaries(TEXT, JSON, max_size=3),
       hfx=st.one_of(st.none(), st.dictionaries(st.sampled_from(["ttft_ms", "tpot_ms", "priority", "task_class",
                                                                 "tenant"]), JSON_SCALARS, max_size=5)))
def test_any_completions_body_is_refused_clearly_or_valid(prompt, max_tokens, temperature, top_p, seed, stop, n,
                                                          extra, hfx):
    body = {**extra, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p,
            "seed": seed, "stop": stop, "n": n}
    if hfx is not None:
        body["hfx"] = hfx

    def make():
        parsed = CompletionBody.model_validate(body)
        return oai.completion_request(parsed, oai.merge_hints(oai.SloHints(), parsed.hfx, parsed.user))

    _refused_or_valid(make)


@SETTINGS
@given(messages=st.one_of(JSON, st.lists(st.fixed_dictionaries({"role": TEXT, "content": st.one_of(TEXT, JSON)}),
                                         max_size=4)),
       max_completion_tokens=st.one_of(st.none(), ANY_INT))
def test_any_chat_body_is_refused_clearly_or_valid(messages, max_completion_tokens):
    body = {"messages": messages, "max_completion_tokens": max_completion_tokens}

    def make():
        parsed = ChatBody.model_validate(body)
        return oai.chat_request(parsed, oai.SloHints(), lambda msgs: tokenize(" ".join(m["content"] for m in msgs)),
                                10_000)

    _refused_or_valid(make)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["x-slo-ttft-ms", "x-slo-tpot-ms", "x-priority", "x-task-class",
                                        "x-tenant", "x-hfx-priority"]), TEXT, max_size=6))
def test_any_slo_headers_are_refused_clearly_or_parsed(headers):
    try:
        hints = oai.parse_headers(headers)
    except ApiError as err:
        assert err.status == 400
        return
    for value in (hints.ttft_ms, hints.tpot_ms):
        assert value is None or (math.isfinite(value) and value > 0)
