"""Mapping a donor's shared weight files ahead of a pull (services/worker/weights/premap.py):
the pull reads through the populated mapping when it is of the same files, and every check of
the stream still runs over it; a mapping of another donor, a dead one, or another model is not
used. Real donors over real Unix sockets and memfds; no engine."""

from __future__ import annotations

import pytest

from services.worker.weights import checkpoint, premap
from services.worker.weights.shm import ShmUnavailable
from services.worker.weights.source import CheckpointSource
from services.worker.weights.transport import PreparesPull, transport_for
from services.worker.weights.wire import IdentityMismatch, IntegrityError
from tests.unit.test_weight_stream import pull_via, sample_tensors
from tests.weight_helpers import write_checkpoint

EXPECTED = {name: data for name, (_, _, data) in sample_tensors().items()}


@pytest.fixture
def model_dir(tmp_path):
    return write_checkpoint(tmp_path / "m", sample_tensors())


@pytest.fixture(autouse=True)
def no_mapping_left():
    premap.drop()
    yield
    premap.drop()


def donor(model_dir, source=None):
    return transport_for("cpu").serve(source or CheckpointSource.load(model_dir), "127.0.0.1", 0)


def prepare(address: str, model_dir, mode: str = "shm", **opts) -> dict:
    transport = transport_for("cpu", mode)
    assert isinstance(transport, PreparesPull)
    return transport.prepare(address, checkpoint.identity(model_dir), **opts)


def test_the_pull_reads_through_the_mapping_made_ahead(model_dir):
    handle = donor(model_dir)
    try:
        report = prepare(handle.address, model_dir, background=False)
        kept = premap.current()
        got, stats = pull_via("shm", handle.address, model_dir)
        after = premap.current()
    finally:
        handle.close()
    assert report["prepared"] and report["populated"] and report["files"] == 1
    assert report["bytes"] == (model_dir / "model.safetensors").stat().st_size
    assert kept is not None and kept.method in ("madvise", "touch")
    assert got == EXPECTED
    assert stats.extra["premapped"] is True and stats.extra["populated"] is True
    assert after is None  # the pull ends the mapping: a later pull maps afresh


def test_a_background_populate_finishes_and_the_pull_uses_it(model_dir):
    handle = donor(model_dir)
    try:
        prepare(handle.address, model_dir)
        kept = premap.current()
        assert kept is not None and kept.done.wait(10)
        got, stats = pull_via("auto", handle.address, model_dir)
    finally:
        handle.close()
    assert kept.populate_s is not None and got == EXPECTED and stats.extra["premapped"] is True


def test_a_mapping_of_another_donor_is_not_used(model_dir):
    first, second = donor(model_dir), donor(model_dir)
    try:
        prepare(first.address, model_dir, background=False)
        got, stats = pull_via("shm", second.address, model_dir)
    finally:
        first.close()
        second.close()
    assert got == EXPECTED and stats.extra["premapped"] is False


def test_a_donor_restarted_at_the_same_address_is_mapped_afresh(model_dir):
    """Same address, new memfds (another inode): the old mapping is not of the files the headers
    point into, so the pull maps the new ones."""
    old = donor(model_dir)
    address = old.address
    prepare(address, model_dir, background=False)
    old.close()
    host, _, port = address.rpartition(":")
    new = transport_for("cpu").serve(CheckpointSource.load(model_dir), host, int(port))
    try:
        got, stats = pull_via("shm", address, model_dir)
    finally:
        new.close()
    assert got == EXPECTED and stats.extra["premapped"] is False


def test_checks_still_run_over_the_premapped_pages(model_dir):
    source = CheckpointSource.load(model_dir)
    handle = donor(model_dir, source)
    try:
        prepare(handle.address, model_dir, background=False)
        list(source.entries())[2].data[3] ^= 0x10  # the donor's memory changes after its checksum
        with pytest.raises(IntegrityError, match="lm_head.weight.*CRC32"):
            pull_via("shm", handle.address, model_dir)
    finally:
        handle.close()
    assert premap.current() is None  # a failed pull drops the mapping too


def test_a_donor_of_another_model_is_refused_and_nothing_is_kept(model_dir, tmp_path):
    other = write_checkpoint(tmp_path / "other", sample_tensors(), {"hidden_size": 8})
    handle = donor(other)
    try:
        with pytest.raises(IdentityMismatch):
            prepare(handle.address, model_dir)
    finally:
        handle.close()
    assert premap.current() is None


def test_no_shared_memory_donor(model_dir):
    with pytest.raises(ShmUnavailable):
        prepare("127.0.0.1:1", model_dir, mode="shm")
    assert prepare("127.0.0.1:1", model_dir, mode="auto")["prepared"] is False
    assert prepare("127.0.0.1:1", model_dir, mode="tcp")["prepared"] is False
    assert premap.current() is None


def test_a_dead_donors_mapping_is_dropped_by_the_pull_that_falls_back(model_dir):
    handle = donor(model_dir)
    address = handle.address
    prepare(address, model_dir, background=False)
    handle.close()
    with pytest.raises(ShmUnavailable):
        pull_via("shm", address, model_dir)
    assert premap.current() is None  # its pages are not pinned past the pull


def test_a_new_attach_replaces_the_old_one(model_dir):
    first, second = donor(model_dir), donor(model_dir)
    try:
        prepare(first.address, model_dir, background=False)
        old = premap.current()
        prepare(second.address, model_dir, background=False)
        new = premap.current()
    finally:
        first.close()
        second.close()
    assert old is not None and new is not None and old.stopped and new.address == second.address


def test_engine_side_prepare_then_the_simulated_pull_uses_the_mapping(model_dir):
    """engine_side.prepare_pull as a standby's engine runs it (the vLLM one runs it in the engine
    process, the SIMULATED one in the worker), then the pull that follows."""
    from services.worker.engine.sim_weights import pull_and_drop
    from services.worker.weights.engine_side import prepare_pull

    handle = donor(model_dir)
    try:
        report = prepare_pull(None, {"address": handle.address, "model_dir": str(model_dir)})
        pulled = pull_and_drop(str(model_dir), handle.address)
        gone = prepare_pull(None, {"address": "127.0.0.1:1", "model_dir": str(model_dir), "transport": "shm"})
    finally:
        handle.close()
    assert report["prepared"] and report["populated"] and report["seconds"] >= report["populate_s"]
    assert pulled["source"] == "donor" and pulled["premapped"] is True and pulled["transport"] == "shm"
    assert gone["prepared"] is False and gone["reason"].startswith("no-shm")
