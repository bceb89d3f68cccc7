"""`hfx bench --live-policies` starts whole clusters; stopping the bench with SIGTERM (a CI
timeout, `kill`) must stop them too, leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow


def test_sigterm_stops_the_cluster_a_live_bench_started(tmp_path):
    log = tmp_path / "bench.log"
    with open(log, "wb") as out:
        bench = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "bench", "--live-policies", "fcfs", "--engine", "sim",
             "--workers", "1", "--rate", "0.5", "--requests", "1000", "--quiet"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while b"unloaded latency" not in log.read_bytes():   # cluster up, probe done, run under way
            assert bench.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        started = psutil.Process(bench.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()[2:4]) for p in started)
        assert "router" in names and "worker" in names, names
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) != 0
        gone, alive = psutil.wait_procs(started, timeout=30)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
