"""Proxies between a decode worker (D) and a prefill worker's KV transfer server (P), for the P/D
tests: stand-ins for the network between them (tests/integration/test_pd_kv.py)."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import threading
import time
from pathlib import Path

from services.worker.kv import tcp, wire


def _close(*socks: socket.socket) -> None:
    for s in socks:  # shutdown first: close alone sends no FIN while another thread reads
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


class _Listener:
    def __init__(self, target: str) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            client, _ = self.sock.accept()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _upstream(self) -> socket.socket:
        host, _, port = self.target.rpartition(":")
        return socket.create_connection((host, int(port)))

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError


class Proxy(_Listener):
    """Passes bytes on, or breaks the stream P sends at byte `at_byte`, as a failing network or a
    dying P would: "corrupt" flips a bit, "cut" ends it mid-way, "stall" goes silent for `stall_s`."""

    def __init__(self, target: str, mode: str, at_byte: int = 2000, stall_s: float = 0.0) -> None:
        self.mode, self.at_byte, self.stall_s = mode, at_byte, stall_s
        super().__init__(target)

    def _serve(self, client: socket.socket) -> None:
        upstream = self._upstream()
        threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
        self._pipe(upstream, client, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, from_p: bool) -> None:
        seen = 0
        try:
            while data := src.recv(65536):
                if from_p and seen <= self.at_byte < seen + len(data):
                    cut = self.at_byte - seen
                    if self.mode == "corrupt":
                        data = data[:cut] + bytes([data[cut] ^ 0x5A]) + data[cut + 1:]
                    elif self.mode == "cut":  # P gone mid-block
                        dst.sendall(data[:cut])
                        return
                    elif self.mode == "stall":  # P alive but silent past D's deadline
                        dst.sendall(data[:cut])
                        time.sleep(self.stall_s)
                        return
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src, dst)


class RemoteHold(_Listener):
    """As a network to P on another host, with a pull held part-way. P's answer to D's locate names
    a shared-memory path that does not exist here, so D streams the blocks over TCP (samehost.py
    falls back to tcp.pull, as for a P elsewhere). A pull's stream goes on to D up to P's header and
    `hold_blocks` blocks, then P's bytes are held until `release()`; from then on whatever P's side
    still sends is passed on, and D's side is closed when P's closes. D's requests pass as they are."""

    def __init__(self, target: str, hold_blocks: int) -> None:
        self.hold_blocks = hold_blocks
        self.held = threading.Event()      # the stream is held: D has the header and hold_blocks blocks
        self.released = threading.Event()
        self.to_d: socket.socket | None = None  # the held pull's connection to D
        self.block_bytes = self.blocks_announced = 0
        self.after_release = 0  # bytes of P's passed on after release()
        super().__init__(target)

    def release(self) -> None:
        self.released.set()

    def _serve(self, client: socket.socket) -> None:
        upstream = self._upstream()
        try:
            request = tcp.read_frame(client, time.monotonic() + 10)
            upstream.sendall(wire.frame(request))
            if request.get("op") != "pull":  # a locate (or a NACK, release): one answer
                reply = tcp.read_frame(upstream, time.monotonic() + 10)
                if request.get("op") == "locate" and reply.get("path"):
                    reply["path"] = "/nonexistent-host/" + os.path.basename(str(reply["path"]))
                client.sendall(wire.frame(reply))
                return
            head = tcp.read_frame(upstream, time.monotonic() + 10)
            client.sendall(wire.frame(head))
            self.block_bytes = int(head["layout"]["block_bytes"])
            self.blocks_announced = int(head["blocks"])
            self.to_d = client
            threading.Thread(target=self._pass, args=(client, upstream), daemon=True).start()
            self._pass_held(upstream, client)
        except (OSError, wire.KvTransferError, KeyError):
            pass
        finally:
            _close(client, upstream)

    def _pass_held(self, src: socket.socket, dst: socket.socket) -> None:
        left = self.hold_blocks * self.block_bytes
        while left:
            data = src.recv(min(left, 65536))
            if not data:
                return
            dst.sendall(data)
            left -= len(data)
        self.held.set()
        self.released.wait()
        while data := src.recv(65536):
            dst.sendall(data)
            self.after_release += len(data)

    @staticmethod
    def _pass(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def d_has_read_all(self) -> bool:
        """D's process read every byte sent on to it: none waits in this side's send queue or in
        D's receive queue (its socket's rx_queue in /proc/net/tcp)."""
        conn = self.to_d
        if conn is None or struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]:
            return False
        d_port, own_port = conn.getpeername()[1], conn.getsockname()[1]
        for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[1].endswith(f":{d_port:04X}") and fields[2].endswith(f":{own_port:04X}"):
                return int(fields[4].split(":")[1], 16) == 0
        return False
