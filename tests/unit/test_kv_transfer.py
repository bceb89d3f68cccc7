"""The KV transfer protocol without vLLM: staging files, leases, acks, checksums, deadlines."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from services.worker.kv import samehost, shm, tcp, wire
from services.worker.kv.params import BadKvParams, KvParams
from services.worker.kv.store import StagingStore, Staged
from tests.harness import wait_until

BLOCK_BYTES = 4096
LAYOUT = {"layers": 2, "dtype": "torch.bfloat16", "block_shape": [2, 8, 64], "block_size": 16, "block_bytes": BLOCK_BYTES}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stage(directory: Path, tid: str, n_blocks: int = 3, expires: float = 2000.0, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).integers(0, 256, (n_blocks, BLOCK_BYTES), dtype=np.uint8)
    shm.write(str(directory), tid, rows, [wire.crc32(r) for r in rows], n_blocks * 16 - 3, LAYOUT, expires)
    return rows


@pytest.fixture
def server(tmp_path):
    clock = Clock()
    srv = tcp.KvServer(StagingStore(), str(tmp_path), clock=clock).start()
    srv.test_clock = clock
    yield srv
    srv.close()


def pull_all(srv, tid, n, from_block=0, layout=LAYOUT, deadline_s=5.0):
    out = np.zeros((n, BLOCK_BYTES), dtype=np.uint8)
    result = tcp.pull(srv.address, tid, from_block=from_block, layout=layout, deadline_s=deadline_s,
                      into=lambda i, count: memoryview(out[i:i + count]))
    return out, result


def test_pull_delivers_every_block_checked_and_the_ack_frees_the_lease(server, tmp_path):
    rows = stage(tmp_path, "t1")
    out, result = pull_all(server, "t1", 3)
    assert (out == rows).all()
    assert (result.blocks, result.bytes, result.num_tokens, result.acked) == (3, 3 * BLOCK_BYTES, 45, True)
    stats = server.handle({"op": "stats"}, None)
    assert stats["leases"] == 0 and stats["freed"] == {"acked": 1}
    # The staged files go with the lease (P unlinks them just after answering the ACK).
    assert wait_until(lambda: not list(tmp_path.iterdir()), 2.0)


def test_pull_from_a_later_block_sends_only_the_rest(server, tmp_path):
    rows = stage(tmp_path, "t2", n_blocks=4)
    out, result = pull_all(server, "t2", 4, from_block=2)
    assert result.blocks == 2
    assert (out[2:] == rows[2:]).all() and not out[:2].any()


def test_a_corrupt_block_fails_its_checksum_and_the_nack_frees_the_lease(server, tmp_path):
    stage(tmp_path, "t3")
    with open(tmp_path / "t3.kv", "r+b") as f:  # one bit flipped in P's memory after staging
        f.seek(BLOCK_BYTES + 17)
        byte = f.read(1)[0]
        f.seek(BLOCK_BYTES + 17)
        f.write(bytes([byte ^ 1]))
    with pytest.raises(wire.Integrity, match="block 1 CRC32"):
        pull_all(server, "t3", 3)
    stats = server.handle({"op": "stats"}, None)
    assert stats["leases"] == 0 and stats["freed"] == {"nacked:integrity": 1}


def test_an_expired_lease_is_freed_unread_and_a_late_pull_is_told_so(server, tmp_path):
    stage(tmp_path, "t4", expires=1001.0)
    server._adopt("t4")
    assert server.handle({"op": "stats"}, None)["leases"] == 1
    server.test_clock.now = 1001.5
    assert server.store.expire(server.test_clock()) == ["t4"]
    assert not (tmp_path / "t4.kv").exists()
    with pytest.raises(wire.UnknownTransfer, match="expired"):
        pull_all(server, "t4", 3)


def test_the_reaper_adopts_staged_files_and_expires_them_without_any_pull(server, tmp_path):
    stage(tmp_path, "t5", expires=1001.0)
    deadline = time.monotonic() + 5
    while server.handle({"op": "stats"}, None)["leases"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.test_clock.now = 2000.0
    while server.handle({"op": "stats"}, None)["leases"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = server.handle({"op": "stats"}, None)
    assert stats["freed"] == {"expired": 1} and stats["freed_blocks"] == {"expired": 3}  # leaked: 3 blocks
    assert not list(tmp_path.iterdir())


def test_release_frees_an_unread_transfer(server, tmp_path):
    stage(tmp_path, "t6")
    assert tcp.request(server.address, {"op": "release", "transfer_id": "t6"}) == {"freed": True}
    assert tcp.request(server.address, {"op": "release", "transfer_id": "t6"}) == {"freed": False}
    with pytest.raises(wire.UnknownTransfer, match="released"):
        pull_all(server, "t6", 3)


def test_a_pull_waits_for_blocks_staged_just_after_it_arrived(server, tmp_path):
    threading.Timer(0.3, stage, args=(tmp_path, "t7")).start()
    out, result = pull_all(server, "t7", 3, deadline_s=4.0)
    assert result.blocks == 3


def test_an_unknown_transfer_is_refused_within_the_deadline(server):
    started = time.monotonic()
    with pytest.raises(wire.UnknownTransfer, match="unknown"):
        pull_all(server, "never", 3, deadline_s=0.4)
    assert time.monotonic() - started < 3.0  # bounded by the deadline, not a hang


def test_a_layout_mismatch_is_refused_before_any_block(server, tmp_path):
    stage(tmp_path, "t8")
    with pytest.raises(wire.Integrity, match="layout"):
        pull_all(server, "t8", 3, layout={**LAYOUT, "dtype": "torch.float16"})


def test_a_silent_server_ends_in_the_deadline_and_a_dead_one_in_peer_lost():
    silent = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    with pytest.raises(wire.TooSlow):
        tcp.pull(address, "x", from_block=0, layout=LAYOUT, deadline_s=0.3, into=lambda i, count: memoryview(bytearray(count * BLOCK_BYTES)))
    silent.close()
    with pytest.raises(wire.PeerLost):
        tcp.pull(address, "x", from_block=0, layout=LAYOUT, deadline_s=0.3, into=lambda i, count: memoryview(bytearray(count * BLOCK_BYTES)))


def test_store_counts_the_blocks_freed_by_each_reason():
    store, block = StagingStore(), memoryview(bytes(8))
    for tid, n, expires in (("a", 2, 10.0), ("b", 3, 10.0), ("c", 4, 50.0), ("d", 1, 50.0)):
        store.stage(Staged(tid, [block] * n, [0] * n, n, LAYOUT, expires))
    assert store.free("a", "acked") and store.expire(20.0) == ["b"] and store.free("d", "released")
    assert store.free("a", "acked") is False  # freed once, counted once
    stats = store.stats()
    assert stats.freed == {"acked": 1, "expired": 1, "released": 1}
    assert stats.freed_blocks == {"acked": 2, "expired": 3, "released": 1}
    assert (stats.leases, stats.blocks) == (1, 4)


def test_store_reports_why_a_transfer_is_gone():
    store = StagingStore()
    store.stage(Staged("a", [memoryview(b"x")], [0], 1, LAYOUT, expires_s=10.0))
    assert store.get("a", 5.0)[0] is not None
    assert store.get("a", 10.0) == (None, "expired")
    assert store.get("b", 5.0) == (None, "unknown")
    assert store.free("a", "acked") and not store.free("a", "acked")
    assert store.get("a", 5.0) == (None, "acked")
    with pytest.raises(ValueError):
        store.stage(Staged("a", [], [], 0, LAYOUT, expires_s=10.0))


def test_staged_files_with_a_bad_name_or_size_are_not_served(tmp_path):
    assert shm.load(str(tmp_path), "../etc") is None
    stage(tmp_path, "t9")
    os.truncate(tmp_path / "t9.kv", BLOCK_BYTES)
    assert shm.load(str(tmp_path), "t9") is None


def test_a_reader_on_this_host_reads_metadata_of_any_length_and_refuses_what_is_not_it(tmp_path):
    sums = list(range(4_000_000_000, 4_000_000_000 + 9000))  # ~100 KB of JSON: more than one read
    shm.write(str(tmp_path), "m1", b"", sums, 5, LAYOUT, 2000.0, arena_offset=8192)
    got = shm.read_location(str(tmp_path), "m1")
    assert got["crc32"] == sums and got["offset"] == 8192 and got["arena"] and got["blocks"] == 9000
    (tmp_path / "m2.json").write_text("[1, 2]")
    (tmp_path / "m3.json").write_text('{"crc32": [1]')
    assert [shm.read_location(str(tmp_path), t) for t in ("m2", "m3", "absent", "../m1")] == [None] * 4
    assert shm.load(str(tmp_path), "m2") is None


@pytest.mark.parametrize("kwargs,field", [
    ({"do_remote_decode": True, "do_remote_prefill": True}, "exclude"),
    ({"do_remote_prefill": True, "transfer_id": "t", "num_tokens": 3}, "remote_address"),
    ({"do_remote_prefill": True, "remote_address": "h:1", "num_tokens": 3}, "transfer_id"),
    ({"do_remote_prefill": True, "remote_address": "h:1", "transfer_id": "t"}, "num_tokens"),
    ({"do_remote_decode": True, "lease_s": -1.0}, "lease_s"),
])
def test_bad_kv_params_name_their_field(kwargs, field):
    with pytest.raises(BadKvParams, match=field):
        KvParams(**kwargs)


def test_kv_params_round_trip_through_vllm_dict():
    p = KvParams(do_remote_prefill=True, remote_address="h:1", transfer_id="t", num_tokens=5)
    assert KvParams.from_vllm(p.to_vllm()) == p
    assert KvParams.from_vllm(None) is None


def samehost_pull(srv, tid, n, from_block=0):
    out = np.zeros((n, BLOCK_BYTES), dtype=np.uint8)
    result = samehost.pull(srv.address, tid, from_block=from_block, layout=LAYOUT, deadline_s=5.0,
                           into=lambda i, count: memoryview(out[i:i + count]))
    return out, result


def test_same_host_pull_maps_the_staged_file_checks_it_and_acks(server, tmp_path):
    rows = stage(tmp_path, "s1", n_blocks=4)
    out, result = samehost_pull(server, "s1", 4, from_block=1)
    assert (out[1:] == rows[1:]).all() and result.blocks == 3 and result.acked
    assert wait_until(lambda: server.handle({"op": "stats"}, None)["freed"] == {"acked": 1}, 2.0)


def test_same_host_pull_catches_a_corrupt_block_and_nacks(server, tmp_path):
    stage(tmp_path, "s2")
    with open(tmp_path / "s2.kv", "r+b") as f:
        f.seek(5)
        byte = f.read(1)[0]
        f.seek(5)
        f.write(bytes([byte ^ 0x80]))
    with pytest.raises(wire.Integrity, match="block 0 CRC32"):
        samehost_pull(server, "s2", 3)
    assert server.handle({"op": "stats"}, None)["freed"] == {"nacked:integrity": 1}


def test_staging_folders_of_dead_workers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"hfx-kv-{dead.stdout.strip()}-abc"
    live = tmp_path / f"hfx-kv-{os.getpid()}-def"
    for folder in (gone, live):
        folder.mkdir()
        (folder / "x.kv").write_bytes(b"1")
    assert shm.remove_orphans(str(tmp_path)) == [str(gone)]
    assert not gone.exists() and live.exists()


def test_with_an_internal_token_the_kv_server_answers_only_requests_that_present_it(server, tmp_path, monkeypatch):
    """The KV stream is a raw socket (gRPC's interceptors do not see it): every request frame
    carries the cluster's token, and one without it gets an error and nothing staged."""
    from services.common import internal_auth

    rows = stage(tmp_path, "t-auth")
    monkeypatch.setenv(internal_auth.TOKEN_FILE_ENV, str(internal_auth.write_token_file(tmp_path / "token")))
    host, port = server.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as peer:
        peer.sendall(wire.frame({"op": "pull", "version": wire.VERSION, "transfer_id": "t-auth", "from_block": 0,
                                 "layout": LAYOUT, "token": "0" * 64}))
        reply = b""
        while chunk := peer.recv(65536):
            reply += chunk
    size = wire.parse_frame_length(reply[:4])
    assert wire.parse_frame_body(reply[4:4 + size]) == {"ok": False, "reason": "unauthorised",
                                                        "error": internal_auth.DENIED_HELLO}
    assert len(reply) == 4 + size                              # not one block byte after it
    out, result = pull_all(server, "t-auth", 3)                # this process presents the token
    assert (out == rows).all() and result.acked
