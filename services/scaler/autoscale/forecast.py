"""Short-term arrival-rate forecast: Holt's linear trend (level + trend), updated once a tick.

Pure state: `observe(rate, now_s)` folds one measurement in; `at(horizon_s)` extrapolates. The
trend is per second, so ticks need not be evenly spaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class HoltForecast:
    alpha: float = 0.5
    beta: float = 0.3
    level: float | None = None
    trend_per_s: float = 0.0
    last_s: float | None = None

    def observe(self, rate: float, now_s: float) -> None:
        if self.level is None or self.last_s is None:
            self.level, self.last_s = rate, now_s
            return
        dt = now_s - self.last_s
        if dt <= 0:
            return
        predicted = self.level + self.trend_per_s * dt
        level = self.alpha * rate + (1 - self.alpha) * predicted
        self.trend_per_s = self.beta * (level - self.level) / dt + (1 - self.beta) * self.trend_per_s
        self.level, self.last_s = level, now_s

    def at(self, horizon_s: float) -> float:
        """The rate expected `horizon_s` from the last observation (never below 0)."""
        if self.level is None:
            return 0.0
        return max(0.0, self.level + self.trend_per_s * horizon_s)


@dataclass
class RateTracker:
    """The arrival rate the policy sizes for: a measured rate over a short window, with its
    counting noise told apart from a change.

    A window of W seconds at rate r counts about r*W arrivals, give or take sqrt(r*W) (Poisson),
    so the measured rate wanders by sqrt(r/W) from tick to tick with no change in the load. Sized
    for as it is, every upward wander buys an instance that a later downward one cannot release
    (a removal waits for a cool-down and needs headroom), so the fleet ratchets to the noise's
    peaks. The tracker follows a measurement at once when it is more than 2z of those deviations
    from its level (a spike, or its end), or more than z on two observations running on the same
    side (a smaller change; one such wander alone is noise often enough), and otherwise moves
    toward it with time constant `tau_s` (the window's length when 0). z = 0, or an unknown
    window: the measurement as it is.
    """

    z: float = 2.0
    tau_s: float = 0.0
    level: float | None = None
    last_s: float | None = None
    jumped: bool = False          # the last observation was a change, not noise
    _pending: int = 0             # the side (+1/-1) of the last observation beyond z, 0: none

    def observe(self, rate: float, window_s: float, now_s: float) -> float:
        if self.level is None or self.last_s is None or self.z <= 0 or window_s <= 0:
            self.level, self.last_s, self.jumped = rate, now_s, False
            return rate
        dt = max(0.0, now_s - self.last_s)
        self.last_s = now_s
        noise = math.sqrt(max(self.level, rate, 1.0 / window_s) / window_s)
        off = (rate - self.level) / noise
        side = (off > 0) - (off < 0)
        self.jumped = abs(off) > 2 * self.z or (abs(off) > self.z and self._pending == side)
        self._pending = side if abs(off) > self.z and not self.jumped else 0
        if self.jumped:
            self.level = rate
        else:
            tau = self.tau_s or window_s
            self.level += (1.0 - math.exp(-dt / tau)) * (rate - self.level)
        return self.level

    def noise(self, window_s: float) -> float:
        """One standard deviation of a window's measured rate at the current level."""
        if self.level is None or window_s <= 0:
            return 0.0
        return math.sqrt(max(self.level, 1.0 / window_s) / window_s)
