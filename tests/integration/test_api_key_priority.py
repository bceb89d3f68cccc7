"""Clients cannot raise their own priority beyond what their API key allows: through both front
doors of a live router (`hfx up` on SIMULATED workers, real gRPC and HTTP over loopback), a key
with `max_priority=1` asking for priority 3 is refused with PERMISSION_DENIED / 403 and a
message, while the same request under an unlimited key is served; a class whose default priority
is above the limit is served at the limit."""

from __future__ import annotations

import grpc
import httpx
import pytest

from services.common import grpcutil
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from services.router.auth import ApiKey
from tests.harness import local_cluster

pytestmark = pytest.mark.slow

LOW, ANY = "key-low-priority", "key-any-priority"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("keys") / "home", workers=1, engine="sim", http=True,
                       api_keys=(ApiKey(LOW, max_priority=1), ANY)) as running:
        yield running


def _grpc(mesh, key: str, **fields) -> list:
    request = router_pb2.GenerateRequest(token_ids=router_pb2.TokenIds(ids=[5, 6, 7]),
                                         sampling=common_pb2.SamplingParams(max_tokens=4, ignore_eos=True), **fields)
    with grpcutil.sync_channel(mesh.state.router) as channel:
        return list(router_pb2_grpc.RouterStub(channel).Generate(
            request, timeout=30, metadata=(("authorization", f"Bearer {key}"),)))


def test_grpc_priority_above_the_keys_limit_is_permission_denied(mesh):
    with pytest.raises(grpc.RpcError) as refused:
        _grpc(mesh, LOW, priority=3)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "above this API key's limit of 1" in refused.value.details()
    assert _grpc(mesh, ANY, priority=3)[-1].final.usage.completion_tokens == 4
    assert _grpc(mesh, LOW, priority=1)[-1].final.usage.completion_tokens == 4
    # class "code" defaults to priority 3: under the limited key it runs at 1 instead of failing
    assert _grpc(mesh, LOW, task_class="code")[-1].final.usage.completion_tokens == 4


def test_http_priority_above_the_keys_limit_is_403(mesh):
    def post(key: str, priority: str):
        return httpx.post(f"http://{mesh.state.http}/v1/completions", timeout=30,
                          headers={"authorization": f"Bearer {key}", "x-priority": priority},
                          json={"prompt": "hello", "max_tokens": 4})

    refused = post(LOW, "3")
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "permission_denied" and "limit of 1" in refused.json()["error"]["message"]
    served = post(ANY, "3")
    assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] == 4
