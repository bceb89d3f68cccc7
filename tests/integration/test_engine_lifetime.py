"""No vLLM engine outlives its worker, no worker its scaler, nothing the cluster (issue 16):
real Redis, router, scheduler, scaler and one vLLM CPU worker.

Engine processes are found by the ids HFX records: the worker's pid file, the /proc tree below
that pid, and the sessions the cluster recorded (each service and worker leads one, and its
descendants stay in it); never by process names. Each process is identified by pid AND start time, so a reused pid is not it.
The tests on the first cluster run in file order: each kills the worker the previous one left.
"""

from __future__ import annotations

import os
import signal
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common import grpcutil, proctable
from services.common.pb.hfx.v1 import common_pb2, router_pb2, router_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from services.local import cluster
from tests.harness import RunningCluster, local_cluster, wait_until

pytestmark = pytest.mark.slow

WORKER = "hfx-w0"
GONE_WITHIN_S = 5.0
BOOT_TIMEOUT_S = 240.0
FAST_START = ("--no-profile-at-start",)  # the latency profile is not what these tests are about


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("hfx-lifetime"), workers=1, worker_args=FAST_START) as running:
        yield running


def engine_of(pid: int) -> list[proctable.ProcInfo]:
    """Everything the worker `pid` started: its reaper, vLLM's engine core and the core's workers."""
    return proctable.descendants(proctable.snapshot(), pid)


def engine_booting(pid: int) -> bool:
    """Whether the worker `pid`'s engine core runs and has started its own worker: a grandchild."""
    return any(p.ppid != pid for p in engine_of(pid))


def gone_within(known: list[proctable.ProcInfo], timeout_s: float) -> bool:
    return bool(wait_until(lambda: not proctable.still_running(proctable.snapshot(), known), timeout_s, 0.05))


def cluster_processes(running: RunningCluster) -> list[proctable.ProcInfo]:
    return cluster.leftovers(running.state)


def scaler_workers(running: RunningCluster) -> dict[str, scaler_pb2.ManagedWorker]:
    with grpcutil.sync_channel(running.state.scaler) as channel:
        listing = scaler_pb2_grpc.ScalerStub(channel).ListWorkers(scaler_pb2.ListWorkersRequest(), timeout=5)
    return {w.instance_id: w for w in listing.workers}


def wait_replacement_serving(running: RunningCluster, old_pid: int) -> int:
    """The pid of the worker that replaced `old_pid`, once it serves. (The scaler's READY is not
    the signal: it reads the registry, where the dead worker's entry lives on for its TTL.)"""
    new_pid = wait_until(lambda: running.worker_pid(WORKER) != old_pid and running.worker_pid(WORKER), 60, 0.2)
    assert new_pid, running.logs()
    address = scaler_workers(running)[WORKER].address
    cluster.wait_serving(address, BOOT_TIMEOUT_S, what="the replacement worker", service="hfx.v1.Worker")
    return new_pid


