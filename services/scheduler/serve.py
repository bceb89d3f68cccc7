"""The scheduler process: its gRPC server around SchedulerServicer (services/scheduler/server.py),
the scheduling round and registry loops, and the role-change loop when role changes are on."""

from __future__ import annotations

import asyncio
import collections
import logging

from services.common import grpcutil, metrics, runtime, store, tracing
from services.common.keys import Keys
from services.common.pb.hfx.v1 import scheduler_pb2_grpc
from services.scheduler import registry_sync
from services.scheduler.config import SchedulerConfig
from services.scheduler.policy import make_policy
from services.scheduler.policy.settings import describe
from services.scheduler.server import SERVICE_NAME, SchedulerServicer

log = logging.getLogger("hfx.scheduler")


def drain(items: collections.deque) -> list:
    out = list(items)
    items.clear()
    return out


async def serve(config: SchedulerConfig) -> None:
    tracing.setup("hfx-scheduler", config.tracing)
    metrics.serve_http(config.metrics_port, config.host)  # same address as gRPC, so other hosts can scrape
    cluster = store.ClusterStore(store.connect(config.redis_url), Keys(config.redis_prefix))
    servicer = SchedulerServicer(config, make_policy(config.policy, config.policy_config), cluster,
                                 config.policy_config)
    server, health = grpcutil.make_server(
        [(scheduler_pb2_grpc.add_SchedulerServicer_to_server, servicer)], [SERVICE_NAME]
    )
    port = grpcutil.bind(server, config.host, config.port)
    await server.start()
    tasks = [asyncio.create_task(servicer.round_loop()), asyncio.create_task(registry_sync.registry_loop(servicer))]
    if config.role_changes:
        if not config.scaler_address:
            raise ValueError("--role-changes needs --scaler (the scaler carries the changes out)")
        from services.scheduler.role_loop import run_role_loop
        from services.scheduler.roles import RolePolicy

        tasks.append(asyncio.create_task(run_role_loop(
            RolePolicy(policy_config=config.policy_config), config.scaler_address,
            lambda: (servicer.state.snapshot(), [w.spec for w in servicer.state.waiting.values()],
                     drain(servicer.refused)))))
    runtime.started()
    await grpcutil.set_serving(health, [SERVICE_NAME])
    log.info("scheduler (policy %s) serving on %s:%d; policy settings: %s", config.policy, config.host, port,
             describe(config.policy_config))
    await runtime.stop_on_signals().wait()
    for t in tasks:
        t.cancel()
    await server.stop(grace=1.0)
    tracing.shutdown()
