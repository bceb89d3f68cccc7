"""The `--adopt-workers` flags of `hfx up` and `hfx scaler` (services/scaler/adopt.py)."""

from __future__ import annotations

import argparse

from services import argtypes
from services.common import proctable

ADOPT_HELP = ("workers outlive the scaler, and a scaler that starts adopts the workers of its cluster "
              "that are running (same ids, same processes) instead of launching a second set; orphans of "
              "earlier runs are killed (default: off: workers die with their scaler)")


def add_adopt_flags(p: argparse.ArgumentParser, scaler: bool) -> None:
    p.add_argument("--adopt-workers", action="store_true", help=ADOPT_HELP)
    if scaler:
        p.add_argument("--workers-die-with", type=argtypes.positive_int, default=None, metavar="PID",
                       help="with --adopt-workers: workers are SIGKILLed once process PID is gone "
                            "(`hfx up` passes its caller) (default: none)")


def adopt_check(args) -> str | None:
    """Cross-flag problems as a usage error (None when fine)."""
    if args.adopt_workers and args.standby_pool:
        return "--adopt-workers does not work with --standby-pool yet: standbys are not adopted"
    if getattr(args, "workers_die_with", None) is not None:
        if not args.adopt_workers:
            return "--workers-die-with needs --adopt-workers (without it workers die with the scaler)"
        if proctable.start_ticks_of(args.workers_die_with) is None:
            return f"--workers-die-with {args.workers_die_with}: no such process"
    return None


def anchor_of(args) -> tuple[int, int] | None:
    """(pid, start ticks) of the --workers-die-with process, or None."""
    pid = args.workers_die_with
    ticks = proctable.start_ticks_of(pid) if pid is not None else None
    return (pid, ticks) if pid is not None and ticks is not None else None
