"""The OPA transport against real local HTTP servers (asyncio streams), including chunked
responses, keep-alive reuse and a server that closed an idle connection."""

from __future__ import annotations

import asyncio

import pytest

from sidecar._http1 import Http1Pool, HttpError


async def serve(
    responses: list[bytes], close_after: int | None = None
) -> tuple[asyncio.Server, int, list[int]]:
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        served = 0
        while responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(h.split(b":")[1])
                for h in head.split(b"\r\n")
                if h.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            writer.write(responses.pop(0))
            await writer.drain()
            served += 1
            if close_after is not None and served >= close_after:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


def test_content_length_chunked_and_keepalive() -> None:
    """Both framings parse and one connection serves both requests."""

    async def main() -> None:
        server, port, conns = await serve(
            [
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b'3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n',
            ]
        )
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        first = await pool.request("POST", "/x", b"{}")
        second = await pool.request("POST", "/x", b"{}")
        await pool.aclose()
        server.close()
        assert first.body == b"{}"
        assert second.body == b'{"a":1}'
        assert len(conns) == 1

    asyncio.run(main())


def test_stale_idle_connection_is_retried_on_a_fresh_one() -> None:
    """A pooled connection the server closed is replaced transparently."""

    async def main() -> None:
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        server, port, conns = await serve([ok, ok], close_after=1)
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        await pool.request("POST", "/x", b"{}")
        await asyncio.sleep(0.05)
        again = await pool.request("POST", "/x", b"{}")
        await pool.aclose()
        server.close()
        assert again.status == 200
        assert len(conns) == 2

    asyncio.run(main())


@pytest.mark.parametrize(
    "response",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        # A negative chunk size and a non-ASCII digit used to raise ValueError (an
        # `internal` error at the caller, no policy_error record) instead of HttpError.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 2\r\n\r\n{}",
    ],
)
def test_protocol_violations_are_errors(response: bytes) -> None:
    """Anything outside the HTTP/1.1 subset OPA speaks is an HttpError, never a guess."""

    async def main() -> None:
        server, port, _ = await serve([response], close_after=1)
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        with pytest.raises(HttpError):
            await pool.request("POST", "/x", b"{}")
        await pool.aclose()
        server.close()

    asyncio.run(main())


def test_connection_refused_is_an_error() -> None:
    """Nobody listening: HttpError (the engine maps it to policy_unavailable)."""
    from tests.harness import free_port

    async def main() -> None:
        pool = Http1Pool(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(HttpError):
            await pool.request("GET", "/health")

    asyncio.run(main())
