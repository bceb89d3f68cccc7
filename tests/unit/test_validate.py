import math

import pytest

from services.common.errors import InvalidArgument
from services.common.pb.hfx.v1 import common_pb2
from services.router.validate import validate
from tests.unit.helpers import CLASSES, LIMITS, make_generate, tokenize


def check(req):
    return validate(req, tokenize, CLASSES, LIMITS)


def test_defaults_come_from_the_task_class():
    v = check(make_generate(task_class="code"))
    assert v.slo == CLASSES["code"].slo and v.priority == CLASSES["code"].priority
    assert v.task_class == "code" and v.prompt_token_ids == tuple(tokenize("hello world"))


def test_explicit_slo_and_priority_override_class_defaults():
    req = make_generate(priority=0)
    req.slo.ttft_ms = 123
    v = check(req)
    assert v.slo.ttft_ms == 123 and v.slo.tpot_ms == CLASSES["default"].slo.tpot_ms and v.priority == 0


def test_unset_max_tokens_takes_the_router_default():
    req = make_generate()
    req.sampling.max_tokens = 0
    assert check(req).sampling.max_tokens == LIMITS.default_max_tokens


def test_top_p_zero_means_unset():
    assert check(make_generate()).sampling.top_p == 1.0


@pytest.mark.parametrize("req,field", [
    (make_generate(text=""), "prompt.text"),
    (make_generate(text="\n\t "), "prompt.text"),
    (make_generate(text="x" * 20_000), "prompt.text"),
    (make_generate(token_ids=[1, 2048]), "prompt.token_ids"),
    (make_generate(token_ids=[-4]), "prompt.token_ids"),
    (make_generate(token_ids=[1] * 2048), "prompt"),
    (make_generate(sampling=common_pb2.SamplingParams(max_tokens=-1)), "sampling.max_tokens"),
    (make_generate(sampling=common_pb2.SamplingParams(max_tokens=2047)), "sampling.max_tokens"),
    (make_generate(sampling=common_pb2.SamplingParams(temperature=-0.1)), "sampling.temperature"),
    (make_generate(sampling=common_pb2.SamplingParams(temperature=math.nan)), "sampling.temperature"),
    (make_generate(sampling=common_pb2.SamplingParams(top_p=1.5)), "sampling.top_p"),
    (make_generate(sampling=common_pb2.SamplingParams(stop=["a"] * 5)), "sampling.stop"),
    (make_generate(sampling=common_pb2.SamplingParams(stop=[""])), "sampling.stop"),
    (make_generate(task_class="nope"), "task_class"),
    (make_generate(priority=-1), "priority"),
    (make_generate(client_request_id="x" * 129), "client_request_id"),
])
def test_bad_input_names_the_field(req, field):
    with pytest.raises(InvalidArgument) as info:
        check(req)
    assert info.value.field == field
    assert info.value.message.startswith(field + ": ")


def test_missing_prompt():
    req = make_generate()
    req.ClearField("text")
    with pytest.raises(InvalidArgument, match="^prompt: set either"):
        check(req)


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_set_slo_must_be_positive_and_finite(value):
    req = make_generate()
    req.slo.tpot_ms = value
    with pytest.raises(InvalidArgument, match="^slo.tpot_ms: "):
        check(req)
