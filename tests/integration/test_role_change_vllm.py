"""A role change under load on real vLLM CPU engines (issue 11): `hfx up` with 1 prefill and 2
decode vLLM workers (every one started with --kv-transfer: HFX's connector runs kv_both, so any
engine stages or pulls KV), greedy split requests streaming through the router while `hfx role`
turns a decode worker into a prefill worker and the prefill worker into a decode worker. No
request is lost or fails, and every output equals vLLM's own offline greedy output."""

from __future__ import annotations

import pytest

from services.common.pb.hfx.v1 import common_pb2, router_pb2
from services.scheduler.policy import PolicyConfig
from services.scheduler.policy.pd import short_prompt_tokens
from tests.harness import actions_under_load, incomplete, links_of, local_cluster, registry, vllm_reference, wait_until
from tests.integration.test_role_change_live import role_change

pytestmark = pytest.mark.slow
# Long enough that HFX splits it P -> D: past the prompts it serves whole on D (pd.short_prompt_tokens).
PROMPT = [1 + (k * 37) % 1900 for k in range(short_prompt_tokens(PolicyConfig()) + 96)]
MAX_TOKENS = 16


def _request(client: int, i: int) -> router_pb2.GenerateRequest:
    req = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    req.token_ids.ids[:] = PROMPT
    return req


def test_role_changes_under_load_on_vllm_lose_nothing_and_keep_vllms_outputs(tmp_path):
    home = tmp_path / "home"
    with local_cluster(home, workers=0, prefill=1, decode=2, engine="vllm", policy="hfx",
                       worker_args=("--no-profile-at-start",)) as c:   # 3 engines on 2 cores: profiling takes minutes
        url = c.state.redis_url
        want = {("hfx-p0", "hfx-d0"), ("hfx-p0", "hfx-d1")}
        assert wait_until(lambda: links_of(url) == want, 60), links_of(url)
        results, changed = actions_under_load(
            c.state.router, _request, 2,
            [role_change(home, "hfx-d1", "prefill", "test"), role_change(home, "hfx-p0", "decode", "test")], pause_s=4)
        entries = registry(url)
        links = links_of(url)
    reference = vllm_reference(c.model, PROMPT, MAX_TOKENS)
    assert len(reference) == MAX_TOKENS
    assert len(results) > 10
    bad = incomplete(results, MAX_TOKENS, reference)
    assert not bad, (reference, bad[:3])
    assert entries["hfx-d1"].role == common_pb2.ROLE_PREFILL and entries["hfx-p0"].role == common_pb2.ROLE_DECODE
    assert links == {("hfx-d1", "hfx-d0"), ("hfx-d1", "hfx-p0")}
    later = [r.final.placement_reason for r in results if r.started_s > changed[0] + 1.0]
    assert any("prefill -> hfx-d1" in r for r in later), later[:5]
