"""Bursty arrival traces for scaling experiments.

`swell_and_spikes`: a slow swell (one sin^2 hump from `base` up to `swell_peak` and back over the
duration) with sharp rectangular spikes on top (rise in one step, `spike_s` long), the largest at
the swell's top reaching `peak_rps`. Arrivals are a non-homogeneous Poisson process drawn by
thinning, so the trace is random but its rate curve is known exactly (plots show both).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class SwellSpikes:
    duration_s: float
    peak_rps: float
    base_share: float = 0.15          # of peak, at the start and end
    swell_share: float = 0.55         # of peak, at the swell's top
    spike_share: float = 0.45         # of peak, added during a spike
    spike_s: float = 45.0
    spikes_at: tuple[float, ...] = (0.2, 0.5, 0.72, 0.9)   # spike starts, as shares of the duration

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.peak_rps <= 0:
            raise ValueError(f"duration and peak rate must be > 0, got {self.duration_s}, {self.peak_rps}")

    def rate(self, t_s: float) -> float:
        base, swell = self.base_share * self.peak_rps, self.swell_share * self.peak_rps
        r = base + (swell - base) * math.sin(math.pi * t_s / self.duration_s) ** 2
        if any(s * self.duration_s <= t_s < s * self.duration_s + self.spike_s for s in self.spikes_at):
            r += self.spike_share * self.peak_rps
        return r

    def max_rate(self) -> float:
        return self.swell_share * self.peak_rps + self.spike_share * self.peak_rps

    def arrivals(self, seed: int) -> list[float]:
        rng = random.Random(seed)
        top = self.max_rate()
        t = 0.0
        out: list[float] = []
        while True:
            t += rng.expovariate(top)
            if t >= self.duration_s:
                return out
            if rng.random() * top < self.rate(t):
                out.append(t)
