"""Small real objects for core tests: `make_request(**overrides)` and friends. No mocks."""

from __future__ import annotations

from services.common.domain import InstanceLoad, InstanceView, RequestSpec, Slo
from services.common.pb.hfx.v1 import common_pb2, router_pb2
from services.router.config import DEFAULT_CLASSES
from services.router.validate import Limits


def make_spec(**overrides) -> RequestSpec:
    fields = dict(request_id="r1", prompt_tokens=100, max_tokens=50, slo=Slo(1000, 100), priority=1,
                  task_class="chat", arrival_s=0.0)
    fields.update(overrides)
    return RequestSpec(**fields)


def make_instance(instance_id="i0", **overrides) -> InstanceView:
    fields = dict(instance_id=instance_id, address=f"127.0.0.1:{1000 + len(instance_id)}", max_model_len=2048,
                  load=InstanceLoad())
    fields.update(overrides)
    return InstanceView(**fields)


def make_generate(**overrides) -> router_pb2.GenerateRequest:
    req = router_pb2.GenerateRequest(text="hello world", sampling=common_pb2.SamplingParams(max_tokens=16))
    for key, value in overrides.items():
        if key == "sampling":
            req.sampling.CopyFrom(value)
        elif key == "token_ids":
            req.token_ids.ids[:] = value
        else:
            setattr(req, key, value)
    return req


LIMITS = Limits(vocab_size=2048, max_model_len=2048, default_max_tokens=64, max_prompt_bytes=10_000, max_stop_strings=4)
CLASSES = {c.name: c for c in DEFAULT_CLASSES}


def tokenize(text: str) -> list[int]:
    """Stand-in tokenizer for validation tests: one token per word (validation only counts them)."""
    return [hash(w) % 2048 for w in text.split()]
