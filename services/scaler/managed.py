"""A worker slot as the scaler manages it (its process, launched or adopted, and its history)."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass

from services.common import procs, proctable


@dataclass
class Managed:
    index: int
    instance_id: str
    port: int
    proc: subprocess.Popen | procs.Adopted | None = None
    exited_at_s: float | None = None
    exit_code: int = 0
    restarts: int = 0
    stopping: bool = False
    started_s: float = 0.0      # when its current process was launched (ready time = registered - this)
    leftovers: tuple[proctable.ProcInfo, ...] = ()  # of the last exited process's group, unkillable so far
    from_standby: bool = False  # its current process was taken from the standby pool
    role: str = ""              # its role as last registered (role changes, issue 11); "" = its slot's
    adopted: bool = False       # left running by a previous scaler (services/scaler/adopt.py)


STATES = ("starting", "ready", "stopping", "exited")


def state_of(w: Managed, ready_ids: set[str]) -> str:
    """One of STATES: exited, stopping (SIGTERM sent), ready (registered), else starting."""
    if w.exited_at_s is not None:
        return "exited"
    if w.stopping:
        return "stopping"
    return "ready" if w.instance_id in ready_ids else "starting"


def describe(found: list[proctable.ProcInfo] | tuple[proctable.ProcInfo, ...]) -> str:
    return ", ".join(f"{p.pid} ({p.comm})" for p in found)


def observe_exit(w: Managed, now_s: float) -> list[proctable.ProcInfo] | None:
    """If `w`'s process has just exited: kill what is left of its group BEFORE reaping it (until
    then its pid cannot be reused, so the group id still names only its processes, its engine's),
    record the exit, and return what was found left running (None: it has not just exited)."""
    if w.proc is None or w.exited_at_s is not None or not procs.has_exited(w.proc):
        return None
    found = w.proc.kill_rest() if isinstance(w.proc, procs.Adopted) else procs.kill_group(w.proc.pid)
    code = w.proc.poll()  # reaps it (an adopted one was reaped by whoever adopted it: -1, unknown)
    w.exited_at_s, w.exit_code = now_s, -1 if code is None else code
    w.leftovers = tuple(proctable.still_running(proctable.snapshot(), found))
    return found


def check_gone(w: Managed, log: logging.Logger) -> None:
    """Before a replacement starts: the old worker's processes must be gone (an engine left
    running would hold the cores or device memory the new one needs)."""
    if not w.leftovers:
        return
    left = procs.kill_processes(list(w.leftovers))
    if left:
        log.error("starting worker %s although %d process(es) of its previous run survive SIGKILL: %s",
                  w.instance_id, len(left), describe(left))
    w.leftovers = tuple(left)
