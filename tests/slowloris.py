"""Idle HTTP attackers and a sidecar at a low open-file limit (issue 13 finding 3), shared
by tests/integration/test_http_listener.py and bench/http_starvation.py. Real sockets, a real
sidecar process under `prlimit`."""

from __future__ import annotations

import os
import select
import socket
import threading
import time

from tests.harness import SidecarProcess, wait_for

PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def connect(port: int) -> socket.socket:
    """A connection that sent half a request head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(PARTIAL_HEAD)
    return sock


class Attackers:
    """`count` connections that each send half a request head and hold it; one closed by
    the sidecar is opened again half a second later."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.stop = threading.Event()
        self.connected = 0
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Attackers:
        self._thread.start()
        wait_for(lambda: self.connected >= self.count, 60, what="the attackers to connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _open(self) -> socket.socket | None:
        try:
            return connect(self.port)
        except OSError:
            return None

    def _run(self) -> None:
        socks: list[socket.socket] = []
        due: list[float] = []
        try:
            while not self.stop.is_set():
                while len(socks) + len(due) < self.count:
                    sock = self._open()
                    if sock is None:
                        due.append(time.monotonic() + 0.5)
                        continue
                    socks.append(sock)
                self.connected = max(self.connected, len(socks))
                now = time.monotonic()
                ready = [t for t in due if t <= now]
                due = [t for t in due if t > now]
                for _ in ready:
                    sock = self._open()
                    if sock is None:
                        due.append(now + 0.5)
                    else:
                        socks.append(sock)
                        self.reconnects += 1
                readable, _, _ = select.select(socks, [], [], 0.1) if socks else ([], [], [])
                for sock in readable:
                    try:
                        gone = sock.recv(4096) == b""
                    except OSError:
                        gone = True
                    if gone:
                        sock.close()
                        socks.remove(sock)
                        due.append(time.monotonic() + 0.5)
        finally:
            for sock in socks:
                sock.close()


class LimitedSidecar(SidecarProcess):
    """A sidecar started under `prlimit --nofile=N:N` (soft and hard)."""

    nofile = 256

    def args(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--", *super().args()]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
