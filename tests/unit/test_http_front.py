"""sidecar/http_front.py's flow control on a real asyncio transport over a real socket pair,
handing over to a real aiohttp protocol. The route is a stub: what is under test is the
connection's state machine, and a peer that stops reading at an exact moment (so that the
transport pauses writing) is what a real client cannot be made to do on demand."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from aiohttp import web

from sidecar.http_front import Answer, Connection, Front, Route

BIG = b'"' + b"a" * 300_000 + b'"'
EVALUATION = (
    b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer t\r\nContent-Length: 2\r\n\r\n{}"
)
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


class _Listener:
    """The three calls a Connection makes to its listener, its header timeout and the
    requests being answered."""

    header_timeout = 10.0

    def __init__(self) -> None:
        self.answering: set[asyncio.Task[None]] = set()

    def _opened(self, conn: Connection) -> None:
        pass

    def _closed(self, conn: Connection) -> None:
        pass

    def _idle(self, conn: Connection) -> None:
        pass


async def _route(body: bytes, rid: str | None, base: str) -> Answer:
    return Answer(200, BIG)


async def _healthz(request: web.BaseRequest) -> web.Response:
    return web.Response(text="ok")


async def _read_until(peer: socket.socket, count: int) -> bytes:
    """Read from `peer` until `count` whole responses (b"HTTP/1.1 ") arrived."""
    loop = asyncio.get_running_loop()
    data = b""
    while data.count(b"HTTP/1.1 ") < count or not data.endswith((b"ok", b'"')):
        chunk = await loop.sock_recv(peer, 1 << 20)
        if not chunk:
            break
        data += chunk
    return data


async def _connection(route: Route = _route) -> tuple[Connection, asyncio.Transport, socket.socket]:
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.setblocking(False)
    front = Front(
        routes={b"/access/v1/evaluation": route},
        authorized=lambda header: header == "Bearer t",
        request_id_ok=lambda value: True,
        max_body=1024,
        body_timeout=10.0,
        body_timed_out=Answer(408, b"{}"),
    )
    conn = Connection(web.Server(_healthz), _Listener(), front)
    transport, _ = await loop.connect_accepted_socket(lambda: conn, ours)
    return conn, cast(asyncio.Transport, transport), peer


def test_a_hand_over_while_writing_is_paused_still_reads() -> None:
    """An evaluation whose answer fills the peer's buffers, pipelined with GET /healthz: once
    the peer reads both answers, the connection (now aiohttp's) reads and answers a third
    request."""

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        _, transport, peer = await _connection()
        try:
            await loop.sock_sendall(peer, EVALUATION + HEALTHZ)
            await asyncio.sleep(0.2)  # answered; the transport holds most of the answer
            async with asyncio.timeout(5):
                first = await _read_until(peer, 2)
            await loop.sock_sendall(peer, HEALTHZ)
            try:
                async with asyncio.timeout(3):
                    after = await _read_until(peer, 1)
            except TimeoutError:
                after = b""
        finally:
            transport.close()
            peer.close()
        return first.count(b"HTTP/1.1 200"), after.count(b"HTTP/1.1 200")

    assert asyncio.run(main()) == (2, 1)


def test_no_request_is_decided_while_writing_is_paused() -> None:
    """Evaluations pipelined behind one whose answer backs up are not decided until the peer
    reads: the front holds at most one answer beyond the transport's high-water mark."""
    decided = 0

    async def counting(body: bytes, rid: str | None, base: str) -> Answer:
        nonlocal decided
        decided += 1
        return Answer(200, BIG)

    async def main() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        _, transport, peer = await _connection(counting)
        try:
            await loop.sock_sendall(peer, EVALUATION * 5)
            await asyncio.sleep(0.3)
            while_backed_up = decided
            async with asyncio.timeout(10):
                data = await _read_until(peer, 5)
        finally:
            transport.close()
            peer.close()
        return while_backed_up, decided, data.count(b"HTTP/1.1 200")

    assert asyncio.run(main()) == (1, 5, 5)
