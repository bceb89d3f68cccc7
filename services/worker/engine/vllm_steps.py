"""A vLLM engine's steps as the step model needs them: what each engine step held and how long it
took, from the reports of vLLM's stat logger (one per engine step).

The composition comes from the engine core's own account of the step it scheduled
(`SchedulerStats.iteration_details`, on when the engine is started with
`enable_logging_iteration_details`): prefill tokens scheduled in that step, chunks of a longer
prompt included, and requests decoding in it. Reading it from the step's outputs instead (prompt
tokens counted when a prefill completes, decodes as tokens generated less first tokens) was wrong
whenever a prompt was chunked (issue 10, tenth session): the chunks' steps came out as steps of
no prefill, so the decode factor of online calibration read a prefill chunk's time as one decode
step (clipped at 8x), and the last chunk's step was credited with the whole prompt.

The duration is the engine core's clock: where the step carried a decode, the gap between the
output batch that held a decoding request's previous token and this one (`engine_step_ms`: one
engine step to the next, what a request's TPOT sees); a step without a decode (a prefill leg on
P, a chunk) has no such gap and takes the step's execution time (`elapsed_ms`) plus what the
engine spends between steps beyond it, learned from the steps that have both. The gap between two
reports as the frontend sees them (the old fallback) spans idle time, several chunk steps without
outputs, and the worker's event loop; and it counted only while requests had been running at the
previous report, which on P (prefill legs end with their first token) is hardly ever: the old sink
took 1 sample of P's 120 live steps in a run of the tenth session.

A P/D decode leg's first step on D (its prompt's KV pulled, one token recomputed) is a step like
any other: the pull runs in a thread before it (services/worker/kv/connector.py), and its gap was
6.7 ms at the median against 7.2 ms for the decode steps before it (90 such steps, tenth session).
The ninth session left these steps out because calibration read their one prompt token as a
prefill (kp to its clip); online calibration now charges a step to the term that holds most of
its prediction (services/scheduler/latency.py).
"""

from __future__ import annotations

import collections
from typing import Any

from services.common.domain import StepSample

RECENT_STEPS = 32
OVERHEAD_WEIGHT = 0.05  # the between-steps time follows ~the last 20 decode steps


class StepSink:
    """What the stat logger saw last; read by VllmEngine.stats() on the event loop thread."""

    def __init__(self) -> None:
        self.running_requests = 0
        self.waiting_requests = 0
        self.kv_usage = 0.0
        self.step_ms: collections.deque[float] = collections.deque(maxlen=RECENT_STEPS)
        self.steps: collections.deque[StepSample] = collections.deque(maxlen=RECENT_STEPS)
        self.steps_total = 0
        self.kv_capacity_tokens = 0
        self.between_steps_ms = 0.0  # engine-core time per step outside the model's execution

    def record(self, scheduler_stats: Any, iteration_stats: Any, kv_capacity_tokens: int = 0) -> None:
        details = getattr(scheduler_stats, "iteration_details", None)
        if details is not None and not details.is_dummy:
            self._record_step(details, iteration_stats, self.kv_usage * kv_capacity_tokens)
        if scheduler_stats is not None:
            self.running_requests = scheduler_stats.num_running_reqs
            self.waiting_requests = scheduler_stats.num_waiting_reqs
            self.kv_usage = scheduler_stats.kv_cache_usage

    def _record_step(self, details: Any, iteration_stats: Any, kv_tokens: float) -> None:
        gap_ms = engine_step_ms(iteration_stats) if iteration_stats is not None else None
        decodes = int(details.num_generation_requests)
        if gap_ms is not None and decodes > 0:
            step_ms = gap_ms
            between = max(0.0, gap_ms - float(details.elapsed_ms))
            self.between_steps_ms += OVERHEAD_WEIGHT * (between - self.between_steps_ms)
        else:
            step_ms = float(details.elapsed_ms) + self.between_steps_ms
        if step_ms <= 0:
            return
        self.step_ms.append(step_ms)
        self.steps.append(StepSample(int(details.num_ctx_tokens), decodes, int(kv_tokens), step_ms))
        self.steps_total += 1


def engine_step_ms(iteration_stats: Any) -> float | None:
    """The step's duration on the engine core's clock, or None when no request decoded in it.

    vLLM stamps each batch of engine-core outputs with the core's monotonic time; a decoding
    request's inter-token latency is the gap between the batch that carried its previous token
    and this one: one engine step, free of frontend and event-loop delays. All decoding requests
    of a step share it (a preempted one shows a longer gap), so the smallest is the step."""
    itls = getattr(iteration_stats, "inter_token_latencies_iter", None) or ()
    positive = [v for v in itls if v > 0]
    return min(positive) * 1000.0 if positive else None


def stat_logger_factory(sink: StepSink):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class HfxStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            sink.record(scheduler_stats, iteration_stats, sink.kv_capacity_tokens)

        def log_engine_initialized(self) -> None:
            pass

    return HfxStatLogger
