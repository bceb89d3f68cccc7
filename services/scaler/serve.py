"""The scaler process: its gRPC server around ScalerServicer (services/scaler/server.py), the
slot loop, and the autoscaler when one is configured."""

from __future__ import annotations

import asyncio
import logging
import time

from services.common import grpcutil, metrics, runtime, store
from services.common.keys import Keys
from services.common.pb.hfx.v1 import scaler_pb2_grpc
from services.scaler.config import ScalerConfig
from services.scaler.server import SERVICE_NAME, ScalerServicer

log = logging.getLogger("hfx.scaler")
async def serve(config: ScalerConfig) -> None:
    cluster = store.ClusterStore(store.connect(config.redis_url), Keys(config.redis_prefix))
    servicer = ScalerServicer(config, cluster)
    servicer.adopt_running()
    metrics.serve_http(config.metrics_port, config.host)  # same address as gRPC, so other hosts can scrape
    server, health = grpcutil.make_server([(scaler_pb2_grpc.add_ScalerServicer_to_server, servicer)], [SERVICE_NAME])
    port = grpcutil.bind(server, config.host, config.port)
    await server.start()
    await grpcutil.set_serving(health, [SERVICE_NAME])
    tasks = [asyncio.create_task(servicer.loop())]
    if config.autoscale is not None:
        tasks.append(asyncio.create_task(_autoscaler(config, servicer, cluster).run()))
    log.info("scaler serving on %s:%d, %d colocated + %d prefill + %d decode workers wanted%s", config.host, port,
             servicer.desired, config.prefill_replicas, config.decode_replicas,
             f" (autoscaling {config.autoscale.min_replicas}-{config.autoscale.max_replicas})"
             if config.autoscale else "")
    await runtime.stop_on_signals().wait()
    for task in tasks:
        task.cancel()
    await asyncio.get_running_loop().run_in_executor(None, servicer.shutdown)
    await server.stop(grace=1.0)


def _autoscaler(config: ScalerConfig, servicer: ScalerServicer, cluster: store.ClusterStore):
    from services.scaler.actuator import Actuator, LocalProcesses
    from services.scaler.autoscale import PDAutoscaler
    from services.scaler.autoscale.choice import make_autoscaler
    from services.scaler.autoscaling import AutoscaleLoop

    if config.autoscale is None:
        raise ValueError("the scaler's autoscaler was started without its settings")
    actuator: Actuator
    if config.actuator == "kubernetes":
        from services.scaler.k8s_actuator import Kubernetes

        actuator = Kubernetes.connect(cluster, config.k8s_namespace, config.k8s_deployment)
    else:
        actuator = LocalProcesses(servicer, cluster)
    prefix = f"{config.cluster_name}-{int(time.time() * 1000)}"
    policy = PDAutoscaler(config.pd_autoscale, id_prefix=prefix) if config.pd_autoscale is not None \
        else make_autoscaler(config.autoscaler, config.autoscale, config.baselines, id_prefix=prefix)
    return AutoscaleLoop(servicer, cluster, actuator, policy, config.autoscale_options, config.scheduler_address,
                         (config.autoscale.min_replicas, config.autoscale.max_replicas))
