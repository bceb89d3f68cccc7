"""The staging arena: regions handed out and reclaimed, same-host pulls copying from it with
checksums, and the check after the copy that refuses a transfer freed while it was read."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.worker.kv import arena, buffers, fused, samehost, shm, tcp, wire
from services.worker.kv.store import StagingStore
from tests.harness import wait_until
from tests.unit.test_kv_transfer import BLOCK_BYTES, LAYOUT


def test_allocator_first_fit_reuses_and_merges_freed_regions():
    alloc = arena.Allocator(4 * arena.ALIGN)
    assert alloc.reserve("a", 1) == 0
    assert alloc.reserve("b", arena.ALIGN + 1) == arena.ALIGN  # rounded up to two pages
    assert alloc.reserve("c", 2 * arena.ALIGN) is None  # one page left
    assert alloc.reserve("d", arena.ALIGN) == 3 * arena.ALIGN
    assert alloc.free("a") and alloc.free("b") and not alloc.free("a")
    assert alloc.free_bytes == 3 * arena.ALIGN
    assert alloc.reserve("c", 3 * arena.ALIGN) == 0  # the two freed regions merged
    with pytest.raises(ValueError):
        alloc.reserve("c", 1)


@pytest.fixture
def folder(tmp_path):
    arena.create(str(tmp_path), 16 * BLOCK_BYTES)
    return tmp_path


@pytest.fixture
def server(folder):
    srv = tcp.KvServer(StagingStore(), str(folder)).start()
    yield srv
    srv.close()


def stage(stager: shm.ArenaStager, tid: str, n_blocks: int = 3, seed: int = 0) -> tuple[np.ndarray, int]:
    rows = np.random.default_rng(seed).integers(0, 256, (n_blocks, BLOCK_BYTES), dtype=np.uint8)
    offset, view = stager.region(tid, rows.nbytes)
    view[:] = rows.reshape(-1)
    shm.write(stager.directory, tid, rows, [wire.crc32(r) for r in rows], n_blocks * 16 - 3, LAYOUT,
              time.time() + 60, arena_offset=offset)
    return rows, offset


def pull(fn, srv, tid, n, into=None):
    out = np.zeros((n, BLOCK_BYTES), dtype=np.uint8)
    result = fn(srv.address, tid, from_block=0, layout=LAYOUT, deadline_s=5.0,
                into=into or (lambda i, count: memoryview(out[i:i + count])))
    return out, result


@pytest.mark.parametrize("fn", [samehost.pull, tcp.pull], ids=["samehost", "tcp"])
def test_a_transfer_staged_in_the_arena_is_pulled_checked_and_its_region_reused(server, folder, fn):
    stager = shm.ArenaStager(str(folder))
    rows, offset = stage(stager, "a1")
    assert not (folder / "a1.kv").exists()  # no file of its own
    out, result = pull(fn, server, "a1", 3)
    assert (out == rows).all() and result.blocks == 3 and result.acked
    # A same-host pull does not wait for the ACK's answer: P frees a moment later.
    assert wait_until(lambda: server.handle({"op": "stats"}, None)["freed"] == {"acked": 1}, 2.0)
    # The server drops its metadata just after answering the ACK: the next transfer gets the region back.
    assert wait_until(lambda: not (folder / "a1.json").exists(), 2.0)
    rows2, offset2 = stage(stager, "a2", seed=1)
    assert offset2 == offset
    out, _ = pull(fn, server, "a2", 3)
    assert (out == rows2).all()


@pytest.fixture(params=["one-pass", "two-pass"])
def copy_path(request, monkeypatch):
    """A same-host pull's copy + CRC32: in one pass (fused.py), or a copy and a CRC32 pass per piece."""
    if request.param == "two-pass":
        monkeypatch.setattr(fused, "copier", lambda: None)
    else:
        assert fused.copier() is not None  # llvmlite and PCLMULQDQ are there on these machines
    return request.param


def test_a_corrupt_block_in_the_arena_fails_its_checksum_and_is_nacked(server, folder, copy_path):
    stager = shm.ArenaStager(str(folder))
    _, offset = stage(stager, "a3")
    stager.view[offset + 2 * BLOCK_BYTES + 9] ^= 0x10
    with pytest.raises(wire.Integrity, match="block 2 CRC32"):
        pull(samehost.pull, server, "a3", 3)
    assert server.handle({"op": "stats"}, None)["freed"] == {"nacked:integrity": 1}


