"""Per-request latency accounting at the router: TTFT, mean TPOT, SLO verdict. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common.domain import Slo
from services.common.tracing import slo_misses


@dataclass
class StreamTimer:
    """Token arrival times as the router sees them (the client-facing clock)."""

    arrival_s: float
    first_token_s: float | None = None
    last_token_s: float | None = None
    tokens: int = 0
    _marks: list[float] = field(default_factory=list, repr=False)

    def on_tokens(self, count: int, now_s: float) -> None:
        if count <= 0:
            return
        if self.first_token_s is None:
            self.first_token_s = now_s
        self.last_token_s = now_s
        self.tokens += count

    @property
    def ttft_ms(self) -> float:
        return 0.0 if self.first_token_s is None else (self.first_token_s - self.arrival_s) * 1000

    @property
    def tpot_ms(self) -> float:
        """Mean time per output token over the decode phase (tokens after the first)."""
        if self.tokens < 2 or self.first_token_s is None or self.last_token_s is None:
            return 0.0
        return (self.last_token_s - self.first_token_s) * 1000 / (self.tokens - 1)

    def e2e_ms(self, now_s: float) -> float:
        return (now_s - self.arrival_s) * 1000

    def slo_met(self, slo: Slo) -> bool:
        if self.first_token_s is None:
            return False
        return not slo_misses(slo.ttft_ms, slo.tpot_ms, self.ttft_ms, self.tpot_ms, self.tokens)
