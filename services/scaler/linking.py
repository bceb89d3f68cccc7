"""P-D links, the I/O part: keeps {prefix}:links in Redis to what `links.plan_links` wants.

A new link is opened with a warm-up transfer, the same path a split request takes (a prefill leg
on P that stages the KV of a short prompt, then a decode leg on D that pulls it), so P's KV
server, D's pull path and both engines' connector code have run once before the scheduler pairs
them for real traffic. A link is written "up" only after that succeeded; the scheduler pairs only
"up" links while this linker marks itself alive ({prefix}:linker, TTL = heartbeat TTL).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from services.common import convert, grpcutil, metrics, store
from services.common.pb.hfx.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from services.scaler.links import Pair, plan_links

log = logging.getLogger("hfx.scaler")
WARMUP_PROMPT = tuple(range(100, 132))   # 32 tokens: two KV blocks of 16, any vocabulary has them
RETRY_AFTER_S = 2.0


class LinkFailed(RuntimeError):
    pass


async def warm_up(prefill: worker_pb2_grpc.WorkerStub, decode: worker_pb2_grpc.WorkerStub, timeout_s: float) -> float:
    """One transfer over a new link, as a split request makes it; returns its milliseconds."""
    rid = f"link-warmup-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    leg = worker_pb2.WorkerGenerateRequest(
        request_id=rid, prompt_token_ids=WARMUP_PROMPT, sampling=common_pb2.SamplingParams(max_tokens=1),
        kv_transfer=worker_pb2.KvTransferParams(do_remote_decode=True))
    last = None
    async for chunk in prefill.Generate(leg, timeout=timeout_s):
        last = chunk
    if last is None or not last.kv_transfer.transfer_id:
        raise LinkFailed("the prefill side staged no KV")
    kv = last.kv_transfer
    leg = worker_pb2.WorkerGenerateRequest(
        request_id=rid, prompt_token_ids=WARMUP_PROMPT + tuple(last.token_ids),
        sampling=common_pb2.SamplingParams(max_tokens=1),
        kv_transfer=worker_pb2.KvTransferParams(do_remote_prefill=True, remote_address=kv.remote_address,
                                                transfer_id=kv.transfer_id, num_tokens=kv.num_tokens,
                                                num_blocks=kv.num_blocks))
    async for _ in decode.Generate(leg, timeout=timeout_s):
        pass
    return (time.perf_counter() - started) * 1000.0


class Linker:
    def __init__(self, cluster: store.ClusterStore, ttl_s: float = 5.0, warmup_timeout_s: float = 10.0) -> None:
        self.store = cluster
        self.ttl_s = ttl_s
        self.warmup_timeout_s = warmup_timeout_s
        self._stubs = grpcutil.StubCache(worker_pb2_grpc.WorkerStub)
        self._retry_at: dict[Pair, float] = {}
        self._lock = asyncio.Lock()

    async def step(self, registry: list[common_pb2.Instance], gone: set[str] | frozenset[str] = frozenset()) -> None:
        """One reconcile of the link table to the registry (links of dead or re-roled instances
        dropped at once, new pairs warmed up and linked)."""
        async with self._lock:
            await self.store.mark_linker(self.ttl_s)
            roles = {i.instance_id: convert.role_from_pb(i.role) for i in registry}
            address = {i.instance_id: i.address for i in registry}
            existing = await self.store.links()
            plan = plan_links(roles, existing, gone)
            if plan.remove:
                await self.store.drop_links(pair for pair, _ in plan.remove)
                for (p, d), why in plan.remove:
                    log.info("unlinked %s -> %s: %s", p, d, why)
            now = time.monotonic()
            due = [pair for pair in plan.add if self._retry_at.get(pair, 0.0) <= now]
            await asyncio.gather(*(self._link(pair, address) for pair in due))
            metrics.LINKS.labels(self.store.keys.prefix).set(len(await self.store.links()))

    async def _link(self, pair: Pair, address: dict[str, str]) -> None:
        p, d = pair
        try:
            ms = await warm_up(self._stubs[address[p]], self._stubs[address[d]], self.warmup_timeout_s)
        except Exception as err:   # not linked: the scheduler keeps not pairing them; try again soon
            self._retry_at[pair] = time.monotonic() + RETRY_AFTER_S
            log.warning("linking %s -> %s failed (retry in %.0f s): %s", p, d, RETRY_AFTER_S, err)
            return
        self._retry_at.pop(pair, None)
        await self.store.put_link(p, d, {"state": "up", "linked_unix_s": time.time(), "warmup_ms": round(ms, 3),
                                         "reason": f"{p} prefill -> {d} decode, warm-up transfer {ms:.1f} ms"})
        log.info("linked %s -> %s (warm-up transfer %.1f ms)", p, d, ms)

