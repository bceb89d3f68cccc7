"""Inference engines behind one seam (base.Engine): requests in, token deltas and load stats out.

Owns: the Engine protocol and its value types (base), the per-device engine arguments
(device), and the vLLM implementation (vllm_engine). The worker service uses only `Engine` and
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


# name -> builder taking the engine's own config, or any settings object it can read fields from.
ENGINES: dict[str, Callable[[Any], Engine]] = {"vllm": _make_vllm}


def make_engine(name: str, config: Any) -> Engine:
    """Build (not start) the engine registered as `name`."""
    try:
        builder = ENGINES[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {sorted(ENGINES)}") from None
    return builder(config)
