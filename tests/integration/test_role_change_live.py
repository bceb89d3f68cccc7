"""A role change under load, behind the real mesh (issue 11): `hfx up` with 2 prefill and 2
decode SIMULATED workers (router, scheduler, scaler, Redis all real), requests streaming through
the router while `hfx role` turns a decode worker into a prefill worker and a prefill worker into
a decode worker. No request is lost or fails, every one streams all its tokens, the registry
records the reasons, the links follow the new roles, and requests placed after a change use the
instance in its new role."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from services.cli import main
from services.common import store
from services.common.keys import Keys
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.harness import local_cluster, wait_until

pytestmark = pytest.mark.slow
MAX_TOKENS = 24


def _request(i: int) -> router_pb2.GenerateRequest:
    req = router_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    req.token_ids.ids[:] = [100 + (i + k) % 500 for k in range(400)]   # long enough to be split P -> D
    return req


def load(router: str, stop: threading.Event, results: list, make_request) -> None:
    """Requests one after another until `stop`; results get (start, token ids, final, error)."""
    with grpc.insecure_channel(router) as ch:
        stub = router_pb2_grpc.RouterStub(ch)
        i = 0
        while not stop.is_set():
            started = time.time()
            tokens, final, error = [], None, ""
            try:
                for msg in stub.Generate(make_request(i), timeout=120):
                    if msg.HasField("delta"):
                        tokens += msg.delta.token_ids
                    else:
                        final = msg.final
            except grpc.RpcError as err:
                error = f"{err.code().name}: {err.details()}"
            results.append((started, tokens, final, error))
            i += 1


def registry(url: str) -> dict[str, common_pb2.Instance]:
    import asyncio

    async def read():
        return {i.instance_id: i for i in await store.ClusterStore(store.connect(url), Keys("hfx")).instances()}
    return asyncio.run(read())


def links_of(url: str) -> set[tuple[str, str]]:
    import asyncio

    async def read():
        return set(await store.ClusterStore(store.connect(url), Keys("hfx")).links())
    return asyncio.run(read())


def test_role_changes_under_load_lose_no_request(tmp_path, capsys):
    home = tmp_path / "home"
    with local_cluster(home, workers=0, prefill=2, decode=2, engine="sim", policy="hfx") as c:
        url = c.state.redis_url
        want = {("hfx-p0", "hfx-d0"), ("hfx-p0", "hfx-d1"), ("hfx-p1", "hfx-d0"), ("hfx-p1", "hfx-d1")}
        assert wait_until(lambda: links_of(url) == want, 30), links_of(url)
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=load, args=(c.state.router, stop, results,
                                                       lambda i, w=w: _request(w * 10_000 + i))) for w in range(4)]
        for t in threads:
            t.start()
        try:
            time.sleep(3)
            changed_s = time.time()
            assert main(["--home", str(home), "role", "hfx-d1", "prefill", "--reason", "test: prefill pressed"]) == 0
            time.sleep(3)
            assert main(["--home", str(home), "role", "hfx-p0", "decode", "--reason", "test: decode pressed"]) == 0
            time.sleep(3)
        finally:
            stop.set()
            for t in threads:
                t.join(90)
        out = capsys.readouterr().out
        entries = registry(url)
        links = links_of(url)
    assert "hfx-d1: decode -> prefill (test: prefill pressed)" in out
    assert len(results) > 20
    failed = [(len(tokens), error) for _, tokens, final, error in results
              if error or final is None or len(tokens) != MAX_TOKENS]
    assert not failed, failed[:5]
    assert entries["hfx-d1"].role == common_pb2.ROLE_PREFILL and entries["hfx-d1"].role_reason == "test: prefill pressed"
    assert entries["hfx-p0"].role == common_pb2.ROLE_DECODE and entries["hfx-p0"].role_reason == "test: decode pressed"
    assert links == {("hfx-p1", "hfx-d0"), ("hfx-p1", "hfx-p0"), ("hfx-d1", "hfx-d0"), ("hfx-d1", "hfx-p0")}
    # Requests that came after the first change prefilled on hfx-d1 (its new role).
    later = [final.placement_reason for started, _, final, _ in results if started > changed_s + 1.0]
    assert any("prefill -> hfx-d1" in r for r in later), later[:5]
