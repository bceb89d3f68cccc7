"""Typed scaler configuration (filled from CLI flags by services.cli)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.scaler.autoscale.choice import BaselineSettings
from services.scaler.autoscale.config import AutoscaleConfig
from services.scaler.autoscale.pd import PDConfig
from services.scaler.autoscaling import LiveOptions


@dataclass(frozen=True)
class ScalerConfig:
    model: str
    scheduler_address: str
    log_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    replicas: int = 1                    # colocated workers
    # P/D (issue 10): prefill and decode workers beside the colocated ones (fixed counts; the
    # autoscaler scales the colocated pool only).
    prefill_replicas: int = 0
    decode_replicas: int = 0
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "hfx"
    engine: str = "vllm"
    device: str = "cpu"
    tracing_spec: str = "off"
    restart_crashed: bool = True
    worker_args: tuple[str, ...] = field(default_factory=tuple)  # extra flags passed to each worker
    cluster_name: str = "hfx"
    metrics_port: int = 0                # Prometheus /metrics on 127.0.0.1; 0 = off
    worker_metrics: bool = False         # give each worker its own /metrics port (a free one)
    # Issue 12: vLLM workers serve their weights (--serve-weights) and a new worker pulls them from
    # the least loaded live one (services/scaler/donor.py) instead of reading storage.
    d2d: bool = False
    # With d2d: engines kept started ahead with dummy weights, taken by scale-ups
    # (services/scaler/standby.py); checked by services/scaler/standby_cli.py.
    standby_pool: int = 0
    # Elastic scaling (None: keep `replicas` workers). `replicas` is then the starting count,
    # clamped to [min, max].
    autoscale: AutoscaleConfig | None = None
    autoscale_options: LiveOptions = field(default_factory=LiveOptions)
    # Who decides (services/scaler/autoscale/choice.py): hfx, or a baseline (queue, planner,
    # static) with its settings, to compare them live.
    autoscaler: str = "hfx"
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    # P/D autoscaling (with autoscale and prefill/decode counts): the prefill and decode slots are
    # scaled by PDAutoscaler instead of the colocated pool (which is then empty).
    pd_autoscale: PDConfig | None = None
    actuator: str = "local"
    # --actuator kubernetes: the workers' Deployment the autoscaler scales (services/scaler/k8s_actuator.py).
    k8s_namespace: str = "hfx"
    k8s_deployment: str = "worker"
    # P-D links (issue 11): keep {prefix}:links (warm-up transfer before a pair is used).
    links: bool = True
    # Role changes (issue 11): every worker starts with --kv-transfer so it can take any role.
    role_changes: bool = False
    pd_local_prefill: bool = True
    # A restarted scaler adopts running workers (services/scaler/adopt.py): workers outlive the
    # scaler, tied instead to the anchor process (pid, start ticks) when one is given.
    adopt_workers: bool = False
    workers_anchor: tuple[int, int] | None = None
