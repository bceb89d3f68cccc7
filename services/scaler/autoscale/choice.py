"""Which autoscaler decides: HFX's policy or one of the baselines, built by name.

The live scaler (`hfx scaler --autoscale --autoscaler NAME`, services/scaler/serve.py) and the
benchmarks build their autoscaler here, so the objects compared in the simulator are the ones
that drive live workers. Bounds, the default device and its capacity come from the
AutoscaleConfig that HFX's policy uses; the baselines' own knobs from BaselineSettings.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.scaler.autoscale.baselines import QueueThreshold, Static, ThroughputPlanner
from services.scaler.autoscale.config import AutoscaleConfig
from services.scaler.autoscale.policy import Autoscaler

AUTOSCALERS = ("hfx", "queue", "planner", "static")


@dataclass(frozen=True)
class BaselineSettings:
    # queue: an HPA on queue length (target queued requests per ready instance, sync period,
    # downscale stabilisation window); the defaults are Kubernetes'.
    queue_target: float = 1.0
    queue_period_s: float = 15.0
    queue_stabilization_s: float = 300.0
    # planner: adjustment interval; its per-instance throughput is the config's capacity.
    planner_interval_s: float = 60.0
    # static: instances held (None: the config's max_replicas, i.e. provisioned for the peak).
    static_replicas: int | None = None


def make_autoscaler(name: str, config: AutoscaleConfig, settings: BaselineSettings = BaselineSettings(),
                    id_prefix: str = ""):
    """The autoscaler `name` (one of AUTOSCALERS); raises InvalidArgument for any other name or
    a bad setting."""
    device = config.device
    if name == "hfx":
        return Autoscaler(config, id_prefix=id_prefix or "hfx")
    if name == "queue":
        return QueueThreshold(config.min_replicas, config.max_replicas, settings.queue_target, settings.queue_period_s,
                              settings.queue_stabilization_s, device=device, id_prefix=id_prefix)
    if name == "planner":
        return ThroughputPlanner(config.min_replicas, config.max_replicas, config.default_capacity(device),
                                 settings.planner_interval_s, device=device, id_prefix=id_prefix)
    if name == "static":
        n = config.max_replicas if settings.static_replicas is None else settings.static_replicas
        return Static(n, device=device, id_prefix=id_prefix)
    raise InvalidArgument("autoscaler", f"unknown autoscaler {name!r}; choose one of {', '.join(AUTOSCALERS)}")
