"""A worker slot's exit as the scaler sees it (services/scaler/managed.py), on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from services.common import procs
from services.scaler.managed import Managed, observe_exit, state_of


def _exited_leader_with_a_child_left() -> tuple[subprocess.Popen, int]:
    """A group leader that exits 3 and leaves a sleeping child in its group (a crashed worker's engine)."""
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\n"
                             "c = subprocess.Popen(['sleep', '60'])\nprint(c.pid, flush=True)\nsys.exit(3)"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    deadline = time.monotonic() + 10
    while not procs.has_exited(proc) and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc, child


def test_an_exit_kills_what_the_worker_left_in_its_group_and_records_the_code():
    proc, child = _exited_leader_with_a_child_left()
    w = Managed(0, "hfx-w0", 0, proc)
    assert state_of(w, set()) == "starting"
    found = observe_exit(w, 12.5)
    assert found is not None and child in {p.pid for p in found}
    assert not procs.alive(child) or open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    assert (w.exited_at_s, w.exit_code, w.leftovers) == (12.5, 3, ())
    assert state_of(w, {"hfx-w0"}) == "exited"
    assert observe_exit(w, 13.0) is None          # seen once: a second look changes nothing
    assert w.exited_at_s == 12.5


def test_a_running_worker_is_not_an_exit():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        w = Managed(0, "hfx-w0", 0, proc)
        assert observe_exit(w, 1.0) is None and w.exited_at_s is None
        assert state_of(w, {"hfx-w0"}) == "ready"
        w.stopping = True
        assert state_of(w, {"hfx-w0"}) == "stopping"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
