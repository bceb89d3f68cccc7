"""A restarted scaler's survey of what its predecessor left running (services/scaler/adopt.py),
on hand-made process tables; and the --adopt-workers flags' usage errors."""

import pytest

from services.common.proctable import ProcInfo
from services.scaler.adopt import Records, survey
from services.scaler.reconcile import slot_index, slot_name


def proc(pid, sid=None, start=100, state="S", ppid=1):
    sid = sid if sid is not None else pid
    return ProcInfo(pid=pid, comm="p", state=state, ppid=ppid, pgid=sid, sid=sid, start_ticks=start)


def table(*procs):
    return {p.pid: p for p in procs}


def test_slot_index_inverts_slot_name_and_refuses_other_names():
    for index in (0, 7, 999, 1000, 1003, 2000, 2999):
        assert slot_index("hfx", slot_name("hfx", index)) == index
    for name in ("hfx-w", "hfx-x1", "other-w1", "hfx-w01", "hfx-w1000", "hfx-standby-0", "hfx-w-1", "hfxw1"):
        assert slot_index("hfx", name) is None, name


def test_running_workers_are_adopted_with_their_ports_and_nothing_is_killed():
    records = {"hfx-w0": Records(((10, 100),), 5000), "hfx-w1": Records(((20, 200),), 5001),
               "hfx-p0": Records(((30, 300),), 5002)}
    found = survey("hfx", records, table(proc(10, start=100), proc(11, sid=10), proc(20, start=200),
                                         proc(30, start=300)))
    assert [(f.index, f.instance_id, f.pid, f.port) for f in found.adopted] == \
        [(1000, "hfx-p0", 30, 5002), (0, "hfx-w0", 10, 5000), (1, "hfx-w1", 20, 5001)]
    assert found.orphans == ()
    assert "adopted running workers: hfx-p0 (pid 30), hfx-w0 (pid 10), hfx-w1 (pid 20)" == found.reason


def test_a_reused_pid_a_zombie_or_a_missing_port_is_not_adopted():
    records = {"hfx-w0": Records(((10, 100),), 5000), "hfx-w1": Records(((20, 200),), 5001),
               "hfx-w2": Records(((30, 300),), None)}
    found = survey("hfx", records, table(proc(10, start=999), proc(20, start=200, state="Z"), proc(30, start=300)))
    assert found.adopted == ()
    # pid 10 now names another program's process (another start time): never killed as ours.
    assert [p.pid for p in found.orphans] == [30]
    assert "adopted running workers: none" in found.reason


def test_what_is_left_of_earlier_runs_is_orphaned_and_the_latest_run_adopted():
    # w0 was restarted once: its first run's leader is gone but its engine (same session) lives.
    # w1's latest leader died, leaving its engine: nothing to adopt, the engine is an orphan.
    records = {"hfx-w0": Records(((10, 100), (40, 400)), 5000), "hfx-w1": Records(((20, 200),), 5001)}
    found = survey("hfx", records, table(proc(11, sid=10), proc(40, start=400), proc(41, sid=40),
                                         proc(21, sid=20), proc(22, sid=20)))
    assert [f.instance_id for f in found.adopted] == ["hfx-w0"] and found.adopted[0].pid == 40
    assert [p.pid for p in found.orphans] == [11, 21, 22]
    assert "hfx-w0: 1 orphaned" in found.reason and "hfx-w1: 2 orphaned" in found.reason


def test_the_same_start_recorded_twice_is_one_start():
    found = survey("hfx", {"hfx-w0": Records(((10, 100), (10, 100)), 5000)}, table(proc(10), proc(11, sid=10)))
    assert [f.pid for f in found.adopted] == [10] and found.orphans == ()


def test_files_of_other_clusters_and_standbys_are_left_alone():
    records = {"other-w0": Records(((10, 100),), 5000), "hfx-standby-0": Records(((20, 100),), 5001)}
    found = survey("hfx", records, table(proc(10), proc(20)))
    assert found.adopted == () and found.orphans == ()


def test_adopt_flags_refuse_contradictions(capsys):
    from services.cli import main

    for argv, says in ((["scaler", "--scheduler", "127.0.0.1:1", "--workers-die-with", "1"], "needs --adopt-workers"),
                       (["scaler", "--scheduler", "127.0.0.1:1", "--adopt-workers", "--workers-die-with", "999999999"],
                        "no such process"),
                       (["up", "--engine", "sim", "--d2d", "--standby-pool", "1", "--adopt-workers"],
                        "does not work with --standby-pool")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and says in err, (argv, err)
