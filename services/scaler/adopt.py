"""A restarted scaler adopts the workers its predecessor left running (`--adopt-workers`).

Workers then outlive the scaler: each records itself in `{log_dir}/{instance_id}.pid` before it
runs (services/common/lifeline.anchored_command) and its port in `{instance_id}.port` (written
before it starts). A starting scaler surveys those records: a slot whose latest process still
runs is adopted as it is (same id, same process, starting or ready); every other process left
from an earlier run of a slot (a leader gone while its engine lives on, an older start) is an
orphan and is killed. So a scaler killed in the middle of a scale-up and started again ends with
one process per slot and none unaccounted for. `survey` is pure over the records and a process
table; `read_records` is the file I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common import procs, proctable
from services.scaler.managed import Managed, describe
from services.scaler.reconcile import POOL_STRIDE, slot_index

log = logging.getLogger("hfx.scaler")


@dataclass(frozen=True)
class Found:
    index: int
    instance_id: str
    pid: int
    start_ticks: int
    port: int


@dataclass(frozen=True)
class Survey:
    adopted: tuple[Found, ...]
    orphans: tuple[proctable.ProcInfo, ...]   # to kill: of no slot's latest, running process
    reason: str


@dataclass(frozen=True)
class Records:
    groups: tuple[tuple[int, int | None], ...]   # every start of the slot, oldest first
    port: int | None


def survey(cluster: str, records: Mapping[str, Records], table: Mapping[int, proctable.ProcInfo]) -> Survey:
    adopted: list[Found] = []
    orphans: dict[int, proctable.ProcInfo] = {}
    notes: list[str] = []
    for instance_id in sorted(records):
        index = slot_index(cluster, instance_id)
        rec = records[instance_id]
        if index is None or not rec.groups:
            continue
        *earlier, (pid, ticks) = rec.groups
        older = [g for g in earlier if g != (pid, ticks)]
        leader = table.get(pid)
        if leader is not None and leader.alive and ticks is not None and leader.start_ticks == ticks \
                and rec.port is not None:
            adopted.append(Found(index, instance_id, pid, ticks, rec.port))
        else:
            older.append((pid, ticks))
        # Each start led a session of its own, so an older start's session holds nothing adopted.
        left = [p for old_pid, old_ticks in older for p in proctable.session_members(table, old_pid, old_ticks)]
        orphans.update((p.pid, p) for p in left)
        if left:
            notes.append(f"{instance_id}: {len(left)} orphaned process(es) of an earlier run")
    ids = ", ".join(f"{f.instance_id} (pid {f.pid})" for f in adopted) or "none"
    return Survey(tuple(adopted), tuple(orphans[p] for p in sorted(orphans)),
                  f"adopted running workers: {ids}" + (f"; {'; '.join(notes)}" if notes else ""))


def read_records(log_dir: Path) -> dict[str, Records]:
    out = {}
    for pidfile in sorted(log_dir.glob("*.pid")):
        port_file = pidfile.with_suffix(".port")
        try:
            port: int | None = int(port_file.read_text().strip())
        except (OSError, ValueError):
            port = None
        out[pidfile.stem] = Records(tuple(procs.read_group_records(pidfile)), port)
    return out


def adopt_into(workers: dict[int, Managed], cluster: str, log_dir: Path) -> tuple[set[int], str]:
    """Surveys `log_dir`, kills the orphans, puts the adopted workers into `workers`; returns the
    adopted colocated slots and what was done."""
    found = survey(cluster, read_records(log_dir), proctable.snapshot())
    left = procs.kill_processes(list(found.orphans))
    if found.orphans:
        log.warning("killed %d orphaned worker process(es): %s", len(found.orphans), describe(found.orphans))
    if left:
        log.error("orphaned worker process(es) survive SIGKILL: %s", describe(left))
    now = time.time()
    for f in found.adopted:
        workers[f.index] = Managed(f.index, f.instance_id, f.port, procs.Adopted(f.pid, f.start_ticks),
                                   started_s=now, adopted=True)
    log.info("%s", found.reason)
    return {f.index for f in found.adopted if f.index < POOL_STRIDE}, found.reason
