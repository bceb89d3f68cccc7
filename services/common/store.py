"""Cluster state in Redis: the instance registry with heartbeats, load reports, applied decisions.

Keys come from services.common.keys only. Entries carry a TTL so a crashed worker disappears
from the registry by itself; a clean shutdown deregisters at once.
"""

from __future__ import annotations

import json

import redis
import redis.asyncio as aioredis

from services.common import internal_auth
from services.common.keys import Keys
from services.common.pb.hfx.v1 import common_pb2

# Every Redis call is bounded: a stalled Redis must not stall the token path.
REDIS_TIMEOUT_S = 2.0


def _auth() -> dict:
    """Redis's password from HFX_REDIS_PASSWORD_FILE; a password inside the URL wins over it."""
    password = internal_auth.redis_password()
    return {"password": password} if password else {}


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S, **_auth()
    )


def connect_sync(url: str, timeout_s: float = REDIS_TIMEOUT_S) -> redis.Redis:
    """A blocking client, for tools and `hfx` commands, with the same credentials."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **_auth())


def as_text(value: bytes | str) -> str:
    """A Redis reply as text: these clients answer bytes (decode_responses is off)."""
    return value.decode() if isinstance(value, bytes) else value


class ClusterStore:
    def __init__(self, client: aioredis.Redis, keys: Keys | None = None) -> None:
        self.redis = client
        self.keys = keys or Keys()

    async def register(self, instance: common_pb2.Instance, ttl_s: float) -> None:
        key = self.keys.instance(instance.instance_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"pb": instance.SerializeToString()})
            pipe.pexpire(key, int(ttl_s * 1000))
            pipe.sadd(self.keys.instances(), instance.instance_id)
            await pipe.execute()

    async def heartbeat(self, instance: common_pb2.Instance, load: common_pb2.LoadReport, ttl_s: float,
                        profile: dict | None = None) -> None:
        """Refreshes the registry entry (re-creating it if it expired) and stores the load. With
        `profile`, also puts it back when it is missing: a Redis that restarted empty has every
        key again within one heartbeat, the latency profile included."""
        ttl_ms = int(ttl_s * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.instance(instance.instance_id), mapping={"pb": instance.SerializeToString()})
            pipe.pexpire(self.keys.instance(instance.instance_id), ttl_ms)
            pipe.sadd(self.keys.instances(), instance.instance_id)
            pipe.set(self.keys.load(instance.instance_id), load.SerializeToString(), px=ttl_ms)
            if profile is not None:
                pipe.set(self.keys.profile(instance.instance_id), json.dumps(profile), nx=True)
            await pipe.execute()

    async def put_load(self, load: common_pb2.LoadReport, ttl_s: float) -> None:
        await self.redis.set(self.keys.load(load.instance_id), load.SerializeToString(), px=int(ttl_s * 1000))

    async def deregister(self, instance_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.instance(instance_id), self.keys.load(instance_id))
            pipe.srem(self.keys.instances(), instance_id)
            await pipe.execute()

    async def instances(self) -> list[common_pb2.Instance]:
        """Live instances with their latest load; ids whose entry expired are pruned."""
        ids = sorted(as_text(i) for i in await self.redis.smembers(self.keys.instances()))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for iid in ids:
                pipe.hget(self.keys.instance(iid), "pb")
                pipe.get(self.keys.load(iid))
            raw = await pipe.execute()
        live, dead = [], []
        for iid, entry, load in zip(ids, raw[0::2], raw[1::2]):
            if entry is None:
                dead.append(iid)
                continue
            inst = common_pb2.Instance.FromString(entry)
            if load is not None:
                inst.load.CopyFrom(common_pb2.LoadReport.FromString(load))
            live.append(inst)
        if dead:
            await self.redis.srem(self.keys.instances(), *dead)
        return live

    async def claim_decision(self, decision_id: str, record: dict) -> bool:
        """True the first time a decision id is seen: actions with unknown acks stay idempotent."""
        return bool(await self.redis.set(self.keys.scale_decision(decision_id), json.dumps(record), nx=True))

    async def put_profile(self, instance_id: str, profile: dict) -> None:
        await self.redis.set(self.keys.profile(instance_id), json.dumps(profile))

    async def get_profile(self, instance_id: str) -> dict | None:
        raw = await self.redis.get(self.keys.profile(instance_id))
        return json.loads(raw) if raw else None

    # -- draining (the scaler marks, the scheduler reads) and the autoscaler's status -------------

    async def mark_draining(self, instance_id: str, draining: bool = True) -> None:
        if draining:
            await self.redis.sadd(self.keys.draining(), instance_id)
        else:
            await self.redis.srem(self.keys.draining(), instance_id)

    async def draining_ids(self) -> set[str]:
        return {as_text(i) for i in await self.redis.smembers(self.keys.draining())}

    # -- P-D links (the scaler keeps them, the scheduler pairs by them) ---------------------------

    async def put_link(self, prefill_id: str, decode_id: str, record: dict) -> None:
        await self.redis.hset(self.keys.links(), self.keys.link_field(prefill_id, decode_id), json.dumps(record))

    async def drop_links(self, pairs) -> None:
        fields = [self.keys.link_field(p, d) for p, d in pairs]
        if fields:
            await self.redis.hdel(self.keys.links(), *fields)

    async def links(self) -> dict[tuple[str, str], dict]:
        raw = await self.redis.hgetall(self.keys.links())
        return {self.keys.link_pair(as_text(f)): json.loads(v) for f, v in raw.items()}

    async def mark_linker(self, ttl_s: float) -> None:
        await self.redis.set(self.keys.linker(), "1", px=int(ttl_s * 1000))

    async def usable_links(self) -> frozenset[tuple[str, str]] | None:
        """The (prefill, decode) pairs the scheduler may use: those linked and up; None while no
        link manager runs (then any pair may be used, as before links existed)."""
        if not await self.redis.exists(self.keys.linker()):
            return None
        return frozenset(pair for pair, rec in (await self.links()).items() if rec.get("state") == "up")

    async def put_autoscale_status(self, status: dict) -> None:
        await self.redis.set(self.keys.autoscale(), json.dumps(status))

    async def get_autoscale_status(self) -> dict | None:
        raw = await self.redis.get(self.keys.autoscale())
        return json.loads(raw) if raw else None

    async def put_standby_status(self, status: dict) -> None:
        await self.redis.set(self.keys.standby(), json.dumps(status))

    async def get_standby_status(self) -> dict | None:
        raw = await self.redis.get(self.keys.standby())
        return json.loads(raw) if raw else None
