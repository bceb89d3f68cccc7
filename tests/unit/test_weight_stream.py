"""The weight stream over real loopback sockets: a good pull, and every way it must fail.

Checkpoints here are small safetensors files written byte by byte (no torch), so the protocol is
tested apart from any engine; tests/integration/test_d2d_weights.py feeds it to real vLLM.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from services.worker.weights import checkpoint, wire
from services.worker.weights.shm import ShmUnavailable
from services.worker.weights.source import CheckpointSource
from services.worker.weights.tcp import ReceiveStats, TcpWeightServer, receive
from services.worker.weights.transport import transport_for
from services.worker.weights.wire import DonorLost, DonorTooSlow, IdentityMismatch, IntegrityError
from tests.weight_helpers import DyingSource, ListSource, write_checkpoint


def sample_tensors(seed: int = 1) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {
        "model.embed.weight": ("BF16", (8, 4), bytes((seed * 7 + i) % 251 for i in range(64))),
        "model.layers.0.mlp.weight": ("F32", (4, 4), bytes((seed * 13 + i) % 253 for i in range(64))),
        "lm_head.weight": ("BF16", (3, 4), bytes((seed + i) % 255 for i in range(24))),
    }


@pytest.fixture
def model_dir(tmp_path):
    return write_checkpoint(tmp_path / "m", sample_tensors())


def pull(address: str, model_dir: Path, **opts) -> dict[str, bytes]:
    index = {t.name: t for t in checkpoint.read_index(model_dir)}
    ident = checkpoint.identity(model_dir)
    return {info.name: bytes(buf) for info, buf in receive(address, ident, index, **opts)}


def serve(source) -> TcpWeightServer:
    return TcpWeightServer(source).start()


def test_pull_delivers_every_tensor_byte_for_byte(model_dir):
    source = CheckpointSource.load(model_dir)
    server = serve(source)
    try:
        stats = ReceiveStats()
        got = pull(server.address, model_dir, stats=stats)
    finally:
        server.close()
    expected = {name: data for name, (_, _, data) in sample_tensors().items()}
    assert got == expected
    assert stats.tensors == 3 and stats.bytes == sum(map(len, expected.values()))
    assert stats.donor_identity == checkpoint.identity(model_dir)


def test_identity_covers_config_and_tensor_index(tmp_path):
    a = checkpoint.identity(write_checkpoint(tmp_path / "a", sample_tensors(1)))
    same_index_other_bytes = checkpoint.identity(write_checkpoint(tmp_path / "b", sample_tensors(2)))
    other_config = checkpoint.identity(write_checkpoint(tmp_path / "c", sample_tensors(1), {"hidden_size": 5}))
    tensors = sample_tensors(1)
    tensors["lm_head.weight"] = ("BF16", (4, 3), tensors["lm_head.weight"][2])
    other_shape = checkpoint.identity(write_checkpoint(tmp_path / "d", tensors))
    assert a == same_index_other_bytes  # identity names the model, checksums guard the bytes
    assert len({a, other_config, other_shape}) == 3


def test_corrupted_tensor_is_detected(model_dir):
    source = CheckpointSource.load(model_dir)
    entries = list(source.entries())
    bad = bytearray(entries[1].data)
    bad[5] ^= 0x01
    entries[1] = replace(entries[1], data=memoryview(bad))  # the header keeps the true CRC32
    server = serve(ListSource(source.identity, entries))
    received = []
    try:
        with pytest.raises(IntegrityError, match="model.layers.0.mlp.weight.*CRC32"):
            for info, _ in receive(server.address, source.identity, {t.name: t for t in checkpoint.read_index(model_dir)}):
                received.append(info.name)
    finally:
        server.close()
    assert received == ["model.embed.weight"]  # the bad tensor itself was never handed on


def test_donor_of_another_model_is_refused_before_any_tensor(model_dir, tmp_path):
    other = write_checkpoint(tmp_path / "other", sample_tensors(), {"hidden_size": 8})
    server = serve(CheckpointSource.load(other))
    try:
        with pytest.raises(IdentityMismatch, match="serves model"):
            pull(server.address, model_dir)
    finally:
        server.close()


def test_tensor_with_the_wrong_shape_is_refused(model_dir):
    source = CheckpointSource.load(model_dir)
    entries = list(source.entries())
    e = entries[0]
    entries[0] = replace(e, info=replace(e.info, shape=(4, 8)))
    server = serve(ListSource(source.identity, entries))
    try:
        with pytest.raises(IntegrityError, match="expected BF16 \\[8, 4\\]"):
            pull(server.address, model_dir)
    finally:
        server.close()


def test_stream_missing_a_tensor_is_refused(model_dir):
    source = CheckpointSource.load(model_dir)
    server = serve(ListSource(source.identity, list(source.entries())[:2]))
    try:
        with pytest.raises(IntegrityError, match="ended after 2 of 3"):
            pull(server.address, model_dir)
    finally:
        server.close()


def test_donor_dying_mid_stream_raises_donor_lost(model_dir):
    source = CheckpointSource.load(model_dir)
    server = serve(DyingSource(source.identity, list(source.entries()), after=1))
    index = {t.name: t for t in checkpoint.read_index(model_dir)}
    received = []
    try:
        with pytest.raises(DonorLost, match="closed the stream mid-way"):
            for info, _ in receive(server.address, source.identity, index):
                received.append(info.name)
    finally:
        server.close()
    assert received == ["model.embed.weight"]


def test_unreachable_donor_raises_donor_lost(model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(DonorLost, match="cannot connect"):
            pull(f"127.0.0.1:{port}", model_dir)


def test_stalled_donor_raises_too_slow(model_dir):
    ident = checkpoint.identity(model_dir)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def stall():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(wire.frame({"version": wire.VERSION, "identity": ident, "tensors": 3, "total_bytes": 152}))
            stop.wait(5)

    threading.Thread(target=stall, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(DonorTooSlow, match="sent nothing for 0.3s"):
            pull(f"127.0.0.1:{listener.getsockname()[1]}", model_dir, stall_timeout_s=0.3)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 3


def test_server_keeps_serving_after_a_receiver_leaves(model_dir):
    source = CheckpointSource.load(model_dir)
    server = serve(source)
    try:
        index = {t.name: t for t in checkpoint.read_index(model_dir)}
        stream = receive(server.address, source.identity, index)
        next(stream)
        stream.close()  # the receiver goes away after one tensor
        assert len(pull(server.address, model_dir)) == 3
    finally:
        server.close()


# -- one host: the donor's memfds mapped by the receiver (transport "shm"; "auto" tries it first) --



def pull_via(mode: str, address: str, model_dir: Path, **opts) -> tuple[dict[str, bytes], ReceiveStats]:
    stats = ReceiveStats()
    index = {t.name: t for t in checkpoint.read_index(model_dir)}
    stream = transport_for("cpu", mode).receive(address, checkpoint.identity(model_dir), index, stats=stats, **opts)
    return {info.name: bytes(buf) for info, buf in stream}, stats


def test_shm_pull_maps_the_donors_pages_and_checks_them(model_dir):
    handle = transport_for("cpu").serve(CheckpointSource.load(model_dir), "127.0.0.1", 0)
    try:
        got, stats = pull_via("auto", handle.address, model_dir)
        tcp_got, tcp_stats = pull_via("tcp", handle.address, model_dir)
    finally:
        handle.close()
    expected = {name: data for name, (_, _, data) in sample_tensors().items()}
    assert got == expected and stats.extra["transport"] == "shm"
    assert tcp_got == expected and tcp_stats.extra["transport"] == "tcp"


def test_auto_takes_tcp_when_the_donor_has_no_shared_memory(model_dir):
    source = CheckpointSource.load(model_dir)
    server = serve(ListSource(source.identity, list(source.entries())))  # TCP only
    try:
        got, stats = pull_via("auto", server.address, model_dir)
        with pytest.raises(ShmUnavailable) as forced:
            pull_via("shm", server.address, model_dir)
    finally:
        server.close()
    assert len(got) == 3 and stats.extra["transport"] == "tcp"
    assert isinstance(forced.value, DonorLost)  # so a forced shm pull falls back to storage


def test_shm_detects_corruption_in_the_shared_pages(model_dir):
    source = CheckpointSource.load(model_dir)
    victim = list(source.entries())[2]
    handle = transport_for("cpu").serve(source, "127.0.0.1", 0)
    try:
        victim.data[3] ^= 0x10  # the donor's memory changes after its checksum was taken
        with pytest.raises(IntegrityError, match="lm_head.weight.*CRC32"):
            pull_via("shm", handle.address, model_dir)
    finally:
        handle.close()


class DyingCheckpointSource(CheckpointSource):
    def entries(self):
        for i, e in enumerate(super().entries()):
            if i == 1:
                raise RuntimeError("donor died")
            yield e


def test_shm_donor_dying_mid_stream_raises_donor_lost(model_dir):
    loaded = CheckpointSource.load(model_dir)
    source = DyingCheckpointSource(loaded.identity, list(loaded.entries()), loaded._buffers, loaded.fds, loaded.file_index)
    handle = transport_for("cpu", "shm").serve(source, "127.0.0.1", 0)
    try:
        with pytest.raises(DonorLost):
            pull_via("shm", handle.address, model_dir)
    finally:
        handle.close()


def test_with_an_internal_token_donors_serve_only_receivers_that_present_it(model_dir, tmp_path, monkeypatch):
    """The weight streams are raw sockets (gRPC's interceptors do not see them), so their HELLO
    carries the cluster's token: a peer without it gets an error frame and no tensor, over TCP
    and over the donor's (abstract, so permission-less) Unix socket."""
    from services.common import internal_auth
    from services.worker.weights.shm import socket_name

    monkeypatch.setenv(internal_auth.TOKEN_FILE_ENV, str(internal_auth.write_token_file(tmp_path / "token")))
    handle = transport_for("cpu").serve(CheckpointSource.load(model_dir), "127.0.0.1", 0)
    try:
        got, stats = pull_via("auto", handle.address, model_dir)   # this process presents the token
        assert len(got) == 3 and stats.extra["transport"] == "shm"
        assert len(pull_via("tcp", handle.address, model_dir)[0]) == 3
        hello = wire.frame({"version": wire.VERSION, "identity": checkpoint.identity(model_dir), "token": "0" * 64})
        host, port = handle.address.split(":")
        for family, where in ((socket.AF_INET, (host, int(port))), (socket.AF_UNIX, socket_name(handle.address))):
            with socket.socket(family, socket.SOCK_STREAM) as peer:
                peer.settimeout(5)
                peer.connect(where)
                peer.sendall(hello)
                reply = b""
                while chunk := peer.recv(65536):
                    reply += chunk
            answer = wire.parse_frame_body(reply[4:4 + wire.parse_frame_length(reply[:4])])
            assert answer == {"error": internal_auth.DENIED_HELLO}
            assert len(reply) == 4 + wire.parse_frame_length(reply[:4])   # and not one tensor byte after it
    finally:
        handle.close()
    with pytest.raises(wire.Unauthorised, match="refused the stream"):
        wire.check_manifest({"error": internal_auth.DENIED_HELLO}, "donor:1")


def test_shm_hands_on_nothing_from_a_corrupt_tensor_onwards(model_dir):
    """The checks run ahead of the consumer on threads; a tensor still goes out only once its own
    CRC32 matched, and nothing after a bad one."""
    source = CheckpointSource.load(model_dir)
    first = list(source.entries())[0]
    handle = transport_for("cpu").serve(source, "127.0.0.1", 0)
    got = []
    index = {t.name: t for t in checkpoint.read_index(model_dir)}
    try:
        first.data[0] ^= 0x01
        with pytest.raises(IntegrityError, match=f"{first.info.name}.*CRC32"):
            for info, _ in transport_for("cpu", "shm").receive(handle.address, checkpoint.identity(model_dir), index):
                got.append(info.name)
    finally:
        handle.close()
    assert got == []


class TwiceSource(CheckpointSource):
    def entries(self):
        entries = list(super().entries())
        yield from [entries[0], entries[1], entries[0]]


def test_shm_refuses_a_tensor_announced_twice(model_dir):
    loaded = CheckpointSource.load(model_dir)
    source = TwiceSource(loaded.identity, list(loaded.entries()), loaded._buffers, loaded.fds, loaded.file_index)
    handle = transport_for("cpu", "shm").serve(source, "127.0.0.1", 0)
    try:
        with pytest.raises(IntegrityError, match="twice"):
            pull_via("shm", handle.address, model_dir)
    finally:
        handle.close()
