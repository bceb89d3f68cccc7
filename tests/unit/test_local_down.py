"""What `hfx down` reads back: every worker group the scaler recorded, with its leader's start time."""

import json
import os

from services.common import proctable
from services.common.procs import append_group_record, read_group_records

from services.local.cluster import worker_groups
from services.local.statefile import ClusterFile


def test_worker_groups_are_every_start_of_every_worker(tmp_path):
    (tmp_path / "hfx-w0.pid").write_text("1200 5000\n1350 7000\n")  # started, crashed, restarted
    (tmp_path / "hfx-w1.pid").write_text("1201 5001\n")
    (tmp_path / "hfx-w2.pid").write_text("12")             # an older scaler: the pid alone, no newline
    (tmp_path / "hfx-w3.pid").write_text("garbage\n")       # unreadable: skipped, not fatal
    (tmp_path / "hfx-w0.metrics").write_text("127.0.0.1:9000")
    assert worker_groups(tmp_path) == [(1200, 5000), (1350, 7000), (1201, 5001), (12, None)]


def test_a_recorded_group_carries_its_leaders_start_time(tmp_path):
    append_group_record(tmp_path / "me.pid", os.getpid())
    assert read_group_records(tmp_path / "me.pid") == [(os.getpid(), proctable.start_ticks_of(os.getpid()))]


def test_a_state_file_from_before_start_times_still_loads(tmp_path):
    old = {"router": "r", "scheduler": "s", "scaler": "c", "redis_url": "u", "redis_prefix": "hfx", "model": "m",
           "log_dir": str(tmp_path), "pgids": {"router": 10}}
    ClusterFile.path(tmp_path).write_text(json.dumps(old))
    state = ClusterFile.load(tmp_path)
    assert state.starts == {} and state.pgids == {"router": 10}  # down then trusts the recorded ids
