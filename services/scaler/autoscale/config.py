"""Typed autoscaler configuration, checked once at construction (clear errors on bad input)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from services.common.errors import InvalidArgument
from services.scaler.autoscale.signals import StartKind

# Until a start of a kind has been measured. Cold: a vLLM CPU engine took 60-120 s here
# (ENVIRONMENT.md); from a peer and from standby are what issue 12 / a warm pool aim at.
DEFAULT_READY_TIMES_S = {StartKind.COLD: 60.0, StartKind.PEER: 15.0, StartKind.STANDBY: 3.0}


@dataclass(frozen=True)
class AutoscaleConfig:
    min_replicas: int = 1
    max_replicas: int = 8
    # Price per instance-second by device kind (any currency); the cheaper way that meets the
    # SLOs in time wins. New instances use `device` unless another listed kind is cheaper.
    prices: Mapping[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    device: str = "cpu"
    # Requests/s one instance of each device kind carries within the SLOs, until measured.
    capacity_rps: Mapping[str, float] = field(default_factory=lambda: {"cpu": 1.0})
    # Scale up when predicted demand exceeds this share of the SLO capacity of the instances
    # that will be ready in time; scale down only when the survivors stay at or below the lower
    # share. The gap between the two is what keeps a steady load at a boundary from oscillating.
    target_utilization: float = 0.8
    scale_down_utilization: float = 0.6
    # SLO attainment (share of finished requests meeting both SLOs) below which the policy adds
    # capacity when requests also queue or are turned away, and above which it may remove some.
    target_attainment: float = 0.9
    min_attainment_samples: int = 20      # fewer finished requests in the window: no SLO verdict
    scale_down_cooldown_s: float = 60.0   # after any scale action, before a removal
    scale_up_cooldown_s: float = 0.0      # between SLO-driven extra starts (demand-driven ones: none)
    warmup_s: float = 30.0                # an instance's capacity samples count this long after ready
    ready_times_s: Mapping[StartKind, float] = field(default_factory=lambda: dict(DEFAULT_READY_TIMES_S))
    # Holt linear-trend forecast of the arrival rate (smoothing of level and trend per tick).
    forecast_alpha: float = 0.5
    forecast_beta: float = 0.3
    # The forecast may exceed the measured rate by at most this share per minute of the lead time
    # it looks ahead: a step (a spike) makes a steep trend whose extrapolation would buy far more
    # than the step itself, and the shorter the lead, the less a trend can add before the next
    # decision (a 2 s start: ~2%; a 60 s one: the whole share).
    forecast_max_growth_per_min: float = 0.5
    # Look this far past the ready time when deciding a removal (the survivors must carry it).
    scale_down_horizon_s: float = 60.0
    # The scheduler's backlog is bought as capacity that clears it within this long (at least a
    # start's lead time): the new instances serve the queue and the arrivals both, so sizing to
    # clear it within the lead time alone buys instances the arrivals never need once it is gone.
    backlog_drain_s: float = 60.0
    # The measured arrival rate counts as a change only beyond this many standard deviations of a
    # window's counting noise; within it, it is smoothed over the window's length (forecast.py's
    # RateTracker). 0: size for each window's measurement as it is.
    rate_noise_z: float = 2.0
    # A drain must leave survivors that stay under the scale-up line (target_utilization) if the
    # rate turns out this many standard deviations of a window's counting noise above the one it
    # was decided on: a drain sized to one low window (after a spike, the swell's next seconds
    # are a fresh draw) is undone by the next, at a start's lead time and the misses meanwhile.
    # 0: only scale_down_utilization.
    drain_noise_z: float = 1.0
    # SLO feedback on capacity: while attainment stays above target_attainment + attainment_margin
    # with nothing queued or turned away, the instances carry more than their SLO capacity says
    # (the profile's is conservative), so the policy counts each as carrying up to
    # max_capacity_gain times it, learnt with this time constant; below the mark the gain falls
    # back toward 1 (never under: a shortfall is SLO pressure's to answer). 0: no feedback.
    # 150 s (was 300 until issue 13's eighth pass): at 300 s the gain needed most of a 30-minute
    # bench (300 s live, clocks / 6) to reach what the instances carry, and the attainment above the
    # mark meanwhile was bought with instances; 150 s still averages five 30 s attainment windows.
    slo_feedback_s: float = 150.0
    attainment_margin: float = 0.03
    max_capacity_gain: float = 1.5

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise InvalidArgument("min_replicas", f"must be >= 0, got {self.min_replicas}")
        if self.max_replicas < 1:
            raise InvalidArgument("max_replicas", f"must be >= 1, got {self.max_replicas}")
        if self.min_replicas > self.max_replicas:
            raise InvalidArgument("min_replicas", f"must be <= max_replicas, got min {self.min_replicas} > "
                                  f"max {self.max_replicas}")
        if not self.prices:
            raise InvalidArgument("prices", "need a price for at least one device kind")
        for device, price in self.prices.items():
            if not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
                raise InvalidArgument("prices", f"price of {device!r} must be a finite number >= 0, got {price!r}")
        if self.device not in self.prices:
            raise InvalidArgument("device", f"{self.device!r} has no price (priced: {', '.join(sorted(self.prices))})")
        for device, rps in self.capacity_rps.items():
            if not isinstance(rps, (int, float)) or not math.isfinite(rps) or rps <= 0:
                raise InvalidArgument("capacity_rps", f"capacity of {device!r} must be > 0 req/s, got {rps!r}")
        if not 0 < self.target_utilization <= 1:
            raise InvalidArgument("target_utilization", f"must be in (0, 1], got {self.target_utilization}")
        if not 0 < self.scale_down_utilization < self.target_utilization:
            raise InvalidArgument("scale_down_utilization", "must be > 0 and below target_utilization "
                                  f"({self.target_utilization}), got {self.scale_down_utilization}")
        if not 0 < self.target_attainment <= 1:
            raise InvalidArgument("target_attainment", f"must be in (0, 1], got {self.target_attainment}")
        for name in ("scale_down_cooldown_s", "scale_up_cooldown_s", "warmup_s", "scale_down_horizon_s",
                     "forecast_max_growth_per_min", "backlog_drain_s", "rate_noise_z", "drain_noise_z", "slo_feedback_s",
                     "attainment_margin"):
            if getattr(self, name) < 0:
                raise InvalidArgument(name, f"must be >= 0, got {getattr(self, name)}")
        if self.max_capacity_gain < 1 or not math.isfinite(self.max_capacity_gain):
            raise InvalidArgument("max_capacity_gain", f"must be >= 1, got {self.max_capacity_gain}")
        for kind, t in self.ready_times_s.items():
            if t < 0:
                raise InvalidArgument("ready_times_s", f"{kind.value} must be >= 0 s, got {t}")
        for name in ("forecast_alpha", "forecast_beta"):
            if not 0 < getattr(self, name) <= 1:
                raise InvalidArgument(name, f"must be in (0, 1], got {getattr(self, name)}")

    def price(self, device: str) -> float:
        return self.prices[device]

    def default_capacity(self, device: str) -> float:
        return self.capacity_rps.get(device, self.capacity_rps.get(self.device, 1.0))
