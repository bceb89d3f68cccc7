"""The standby pool's flags (`hfx scaler`, `hfx up`) and the rules between them, in one place."""

from __future__ import annotations

import argparse

from services import argtypes

MAX_POOL = 16   # each standby is a whole engine held in memory


def add_standby_flags(p: argparse.ArgumentParser, with_d2d: bool) -> None:
    """--standby-pool (and, for `hfx up`, --d2d: the scaler declares its own)."""
    if with_d2d:
        p.add_argument("--d2d", action="store_true",
                       help="workers serve their weights, and a new worker pulls them from the least loaded live "
                            "worker of the model instead of reading storage (the scaler's --d2d) (default: off)")
    p.add_argument("--standby-pool", type=argtypes.non_negative_int, default=0,
                   help=f"with --d2d: keep N engines started ahead with dummy weights (unregistered); a scale-up "
                        f"takes one and loads its weights from a donor (storage if none), and the pool refills "
                        f"in the background; each costs an engine's memory (at most {MAX_POOL}) (default: 0)")


def standby_check(args) -> str | None:
    """Flags that contradict each other (None: fine)."""
    pool = args.standby_pool
    if pool and not args.d2d:
        return "--standby-pool needs --d2d: a standby takes its weights from a donor's stream when taken"
    if pool > MAX_POOL:
        return f"--standby-pool {pool}: at most {MAX_POOL} (each standby holds a whole engine in memory)"
    if args.d2d and getattr(args, "device", "cpu") != "cpu":
        return f"--d2d: weight transfer is built for device cpu only, not {args.device!r}"
    return None


def forward_standby_flags(args) -> list[str]:
    """The flags for the scaler process that `hfx up` starts."""
    return (["--d2d"] if args.d2d else []) + (["--standby-pool", str(args.standby_pool)] if args.standby_pool else [])
