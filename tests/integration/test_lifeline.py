"""Processes die with the process that started them (services/common/lifeline.py), shown with
small Python processes standing in for the worker and vLLM's engine processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from services.common import lifeline, procs, proctable
from services.local import cluster
from services.local.statefile import ClusterFile
from tests.harness import REPO, wait_until

pytestmark = pytest.mark.slow

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]


def _run_parent(tmp_path: Path, body: str) -> tuple[subprocess.Popen, list[proctable.ProcInfo]]:
    """Starts `body` as a session leader (as the scaler starts a worker); it writes the pids it
    started, one a line, to pids.txt and then waits. Returns it and its descendants once listed."""
    script = tmp_path / "parent.py"  # a file, so multiprocessing's spawn can find its functions
    script.write_text(textwrap.dedent(body))
    parent = procs.spawn([sys.executable, str(script), str(tmp_path / "pids.txt")], tmp_path / "parent.log",
                         env={"PYTHONPATH": str(REPO)})
    pidfile = tmp_path / "pids.txt"
    if not wait_until(lambda: pidfile.exists() and pidfile.read_text().endswith("\n"), 30):
        procs.kill_group(parent.pid, wait_s=1)
        pytest.fail((tmp_path / "parent.log").read_text())
    table = proctable.snapshot()
    return parent, proctable.descendants(table, parent.pid)


def _gone_within(known: list[proctable.ProcInfo], timeout_s: float) -> bool:
    return bool(wait_until(lambda: not proctable.still_running(proctable.snapshot(), known), timeout_s))


def _cleanup(parent: subprocess.Popen, known: list[proctable.ProcInfo]) -> None:
    procs.kill_processes(known, wait_s=1)
    procs.kill_group(parent.pid, wait_s=1)
    parent.poll()


# A stand-in for the worker: starts the reaper, then an "engine core" with multiprocessing spawn
# (as vLLM does on CPU) that starts its own child (vLLM's engine worker) and ignores SIGTERM, as
# vLLM's engine core does while it boots.
WORKER = """
    import multiprocessing, os, signal, sys, time
    from services.common import lifeline

    def engine_worker():
        time.sleep(120)

    def engine_core(path):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = multiprocessing.get_context("spawn").Process(target=engine_worker)
        child.start()
        with open(path, "a") as f:
            f.write(f"{os.getpid()} {child.pid}\\n")
        time.sleep(120)

    if __name__ == "__main__":
        reaper = lifeline.start_group_reaper()
        assert reaper is not None
        signal.signal(signal.SIGTERM, lambda *_: (open(sys.argv[1] + ".drained", "w").close(), os._exit(0)))
        multiprocessing.get_context("spawn").Process(target=engine_core, args=(sys.argv[1],)).start()
        time.sleep(120)
"""


def test_sigkill_of_the_worker_alone_takes_its_engine_processes_with_it(tmp_path):
    parent, started = _run_parent(tmp_path, WORKER)
    try:
        assert len(started) >= 3  # the reaper, the engine core, the engine core's worker
        os.kill(parent.pid, signal.SIGKILL)  # the worker alone, not its group
        assert _gone_within(started, 5.0), proctable.still_running(proctable.snapshot(), started)
    finally:
        _cleanup(parent, started)


def test_a_graceful_stop_of_the_group_still_drains_and_then_nothing_is_left(tmp_path):
    parent, started = _run_parent(tmp_path, WORKER)
    try:
        os.killpg(parent.pid, signal.SIGTERM)  # as `hfx down` / the scaler stop a worker
        assert _gone_within(started, 5.0)
        # The reaper ignored the SIGTERM: the worker's own handler ran (it drained), and only
        # its exit released the reaper on the engine core that ignores SIGTERM.
        assert (tmp_path / "pids.txt.drained").exists()
    finally:
        _cleanup(parent, started)


def test_no_reaper_outside_a_session_of_its_own():
    code = "from services.common import lifeline; print(lifeline.start_group_reaper())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "None", out.stderr
    assert "not a session leader" in out.stderr


TIED = """
    import sys, time
    from pathlib import Path
    from services.common import procs

    if __name__ == "__main__":
        child = procs.spawn([sys.executable, "-c", "import time; time.sleep(120)"], Path(sys.argv[1] + ".log"),
                            die_with_parent=True)
        with open(sys.argv[1], "a") as f:
            f.write(f"{child.pid}\\n")
        time.sleep(120)