def test_blocks_larger_than_a_piece_are_checked_whole_from_any_first_block(server, folder, monkeypatch, copy_path):
    """A block copied in several pieces (the last one short) gets one CRC32 over all of them: a
    clean pull from block 1 lands intact, a byte flipped in a block's last piece fails that block."""
    monkeypatch.setattr(samehost, "PIECE_BYTES", 1000)  # 4096-byte blocks: five pieces of 820 or 816
    stager = shm.ArenaStager(str(folder))
    rows, _ = stage(stager, "p1", n_blocks=4)
    out = np.zeros((4, BLOCK_BYTES), dtype=np.uint8)
    result = samehost.pull(server.address, "p1", from_block=1, layout=LAYOUT, deadline_s=5.0,
                           into=lambda i, count: memoryview(out[i:i + count]))
    assert result.blocks == 3 and (out[1:] == rows[1:]).all() and not out[0].any()
    _, offset = stage(stager, "p2", n_blocks=4, seed=2)
    stager.view[offset + 3 * BLOCK_BYTES - 5] ^= 0x01
    with pytest.raises(wire.Integrity, match="block 2 CRC32"):
        pull(samehost.pull, server, "p2", 4)


@pytest.mark.parametrize("where", [0, 15, 16, 63, 64, 2000, BLOCK_BYTES - 1])
def test_the_one_pass_copy_fails_a_byte_flipped_anywhere_in_a_block_over_several_runs(server, folder, monkeypatch, where):
    """One bit flipped in P's memory, in the first 16 bytes (where the CRC register's start goes), at
    a lane's edge, mid-block or in the last byte: that block fails, in a later run of the copy (two
    blocks a run here), and the pull is NACKed; the blocks before it were copied intact."""
    monkeypatch.setattr(samehost, "RUN_BYTES", 2 * BLOCK_BYTES)
    stager = shm.ArenaStager(str(folder))
    rows, offset = stage(stager, "f1", n_blocks=5)
    stager.view[offset + 3 * BLOCK_BYTES + where] ^= 0x04
    out = np.zeros((5, BLOCK_BYTES), dtype=np.uint8)
    with pytest.raises(wire.Integrity, match="block 3 CRC32"):
        samehost.pull(server.address, "f1", from_block=0, layout=LAYOUT, deadline_s=5.0,
                      into=lambda i, count: memoryview(out[i:i + count]))
    assert (out[:3] == rows[:3]).all()
    assert server.handle({"op": "stats"}, None)["freed"] == {"nacked:integrity": 1}


def test_a_same_host_pull_past_its_deadline_stops_before_the_next_run_and_is_nacked(server, folder, monkeypatch,
                                                                                   copy_path):
    """The deadline is checked before each run of the copy (one block a run here): a destination
    handed out only after the deadline passed gets no block, and P is told why."""
    monkeypatch.setattr(samehost, "RUN_BYTES", BLOCK_BYTES)
    stager = shm.ArenaStager(str(folder))
    stage(stager, "d1")
    assert wait_until(lambda: server._adopt("d1") or server.handle({"op": "stats"}, None)["leases"] == 1, 2.0)
    out = np.zeros((3, BLOCK_BYTES), dtype=np.uint8)

    def late(i, count):
        time.sleep(0.6)
        return memoryview(out[i:i + count])

    with pytest.raises(wire.TooSlow, match="after 0 blocks"):
        samehost.pull(server.address, "d1", from_block=0, layout=LAYOUT, deadline_s=0.5, into=late)
    assert not out.any()
    assert server.handle({"op": "stats"}, None)["freed"] == {"nacked:deadline": 1}


def test_the_one_pass_copy_gives_zlibs_crc32_for_every_block_and_every_loop(monkeypatch):
    """Plain and streaming stores (the latter for runs of STREAM_BYTES and more), the 128-bit loop
    (blocks of whole 64 bytes) and the 512-bit one (whole 256 bytes), blocks of one lane to many,
    from an unaligned source into a destination aligned to 16 bytes but not 64: the same bytes,
    and zlib's CRC32 of each block."""
    import zlib

    copier = fused.copier()
    assert copier is not None
    rng = np.random.default_rng(7)
    for stream_bytes in (1 << 40, 0):
        monkeypatch.setattr(fused, "STREAM_BYTES", stream_bytes)
        for block_bytes, n in ((64, 1), (128, 5), (256, 1), (4096, 3), (BLOCK_BYTES * 4 + 64, 2)):
            src = rng.integers(0, 256, n * block_bytes + 3, dtype=np.uint8)[3:]
            room = np.zeros(n * block_bytes + 64, dtype=np.uint8)
            at = (16 - room.ctypes.data) % 64
            dst, out = room[at:at + n * block_bytes], np.zeros(n, dtype=np.uint32)
            copier(dst, src, block_bytes, out)
            assert (dst == src).all()
            assert out.tolist() == [zlib.crc32(src[i * block_bytes:(i + 1) * block_bytes].tobytes()) for i in range(n)]
    with pytest.raises(ValueError):  # not whole lanes: the pull copies in two passes instead
        copier(np.zeros(100, dtype=np.uint8), np.zeros(100, dtype=np.uint8), 100, np.zeros(1, dtype=np.uint32))
    assert not fused.usable(100) and not fused.usable(32) and fused.usable(BLOCK_BYTES)


