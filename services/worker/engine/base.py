"""The engine seam: what the worker needs from an inference engine, and nothing more.

The worker calls `start()` once before serving, `generate()` per request, `abort()` when a
client goes away or the router cancels, `stats()` on every load report, and `shutdown()` once
when it stops. Implementations: vLLM (vllm_engine.py) and the simulated engine (sim_engine.py).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from services.common.domain import FinishReason, Sampling, StepInFlight, StepSample
from services.worker.kv.params import KvParams


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: Sampling
    priority: int = 1  # HFX convention: higher is more important
    kv: KvParams | None = None  # P/D: stage the KV for a decode worker, or pull it from a prefill worker


@dataclass(frozen=True)
class EngineOutput:
    """One streamed piece of a request: only what is new since the previous piece."""

    new_token_ids: list[int]
    text_delta: str
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    kv: KvParams | None = None  # on the final output of a prefill leg: where its KV is staged


@dataclass(frozen=True)
class EngineStats:
    running_requests: int = 0
    waiting_requests: int = 0
    kv_usage: float = 0.0  # fraction of KV cache blocks in use, 0..1
    kv_capacity_tokens: int = 0
    recent_step_ms: tuple[float, ...] = ()  # durations of the latest busy engine steps, oldest first
    recent_steps: tuple[StepSample, ...] = ()  # the same with their composition, when known
    steps_total: int = 0                       # steps so far (recent_steps end at this count)
    # The step running now (started_s on the time.time() clock; None: between steps), when the
    # engine knows it (reports_step); load reports carry it (InstanceLoad.step_in_flight).
    reports_step: bool = False
    step_in_flight: StepInFlight | None = None


@runtime_checkable
class TimesItsSteps(Protocol):
    """An engine whose recent_steps are timed by the engine itself (vLLM's engine core), not by
    the gaps between outputs the worker sees: the profiler then reads steps instead of timing
    streams."""

    engine_timed_steps: bool


@runtime_checkable
class HasStepBudget(Protocol):
    """An engine that knows its token budget per step (vLLM's max_num_batched_tokens)."""

    chunk_tokens: int


@runtime_checkable
class DeclaresProfile(Protocol):
    """A simulated engine: its latency profile is declared, not measured."""

    profile: object


@runtime_checkable
class TransfersKv(Protocol):
    """An engine that moves prompt KV between workers for P/D serving (vLLM with HFX's connector;
    the simulator emulates it, labelled). Requests carry KvParams in, a prefill leg's final output
    carries them out."""

    kv_address: str
    """HOST:PORT of this engine's KV transfer server; empty when KV transfer is off."""

    async def release_kv(self, transfer_id: str) -> bool:
        """Free a staged transfer nobody will read (the request was aborted); True when held."""

    async def kv_stats(self) -> dict:
        """Staged leases, blocks, bytes; freed by reason; this engine's pulls by outcome."""

    def kv_pull(self, transfer_id: str) -> dict | None:
        """This engine's pull of `transfer_id` once its connector reported it (outcome, bytes,
        blocks, ms, start_unix_s, end_unix_s), handed out once; None when there is none (yet)."""


@runtime_checkable
class MeasuresKvTransfer(Protocol):
    """An engine whose KV transfer cost is measured, not declared (vLLM with HFX's connector)."""

    async def measure_kv_transfer(self) -> dict:
        """{"ms_per_token", ...}: moving one prompt token's KV to a decode worker on this host."""


@runtime_checkable
class Engine(Protocol):
    max_model_len: int
    """Longest prompt + output the engine accepts, in tokens; valid after start()."""

    async def start(self) -> None:
        """Called once before any other call; returns when the engine can take requests."""

    def generate(self, req: EngineRequest) -> AsyncGenerator[EngineOutput, None]:
        """Called per request; yields deltas until one with finished=True.

        A consumer that stops iterating (closes the iterator or is cancelled) aborts the request
        in the engine, so no engine time is spent on output nobody reads.
        """

    async def abort(self, request_id: str) -> bool:
        """Called when the request's client is gone; True when the request was still running."""

    def stats(self) -> EngineStats:
        """Called on every load report; cheap and non-blocking."""

    async def shutdown(self) -> None:
        """Called once when the worker stops; releases the engine's processes and memory."""


@runtime_checkable
class ReportsHealth(Protocol):
    """An engine that can fail apart from its worker process (vLLM's engine core is a process of
    its own): `failure()` says why it can no longer serve, None while it can."""

    def failure(self) -> str | None: ...


@runtime_checkable
class ReportsWeights(Protocol):
    """An engine that can say how it got its weights (vLLM); the simulator has none."""

    weights_report: dict
    """source ("storage (vLLM load)", "storage", "donor"), address, failure, bytes, timings."""
    timings: dict[str, float]
    """start() phases in seconds: engine_init_s, weight_load_s (when loaded apart)."""


@runtime_checkable
class LoadsWeights(ReportsWeights, Protocol):
    """An engine started without weights (--standby) that takes them later: from a donor worker
    (falling back to storage) or from storage (Worker.LoadWeights)."""

    async def pull_weights(self, address: str) -> dict: ...

    async def load_from_storage(self) -> dict: ...


@runtime_checkable
class PreparesPull(LoadsWeights, Protocol):
    """A standby engine that can do part of a pull ahead, once told its donor (Worker.PrepareWeights):
    returns a report with "prepared" (bool), "seconds", and "reason" when not prepared."""

    async def prepare_pull(self, address: str) -> dict: ...


def describe_weights(report: dict) -> str:
    """One line for the registry and logs: how the weights arrived."""
    if report.get("source") == "donor":
        over = f" over {report['transport']}" if report.get("transport") else ""
        over += ", mapped ahead" if report.get("premapped") else ""
        return f"donor {report.get('address', '?')}{over}"
    if report.get("failure"):
        return f"storage after {report['failure']}"
    return str(report.get("source", "storage"))