"""


def test_a_tied_child_dies_with_its_parent_even_in_another_session(tmp_path):
    parent, started = _run_parent(tmp_path, TIED)
    try:
        (child,) = started
        assert proctable.snapshot()[child.pid].pgid == child.pid  # its own group: a group kill misses it
        os.kill(parent.pid, signal.SIGKILL)
        assert _gone_within(started, 5.0)
    finally:
        _cleanup(parent, started)


def test_a_tied_child_refuses_to_start_if_its_parent_is_already_gone(tmp_path):
    cmd = lifeline.tied_command(SLEEP, parent_pid=1)  # not our parent: as if ours had died already
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "parent died" in out.stderr


def test_tied_children_are_started_from_the_main_thread_only(tmp_path):
    errors = []

    def start():
        try:
            procs.spawn(SLEEP, tmp_path / "x.log", die_with_parent=True)
        except RuntimeError as err:
            errors.append(str(err))

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert errors and "main thread" in errors[0]


def test_kill_group_kills_what_is_left_of_a_group_whose_leader_is_gone(tmp_path):
    code = """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(sys.argv[1], "a") as f:
            f.write(f"{child.pid}\\n")
        time.sleep(120)
    """
    parent, started = _run_parent(tmp_path, code)
    try:
        os.kill(parent.pid, signal.SIGKILL)
        assert wait_until(lambda: procs.exited(parent.pid), 5)
        found = procs.kill_group(parent.pid)  # before reaping the leader, as the scaler does
        parent.poll()
        assert [p.pid for p in found] == [p.pid for p in started]
        assert not proctable.still_running(proctable.snapshot(), started)
    finally:
        _cleanup(parent, started)


def test_down_kills_and_names_what_is_left_in_a_recorded_session(tmp_path, capsys):
    # A "service" whose child left its process group (so stopping the group misses it) but, as
    # every descendant that does not call setsid, stayed in its session.
    code = """
        import os, signal, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import os, time; os.setpgid(0, 0); time.sleep(120)"])
        time.sleep(0.5)
        with open(sys.argv[1], "a") as f:
            f.write(f"{child.pid}\\n")
        time.sleep(120)
    """
    parent, started = _run_parent(tmp_path, code)
    try:
        state = ClusterFile(router="r", scheduler="s", scaler="c", redis_url="u", redis_prefix="hfx", model="m",
                            log_dir=str(tmp_path / "logs"))
        state.record("router", parent.pid)
        state.save(tmp_path)
        assert cluster.down(tmp_path)
        err = capsys.readouterr().err
        assert "stopped router" in err
        assert f"1 process(es) of the cluster were still running; killed: {started[0].pid} (" in err
        assert not proctable.still_running(proctable.snapshot(), started)
        assert ClusterFile.load(tmp_path) is None
    finally:
        _cleanup(parent, started)


ANCHORED = """
    import sys
    from pathlib import Path
    from services.common import lifeline, procs

    if __name__ == "__main__":
        anchor, ticks = int(sys.argv[2]), int(sys.argv[3])
        cmd = lifeline.anchored_command([sys.executable, "-c", "import time; time.sleep(120)"],
                                        sys.argv[1] + ".record", anchor, ticks)
        child = procs.spawn(cmd, Path(sys.argv[1] + ".log"))
        with open(sys.argv[1], "a") as f:
            f.write(f"{child.pid}\\n")
"""


def test_an_anchored_child_records_itself_outlives_its_starter_and_dies_with_its_anchor(tmp_path):
    # As a worker under --adopt-workers: the scaler (the starter) may die; `hfx up`'s caller (the
    # anchor) takes the worker with it.
    anchor = procs.spawn(SLEEP, tmp_path / "anchor.log")
    script = tmp_path / "starter.py"
    script.write_text(textwrap.dedent(ANCHORED))
    pidfile = tmp_path / "pids.txt"
    starter = subprocess.run([sys.executable, str(script), str(pidfile), str(anchor.pid),
                              str(proctable.start_ticks_of(anchor.pid))], env={**os.environ, "PYTHONPATH": str(REPO)},
                             capture_output=True, text=True, timeout=60)
    assert starter.returncode == 0, starter.stderr   # the starter is gone now
    child_pid = int(pidfile.read_text())
    try:
        assert wait_until(lambda: procs.read_group_records(Path(f"{pidfile}.record")), 10)
        assert procs.read_group_records(Path(f"{pidfile}.record")) == [(child_pid, proctable.start_ticks_of(child_pid))]
        group = wait_until(lambda: len(proctable.group_members(proctable.snapshot(), child_pid)) == 2
                           and proctable.group_members(proctable.snapshot(), child_pid), 10)
        assert group   # the child and its watcher, in the child's own group
        # alive without its starter
        assert [p.pid for p in proctable.still_running(proctable.snapshot(), group)] == [p.pid for p in group]
        anchor.kill()
        anchor.wait(10)
        assert _gone_within(group, 5.0), proctable.still_running(proctable.snapshot(), group)
    finally:
        procs.kill_group(child_pid, wait_s=1)
        anchor.kill()
        anchor.wait(10)


def test_an_anchored_child_without_an_anchor_is_tied_to_nothing_and_still_recorded(tmp_path):
    record = tmp_path / "w.pid"
    child = procs.spawn(lifeline.anchored_command(SLEEP, str(record)), tmp_path / "w.log")
    try:
        assert wait_until(lambda: procs.read_group_records(record), 10)
        assert procs.read_group_records(record) == [(child.pid, proctable.start_ticks_of(child.pid))]
        assert [p.pid for p in proctable.group_members(proctable.snapshot(), child.pid)] == [child.pid]
    finally:
        procs.kill_group(child.pid, wait_s=1)
        child.wait(10)


def test_an_adopted_worker_is_watched_by_pid_and_start_time_and_its_group_killed_after_it(tmp_path):
    # As a restarted scaler holds a worker it did not start (services/common/procs.Adopted).
    code = """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(sys.argv[1], "a") as f:
            f.write(f"{child.pid}\\n")
        time.sleep(120)
    """
    parent, started = _run_parent(tmp_path, code)
    try:
        ticks = proctable.start_ticks_of(parent.pid)
        assert ticks is not None
        assert procs.Adopted(parent.pid, ticks + 1).running() is False   # same pid, another start: not it
        adopted = procs.Adopted(parent.pid, ticks)
        assert adopted.running() and adopted.poll() is None and not procs.has_exited(adopted)
        adopted.send_signal(signal.SIGKILL)   # the leader dies; its child (same session) lives on
        assert wait_until(lambda: procs.has_exited(adopted), 5)
        assert adopted.poll() == -1          # not our child: the status is unknown
        assert [p.pid for p in proctable.still_running(proctable.snapshot(), started)] == [p.pid for p in started]
        found = adopted.kill_rest()
        assert [p.pid for p in found] == [p.pid for p in started]
        assert not proctable.still_running(proctable.snapshot(), started)
    finally:
        _cleanup(parent, started)
