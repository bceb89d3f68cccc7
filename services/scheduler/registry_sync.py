"""The scheduler's view of the registry: instances, draining ids, P-D links and latency profiles
read from Redis every `registry_refresh_s`, and the per-instance gauges exported after each read.
Functions of the servicer (services/scheduler/server.py), which owns the state they fill."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from services.common import metrics
from services.scheduler.policy import KeepsBudgets

if TYPE_CHECKING:
    from services.scheduler.server import SchedulerServicer

log = logging.getLogger("hfx.scheduler")


async def registry_loop(s: SchedulerServicer) -> None:
    store = s.store
    if store is None:
        return   # no registry (an in-process scheduler fed by hand)
    while True:
        try:
            s.state.set_instances(await store.instances())
            s.state.draining = await store.draining_ids()
            s.state.links = await store.usable_links()
            await load_profiles(s)
            export_instances(s)
            s.wake()
        except Exception as err:
            log.warning("registry refresh failed: %s", err)
        await asyncio.sleep(s.config.registry_refresh_s)


async def load_profiles(s: SchedulerServicer) -> None:
    """Latency models of instances that stored a profile and have none here yet."""
    store = s.store
    if store is None:
        return
    live = set(s.state.instances)
    s.models.forget(live)
    for iid in list(s.state.models):
        if iid not in live:
            del s.state.models[iid]
            s.state.chunk_tokens.pop(iid, None)
    for iid in sorted(live - set(s.state.models)):
        doc = await store.get_profile(iid)
        if doc is None:
            continue
        try:
            s.state.models[iid] = s.models.set_profile(iid, doc)
        except (KeyError, TypeError, ValueError) as err:
            log.warning("instance %s stored an unreadable profile: %s", iid, err)
            continue
        take_step_budget(s, iid, doc)
        m = s.state.models[iid]
        log.info("latency model of %s (%s): step_ms = %.3g + %.3g*prefill + %.3g*decode_seqs + %.3g*kv_tokens; "
                 "KV transfer %s", iid, doc.get("source", "profile"), m.c0_ms, m.c1_ms_per_prefill_token,
                 m.c2_ms_per_decode_seq, m.c3_ms_per_kv_token,
                 f"{m.kv_transfer_ms_per_token:.3g} ms/token (measured)" if m.kv_transfer_ms_per_token
                 else "not measured (policy default)")


def take_step_budget(s: SchedulerServicer, instance_id: str, doc: dict) -> None:
    """The instance's engine steps up to its profile's chunk_tokens: its prefill estimates use that
    budget (policy.base.chunk_tokens_of), not the policy's default, which stays for instances
    whose profile has none. Before, a vLLM CPU worker stepping 2048 tokens was estimated at 512,
    as this function's warning said in every live run (issue 9, tenth session)."""
    chunk = doc.get("chunk_tokens")
    if isinstance(chunk, int) and not isinstance(chunk, bool) and chunk > 0:
        s.state.chunk_tokens[instance_id] = chunk
        if chunk != s.policy_config.chunk_tokens:
            log.info("instance %s steps up to %d tokens (its profile's chunk_tokens): its prefill estimates use "
                     "that, not the policy's %d", instance_id, chunk, s.policy_config.chunk_tokens)
    elif chunk is not None:
        log.warning("instance %s stored a profile with an unreadable chunk_tokens %r: its prefill estimates "
                    "use the policy's %d", instance_id, chunk, s.policy_config.chunk_tokens)


def export_instances(s: SchedulerServicer) -> None:
    """Per-instance load as this scheduler sees it, for /metrics."""
    for iid in s.state.instances:
        load = s.state.loads.get(iid)
        if load is not None:
            metrics.set_instance_load(iid, load.running_requests, load.waiting_requests, load.kv_usage,
                                      len(s.state.running.get(iid, {})))
    if isinstance(s.policy, KeepsBudgets):  # only policies that keep budgets (hfx)
        for iid, budget_ms in s.policy.budgets_ms().items():
            if iid in s.state.instances:
                metrics.set_instance_budget(iid, budget_ms)
    metrics.forget_instances(set(s.state.instances))
