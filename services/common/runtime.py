"""How every service process runs its asyncio program.

- uvloop, where installed, instead of asyncio's default loop: the token path is a few callbacks
  per token in the router and the worker, and uvloop runs each for less CPU.
- `started()`, called once a service has finished starting, moves everything allocated so far
  (models, tokenizers, frameworks) out of the cyclic garbage collector's sight (`gc.freeze`),
  so that the full collections that serving triggers do not rescan the start-up heap every time.
- `stop_on_signals()`: the event SIGTERM or SIGINT sets, after which a service drains and exits.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import Any, Coroutine


def run_service(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # not on this platform: asyncio's own loop serves the same way
        return asyncio.run(main)
    return uvloop.run(main)


def started() -> None:
    gc.collect()
    gc.freeze()


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM and SIGINT set (from then on neither ends the process by itself)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