def test_a_transfer_freed_while_it_is_read_fails_after_the_copy(server, folder, copy_path):
    """P released the transfer (an abort, or its lease ran out) while D copied: its region may hold
    another transfer by now, so the copy counts for nothing even when every checksum matched."""
    stager = shm.ArenaStager(str(folder))
    stage(stager, "a4")
    out = np.zeros((3, BLOCK_BYTES), dtype=np.uint8)
    released = []

    def into(i, count):
        if not released:
            released.append(tcp.request(server.address, {"op": "release", "transfer_id": "a4"}))
        return memoryview(out[i:i + count])

    samehost._folders.pop(server.address, None)
    with pytest.raises(wire.UnknownTransfer, match="no longer held"):
        pull(samehost.pull, server, "a4", 3, into=into)
    assert released == [{"freed": True}]


def test_a_full_arena_gives_no_region_and_staging_falls_back_to_a_file(server, folder):
    stager = shm.ArenaStager(str(folder))
    assert stager.region("big", 17 * BLOCK_BYTES) is None
    rows = np.random.default_rng(3).integers(0, 256, (2, BLOCK_BYTES), dtype=np.uint8)
    shm.write(str(folder), "f1", rows, [wire.crc32(r) for r in rows], 20, LAYOUT, time.time() + 60)
    out, result = pull(samehost.pull, server, "f1", 2)
    assert (out == rows).all() and result.acked
    assert wait_until(lambda: server.handle({"op": "stats"}, None)["freed"] == {"acked": 1}, 2.0)


def test_the_smallest_kept_buffer_that_fits_is_taken():
    pool = buffers.BufferPool(kept=3)
    with pool.take(100) as a, pool.take(300) as b, pool.take(200) as c:
        small, large, middle = a.ctypes.data, b.ctypes.data, c.ctypes.data
    with pool.take(150) as got:
        assert got.ctypes.data == middle
    with pool.take(250) as got:
        assert got.ctypes.data == large
    with pool.take(50) as got:
        assert got.ctypes.data == small


def test_pull_buffers_are_kept_and_reused():
    pool = buffers.BufferPool(kept=1)
    with pool.take(1000) as first:
        pointer = first.ctypes.data
        assert first.nbytes == 1000 and first.dtype == np.uint8
    with pool.take(500) as second:
        assert second.ctypes.data == pointer and second.nbytes == 500
        with pool.take(500) as third:  # the kept one is in use: a fresh one
            assert third.ctypes.data != pointer


def test_the_start_probe_times_a_pull_from_the_arena_top_and_leaves_nothing_held(server, folder):
    from services.worker.kv import probe

    stager = shm.ArenaStager(str(folder))
    rows, offset = stage(stager, "kept")  # an engine's transfer at the bottom, not to be touched
    assert server._adopt("kept")
    layout = probe.layout_for(BLOCK_BYTES // 16, 16, LAYOUT["layers"], LAYOUT["dtype"])
    got = probe.measure(server.address, str(folder), layout, tokens=64, repeats=3)
    assert got["staging"] == "arena" and got["bytes"] == 4 * BLOCK_BYTES and got["tokens"] == 64
    assert got["ms_per_token"] > 0 and got["ms_per_token"] * 64 == pytest.approx(got["ms"], abs=0.0006)  # ms: 3 decimals
    assert (stager.view[offset:offset + rows.nbytes] == rows.reshape(-1)).all()
    # The probe's ACKs go off its pulls' path: once all three are in, only "kept" is still held.
    assert wait_until(lambda: server.handle({"op": "stats"}, None)["freed"] == {"acked": 3}, 2.0)
    assert server.handle({"op": "stats"}, None)["leases"] == 1
