"""The standby pool with real vLLM engines (issue 12): `hfx up --d2d --standby-pool 1`, then a
scale-up. The standby's engine started with dummy weights; it serves the same greedy tokens as
the worker that vLLM loaded from storage only if LoadWeights really replaced every weight with
the donor's (dummy weights give other tokens). One vLLM test for the whole path; the pool's
bookkeeping is covered on sim workers in test_standby_pool.py, and KV cached under other weights
(a standby's latency profile at start runs on its dummy weights) in test_d2d_weights.py.

Its one CI failure (2026-12-03) was not a token mismatch: the first call to the standby, a moment
after it registered, failed with UNAVAILABLE "connection attempt timed out before receiving
SETTINGS frame" on a loaded machine, because the mesh's channels then gave one connection attempt
100 ms (tests/unit/test_grpc_connect.py)."""

from __future__ import annotations

import uuid

import pytest

from services.common import grpcutil, store
from services.common.keys import Keys
from services.common.pb.hfx.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.harness import local_cluster, wait_until
from tests.integration.test_standby_pool import POOL, pool_status, registered, scale

pytestmark = pytest.mark.slow

PROMPT = [1, 43, 343, 1515, 1196, 15, 262, 1294]
# On 2 cores every engine shares core 1; two latency profiles at once there took minutes.
FAST_START = ("--no-profile-at-start",)


def greedy(address: str, tokens: int = 16) -> list[int]:
    out: list[int] = []
    with grpcutil.sync_channel(address) as channel:
        for chunk in worker_pb2_grpc.WorkerStub(channel).Generate(worker_pb2.WorkerGenerateRequest(
                request_id=uuid.uuid4().hex, prompt_token_ids=PROMPT,
                sampling=common_pb2.SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)), timeout=120):
            out.extend(chunk.token_ids)
    return out


def test_a_vllm_standby_taken_by_a_scale_up_serves_the_donors_tokens(tmp_path):
    with local_cluster(tmp_path / "home", workers=1, scaler_args=POOL, worker_args=FAST_START) as mesh:
        keys = Keys(mesh.state.redis_prefix)
        r = store.connect_sync(mesh.state.redis_url)
        assert wait_until(lambda: (w := registered(r, keys).get("hfx-w0")) and w.weights_address, 240), mesh.logs()
        assert wait_until(lambda: pool_status(r, keys).get("ready") == 1, 240), mesh.logs()
        standby = pool_status(r, keys)["members"][0]
        assert standby not in registered(r, keys)
        donor = registered(r, keys)["hfx-w0"]

        assert scale(mesh, 2, "vllm-standby-up").applied
        assert wait_until(lambda: standby in registered(r, keys), 120), mesh.logs()
        taken = registered(r, keys)[standby]
        assert taken.weights_source.startswith(f"donor {donor.weights_address}"), taken.weights_source
        reference = greedy(donor.address)
        assert len(reference) == 16
        assert greedy(taken.address) == reference
