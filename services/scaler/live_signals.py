"""The live autoscaler's signals: counters from the scheduler's and the router's Prometheus
/metrics (as a planner reads its frontend's), differenced over a window. Parsing and windowing are
pure; `scrape` is the only I/O (HTTP with a timeout).

From the scheduler: every verdict (one per settled Place: the arrivals), rejections by reason
kind, the queue depth and what it has placed per instance. From the router: SLO met / missed per
task class (rejected and failed count as missed). Without a router /metrics address the
autoscaler runs on demand alone and says so.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections import deque
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from services.scaler.autoscale.signals import Attainment

SCRAPE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Counters:
    t_s: float
    verdicts: float = 0.0                                    # cumulative, all verdicts
    rejects: dict[str, float] = field(default_factory=dict)  # reason kind -> cumulative
    slo: dict[str, tuple[float, float]] = field(default_factory=dict)  # class -> cumulative (met, missed)
    queue_depth: int = 0
    placed: dict[str, int] = field(default_factory=dict)     # instance -> placed, not yet completed
    prompt_tokens: float = 0.0                               # cumulative, of the requests given a verdict
    max_tokens: float = 0.0                                  # cumulative, output tokens they asked for


def parse(t_s: float, scheduler_text: str, router_text: str = "") -> Counters:
    verdicts, queue = 0.0, 0
    tokens = {"prompt": 0.0, "max": 0.0}
    rejects: dict[str, float] = {}
    placed: dict[str, int] = {}
    for family in text_string_to_metric_families(scheduler_text):
        for s in family.samples:
            if s.name == "hfx_scheduler_verdicts_total":
                verdicts += s.value
                if s.labels.get("verdict") == "reject":
                    kind = s.labels.get("reason", "")
                    rejects[kind] = rejects.get(kind, 0.0) + s.value
            elif s.name == "hfx_scheduler_queue_depth":
                queue += int(s.value)
            elif s.name == "hfx_instance_placed_requests":
                placed[s.labels.get("instance", "")] = int(s.value)
            elif s.name == "hfx_scheduler_verdict_tokens_total" and s.labels.get("kind") in tokens:
                tokens[s.labels["kind"]] += s.value
    slo: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(router_text):
        for s in family.samples:
            if s.name == "hfx_router_slo_total":
                pair = slo.setdefault(s.labels.get("task_class", ""), [0.0, 0.0])
                pair[0 if s.labels.get("result") == "met" else 1] += s.value
    return Counters(t_s, verdicts, rejects, {k: (v[0], v[1]) for k, v in slo.items()}, queue, placed,
                    tokens["prompt"], tokens["max"])


class Window:
    """Counters over the last `window_s`: rates and shares from the oldest kept sample to the newest."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self.samples: deque[Counters] = deque()

    def add(self, c: Counters) -> None:
        self.samples.append(c)
        while len(self.samples) > 2 and self.samples[1].t_s <= c.t_s - self.window_s:
            self.samples.popleft()

    def arrival_rps(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        a, b = self.samples[0], self.samples[-1]
        dt = b.t_s - a.t_s
        # A restarted scheduler starts its counters at 0: no negative rates.
        return max(0.0, b.verdicts - a.verdicts) / dt if dt > 0 else 0.0

    def span_s(self) -> float:
        """How long the window behind arrival_rps() is (0 before it has two samples)."""
        return self.samples[-1].t_s - self.samples[0].t_s if len(self.samples) >= 2 else 0.0

    def mean_tokens(self) -> tuple[float, float]:
        """(mean prompt tokens, mean output tokens asked) of the requests given a verdict over the
        window; (0, 0) without any."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        a, b = self.samples[0], self.samples[-1]
        n = b.verdicts - a.verdicts
        if n <= 0:
            return 0.0, 0.0
        return max(0.0, b.prompt_tokens - a.prompt_tokens) / n, max(0.0, b.max_tokens - a.max_tokens) / n

    def attainment(self) -> dict[str, Attainment]:
        if len(self.samples) < 2:
            return {}
        a, b = self.samples[0], self.samples[-1]
        out = {}
        for cls, (met, missed) in b.slo.items():
            met0, missed0 = a.slo.get(cls, (0.0, 0.0))
            dm, dx = max(0.0, met - met0), max(0.0, missed - missed0)
            if dm + dx > 0:
                out[cls] = Attainment(int(dm), int(dm + dx))
        return out

    def rejections(self) -> dict[str, int]:
        if len(self.samples) < 2:
            return {}
        a, b = self.samples[0], self.samples[-1]
        return {k: int(v - a.rejects.get(k, 0.0)) for k, v in b.rejects.items() if v - a.rejects.get(k, 0.0) > 0}


def _get(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=SCRAPE_TIMEOUT_S) as reply:
        return reply.read().decode()


async def scrape(address: str) -> str:
    """One /metrics page ("" when no address is set); raises OSError when it cannot be read."""
    if not address:
        return ""
    return await asyncio.get_running_loop().run_in_executor(None, _get, address)
