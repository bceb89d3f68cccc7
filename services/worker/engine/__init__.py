"""Inference engines behind one seam (base.Engine): requests in, token deltas and load stats out.

Owns: the Engine protocol and its value types (base), the per-device engine arguments
(device), the vLLM implementation (vllm_engine) and the simulated engine (sim_engine, a
simulator for scale tests: token timing from a latency model, no inference). The worker service uses only `Engine` and
`make_engine`; it never touches vLLM directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.worker.engine.base import Engine


def _make_vllm(config: Any) -> Engine:
    from services.worker.engine.vllm_engine import VllmEngine, VllmEngineConfig

    if not isinstance(config, VllmEngineConfig):
        config = VllmEngineConfig.from_settings(config)
    return VllmEngine(config)


def _make_sim(config: Any) -> Engine:
    from services.worker.engine.sim_engine import SimEngine, SimEngineConfig

    if not isinstance(config, SimEngineConfig):
        config = SimEngineConfig.from_settings(config)
    return SimEngine(config)


# name -> builder taking the engine's own config, or any settings object it can read fields from.
ENGINES: dict[str, Callable[[Any], Engine]] = {"vllm": _make_vllm, "sim": _make_sim}


def make_engine(name: str, config: Any) -> Engine:
    """Build (not start) the engine registered as `name`."""
    try:
        builder = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {sorted(ENGINES)}") from None
    return builder(config)