def leftovers_killed(running: RunningCluster) -> float:
    with urllib.request.urlopen(f"http://{running.state.metrics['scaler']}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hfx_scaler_leftover_processes_killed_total":
                return sample.value
    raise AssertionError("the scaler exports no hfx_scaler_leftover_processes_killed_total")


def generate(running: RunningCluster, max_tokens: int = 8) -> router_pb2.GenerateFinal:
    request = router_pb2.GenerateRequest(
        token_ids=router_pb2.TokenIds(ids=[1, 43, 343, 1515, 1196]),
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    with running.channel() as channel:
        messages = list(router_pb2_grpc.RouterStub(channel).Generate(request, timeout=120))
    return messages[-1].final


def test_sigkill_of_the_worker_alone_takes_its_engine_and_the_replacement_serves(mesh):
    pid = mesh.worker_pid(WORKER)
    engine = engine_of(pid)
    assert len(engine) >= 2, engine  # at least the reaper and vLLM's engine core

    os.kill(pid, signal.SIGKILL)  # the worker process alone, as the OOM killer or a crash would
    assert gone_within(engine, GONE_WITHIN_S), proctable.still_running(proctable.snapshot(), engine)

    new_pid = wait_replacement_serving(mesh, pid)
    assert f"worker {WORKER} exited with -9" in (mesh.log_dir / "scaler.log").read_text()
    final = generate(mesh)
    assert final.instance_id == WORKER and final.usage.completion_tokens == 8
    # Exactly one engine per worker: every process of the cluster is a service, the worker, or
    # one of the worker's own, and the worker has as many as the one it replaced.
    new_engine = engine_of(new_pid)
    expected = set(mesh.state.pgids.values()) | {new_pid} | {p.pid for p in new_engine}
    assert {p.pid for p in cluster_processes(mesh)} == expected
    assert len(new_engine) == len(engine)


def test_an_engine_core_that_dies_under_a_live_worker_ends_it_and_a_replacement_serves(mesh):
    # Health reflects the engine: the worker process lives on, but vLLM's engine core (the
    # worker's child that has children of its own) is killed. The worker leaves the registry and
    # exits with an error; the scaler starts a replacement that serves.
    pid = mesh.worker_pid(WORKER)
    procs = engine_of(pid)
    parents = {p.ppid for p in procs}
    core = [p for p in procs if p.ppid == pid and p.pid in parents]
    assert len(core) == 1, procs
    worker = proctable.snapshot()[pid]
    os.kill(core[0].pid, signal.SIGKILL)
    assert wait_until(lambda: not proctable.still_running(proctable.snapshot(), [worker]), 30), mesh.logs()
    worker_log = (mesh.log_dir / f"{WORKER}.log").read_text()
    assert "engine failed" in worker_log and "exiting so that it is replaced" in worker_log
    wait_replacement_serving(mesh, pid)
    final = generate(mesh)
    assert final.instance_id == WORKER and final.usage.completion_tokens == 8

def test_an_exited_workers_group_is_killed_by_the_scaler_and_counted(mesh):
    # Freeze the worker's whole group first, so its reaper cannot act: what happens next is the
    # scaler's doing alone (it kills the group of a worker it sees exit, before reaping it).
    pid = mesh.worker_pid(WORKER)
    engine = engine_of(pid)
    before = leftovers_killed(mesh)
    os.killpg(pid, signal.SIGSTOP)
    assert wait_until(lambda: all(p.state == "T" for p in proctable.group_members(proctable.snapshot(), pid)), 5)
    os.kill(pid, signal.SIGKILL)
    assert gone_within(engine, GONE_WITHIN_S), proctable.still_running(proctable.snapshot(), engine)
    assert wait_until(lambda: leftovers_killed(mesh) == before + len(engine), 5), (before, leftovers_killed(mesh))
    assert "left %d process(es) running in its group" % len(engine) in (mesh.log_dir / "scaler.log").read_text()


def test_down_while_the_replacement_is_starting_leaves_nothing(mesh, capsys):
    # The previous test killed the worker; the scaler restarts it after its backoff. `down` runs
    # once the replacement's engine core is booting.
    old_pid = mesh.worker_pid(WORKER)
    starting = wait_until(lambda: mesh.worker_pid(WORKER) != old_pid and engine_booting(mesh.worker_pid(WORKER)),
                          120, 0.1)
    assert starting, mesh.logs()
    everything = cluster_processes(mesh)
    assert cluster.down(mesh.home)
    assert not proctable.still_running(proctable.snapshot(), everything)
    assert cluster_processes(mesh) == []
    assert "no process of the cluster is left" in capsys.readouterr().err


def test_a_killed_scaler_takes_its_workers_and_their_engines_with_it(tmp_path):
    # A cluster with no worker, then one asked for: the scaler is killed once the worker's engine
    # core runs (booting), which saves waiting for the engine to be ready; the worker and its
    # engine are tied to the scaler from their start on.
    with local_cluster(tmp_path / "home", workers=0, worker_args=FAST_START) as running:
        with grpcutil.sync_channel(running.state.scaler) as channel:
            scaler_pb2_grpc.ScalerStub(channel).Scale(
                scaler_pb2.ScaleRequest(decision_id="lifetime-1", replicas=1, reason="test"), timeout=10)
        pidfile = running.log_dir / f"{WORKER}.pid"
        pid = wait_until(lambda: pidfile.exists() and engine_booting(running.worker_pid(WORKER))
                         and running.worker_pid(WORKER), 120, 0.1)
        assert pid, running.logs()
        workers = [proctable.snapshot()[pid], *engine_of(pid)]
        os.kill(running.state.pgids["scaler"], signal.SIGKILL)  # the scaler alone
        assert gone_within(workers, GONE_WITHIN_S), proctable.still_running(proctable.snapshot(), workers)

