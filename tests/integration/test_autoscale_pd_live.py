"""P/D autoscaling live, on SIMULATED workers (engine "sim") behind the real mesh (router,
scheduler, scaler, Redis): `hfx up --prefill 1 --decode 1 --autoscale` under a prompt-heavy burst
(long prompts, few output tokens) starts a second prefill worker, which takes traffic, and leaves
decode at one; the burst's end drains it back; every request finishes with all its tokens."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common import store
from services.common.keys import Keys
from services.common.pb.hfx.v1 import common_pb2
from tests.harness import local_cluster, wait_until
from tests.integration.test_autoscale_live import send

pytestmark = pytest.mark.slow

PROMPT = 1500   # split P -> D (too long for the decode worker's local prefill)
TOKENS = 16
# SIMULATED workers whose prefill is slow (0.1 ms a prompt token: ~160 ms for one of these
# prompts, ~6 req/s per prefill worker), so the burst's 8 req/s overloads one P for real.
PROFILE = {"name": "slow-prefill", "note": "test profile", "model": {
    "c0_ms": 3.0, "c1_ms_per_prefill_token": 0.1, "c2_ms_per_decode_seq": 0.15, "c3_ms_per_kv_token": 0.0005,
    "kv_transfer_ms_per_token": 0.0029}, "kv_capacity_tokens": 65536, "chunk_tokens": 512, "max_num_seqs": 128,
    "step_noise": 0.0}
# The autoscaler is told 8,000 prompt tokens/s per P (5.3 req/s of these prompts): 8 req/s wants 2 P;
# one D is told to carry 100,000 output tokens/s, so decode never needs a second.
AUTOSCALE = ("--autoscale", "--min", "1", "--max", "2", "--max-total", "3", "--prefill-tokens-per-s", "8000",
             "--decode-tokens-per-s", "100000", "--scale-down-cooldown-s", "8", "--warmup-s", "1",
             "--cold-start-s", "5", "--autoscale-tick-s", "1", "--autoscale-window-s", "6")


def roles(url: str, prefix: str) -> dict[str, str]:
    async def read():
        return {i.instance_id: common_pb2.Role.Name(i.role) for i in
                await store.ClusterStore(store.connect(url), Keys(prefix)).instances()}
    return asyncio.run(read())


def test_prompt_heavy_burst_grows_prefill_and_loses_no_request(tmp_path, capsys):
    request = {"prompt": PROMPT, "tokens": TOKENS}
    profile = tmp_path / "slow-prefill.json"
    profile.write_text(json.dumps(PROFILE))
    with local_cluster(tmp_path / "home", workers=0, prefill=1, decode=1, policy="hfx", engine="sim", http=True,
                       scaler_args=AUTOSCALE, sim_profile=str(profile)) as mesh:
        url, prefix = mesh.state.redis_url, mesh.state.redis_prefix

        def count(role: str) -> int:
            return sum(1 for r in roles(url, prefix).values() if r == role)

        before = roles(url, prefix)
        results, lock = [], threading.Lock()
        with ThreadPoolExecutor(max_workers=64) as pool:
            burst = send(mesh.state.router, pool, 8.0, 25.0, results, lock, **request)
            assert wait_until(lambda: count("ROLE_PREFILL") == 2, 40), f"no second prefill worker: " \
                f"{roles(url, prefix)}\n{mesh.logs()}"
            for f in burst:
                f.result()
            grown = roles(url, prefix)
            # After the burst, a trickle: the second prefill worker is drained and removed.
            trickle = send(mesh.state.router, pool, 0.5, 20.0, results, lock, **request)
            for f in trickle:
                f.result()
            assert wait_until(lambda: count("ROLE_PREFILL") == 1, 60, 0.5), f"P not back to 1: {roles(url, prefix)}"

        r = store.connect_sync(url)
        decisions = [json.loads(r.get(k)) for k in r.scan_iter(f"{Keys(prefix).prefix}:scale:*")]
        starts = [d for d in decisions if d["action"] == "start"]
        assert starts and all(d.get("role") == "prefill" for d in starts), starts
        assert all(d["reason"] for d in decisions)
        assert sum(1 for v in grown.values() if v == "ROLE_DECODE") == 1   # decode did not grow
        # Every request finished with all its tokens: none failed, aborted or was cut off.
        bad = [x for x in results if x["error"] or x["tokens"] != TOKENS]
        assert results and not bad, bad[:5]
        new = {i for i, role in grown.items() if role == "ROLE_PREFILL"} - set(before)
        assert len(new) == 1, (before, grown)
        on_new = [x for x in results if x["instance"] in new]
        assert on_new, f"the new prefill worker(s) {new} took no traffic: " \
            f"{collections.Counter(x['instance'] for x in results)} {[d for d in decisions]}"
        with capsys.disabled():
            print(f"\n{len(results)} requests ({PROMPT}-token prompts), {len(on_new)} prefilled on {sorted(new)}; "
                  f"{len(decisions)} decisions; all finished with {TOKENS} tokens")
