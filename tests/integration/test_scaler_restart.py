"""A scaler killed in the middle of a scale-up and started again adopts the workers that run
(--adopt-workers, services/scaler/adopt.py) instead of launching a second set with the same ids:
on SIMULATED workers (engine "sim") behind the real mesh (router, scheduler, Redis). Afterwards
there is one process session per worker, each one the scaler lists, no orphan, no request lost;
and the restarted scaler still drains and removes an adopted worker at the burst's end."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.common import grpcutil, procs, proctable, store
from services.common.keys import Keys
from services.common.pb.hfx.v1 import scaler_pb2, scaler_pb2_grpc
from services.local import cluster
from tests.harness import local_cluster, wait_until
from tests.integration.test_autoscale_live import AUTOSCALE, TOKENS, send

pytestmark = pytest.mark.slow

WORKERS = ("hfx-w0", "hfx-w1")


def listed(address: str) -> dict[str, scaler_pb2.WorkerInfo]:
    with grpcutil.sync_channel(address) as channel:
        reply = scaler_pb2_grpc.ScalerStub(channel).ListWorkers(scaler_pb2.ListWorkersRequest(), timeout=5)
    ids = [w.instance_id for w in reply.workers]
    assert len(ids) == len(set(ids)), f"an instance id listed twice: {ids}"
    return {w.instance_id: w for w in reply.workers}


def worker_sessions(log_dir: Path) -> dict[int, list[proctable.ProcInfo]]:
    """Live processes of every worker session ever recorded, by session id."""
    table = proctable.snapshot()
    out: dict[int, list[proctable.ProcInfo]] = {}
    for sid, ticks in cluster.worker_groups(log_dir):
        members = proctable.session_members(table, sid, ticks)
        if members:
            out[sid] = members
    return out


def test_a_scaler_restarted_during_a_scale_up_adopts_its_workers_without_duplicates_or_orphans(tmp_path, capsys):
    with local_cluster(tmp_path / "home", workers=1, policy="hfx", engine="sim", http=True,
                       scaler_args=(*AUTOSCALE, "--adopt-workers")) as mesh:
        keys = Keys(mesh.state.redis_prefix)
        r = store.connect_sync(mesh.state.redis_url)

        def live() -> list[str]:
            return sorted(i.decode() for i in r.smembers(keys.instances()) if r.exists(keys.instance(i.decode())))

        def start_decided() -> bool:
            return any(b'"action": "start"' in (r.get(k) or b"") for k in r.scan_iter(f"{keys.prefix}:scale:*"))

        old_scaler = mesh.state.pgids["scaler"]
        cmd = [a.decode() for a in Path(f"/proc/{old_scaler}/cmdline").read_bytes().split(b"\0") if a]
        results, lock = [], threading.Lock()
        with ThreadPoolExecutor(max_workers=64) as pool:
            burst = pool.submit(send, mesh.state.router, pool, 6.0, 20.0, results, lock)
            assert wait_until(start_decided, 30, 0.02), mesh.logs()
            registered_at_kill = "hfx-w1" in live()
            os.kill(old_scaler, signal.SIGKILL)   # the scaler alone, mid scale-up
            os.waitpid(old_scaler, 0)
            # w0 runs on; w1 is being launched (its wrapper records it before it runs) or not yet.
            (w0_record,) = procs.read_group_records(mesh.log_dir / "hfx-w0.pid")
            assert proctable.start_ticks_of(w0_record[0]) == w0_record[1], "a worker died with its scaler"

            new = procs.spawn(cmd, mesh.log_dir / "scaler-restarted.log", die_with_parent=True)
            mesh.state.record("scaler", new.pid)
            mesh.state.save(mesh.home)   # `hfx down` stops the new one
            cluster.wait_serving(mesh.state.scaler, 60, new, "scaler", mesh.log_dir / "scaler-restarted.log",
                                 "hfx.v1.Scaler")
            assert wait_until(lambda: live() == list(WORKERS) and all(
                w.state == scaler_pb2.WORKER_STATE_READY for w in listed(mesh.state.scaler).values()), 30), \
                (live(), listed(mesh.state.scaler))

            # Each id started exactly once (a second launch would have recorded a second start):
            # w0 adopted as it ran; w1 adopted if the old scaler had launched it, else launched now.
            workers = listed(mesh.state.scaler)
            assert sorted(workers) == list(WORKERS)
            before = {iid: procs.read_group_records(mesh.log_dir / f"{iid}.pid") for iid in WORKERS}
            assert before["hfx-w0"] == [w0_record], before
            for iid in WORKERS:
                assert len(before[iid]) == 1 and workers[iid].pid == before[iid][0][0], (iid, before, workers)
            # One live session per worker, each the one the scaler lists: no duplicate, no orphan.
            sessions = worker_sessions(mesh.log_dir)
            assert sorted(sessions) == sorted(w.pid for w in workers.values()), sessions
            restarted_log = (mesh.log_dir / "scaler-restarted.log").read_text()
            assert "adopted running workers: hfx-w0 (pid" in restarted_log
            w1_adopted = "hfx-w1 (pid" in restarted_log

            for f in burst.result():
                f.result()
            # The restarted scaler manages what it adopted: the burst's end drains and removes one.
            assert wait_until(lambda: len(live()) == 1, 90, 0.5), f"not back to one worker: {live()}"
            (gone,) = set(WORKERS) - set(live())
            assert wait_until(lambda: before[gone][0][0] not in worker_sessions(mesh.log_dir), 30), \
                worker_sessions(mesh.log_dir)
            assert sorted(worker_sessions(mesh.log_dir)) == [before[w][0][0] for w in WORKERS if w != gone]
            remaining = list(worker_sessions(mesh.log_dir).values())

        # Nothing lost across the restart and the removal.
        bad = [x for x in results if x["error"] or x["tokens"] != TOKENS]
        assert results and not bad, bad[:5]
        with capsys.disabled():
            print(f"\nscaler killed after the start decision (w1 {'registered' if registered_at_kill else 'not registered'}"
                  f"), restarted; w1 {'adopted' if w1_adopted else 'launched by the restarted scaler'}; "
                  f"{len(results)} requests all finished; "
                  f"{gone} removed by the restarted scaler")
    # `hfx down` leaves no worker process behind.
    assert not proctable.still_running(proctable.snapshot(), [p for ps in remaining for p in ps])
