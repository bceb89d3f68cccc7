"""Short-term arrival-rate forecast: Holt's linear trend (level + trend), updated once a tick.

Pure state: `observe(rate, now_s)` folds one measurement in; `at(horizon_s)` extrapolates. The
trend is per second, so ticks need not be evenly spaced.
"""

from __future__ import annotations

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
