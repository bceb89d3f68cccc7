"""A worker slot as the scaler manages it (its process, launched or adopted, and its history)."""

from __future__ import annotations

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


def describe(found: list[proctable.ProcInfo] | tuple[proctable.ProcInfo, ...]) -> str:
    return ", ".join(f"{p.pid} ({p.comm})" for p in found)
