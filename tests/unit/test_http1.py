"""The OPA transport against real local HTTP servers (asyncio streams), including chunked
responses, keep-alive reuse and a server that closed an idle connection."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar._http1 import Http1Pool, HttpError


async def serve(
    responses: list[bytes],
    close_after: int | None = None,
    handlers: list[asyncio.Task[Any]] | None = None,
) -> tuple[asyncio.Server, int, list[int]]:
    """A server answering each request with the next canned response; `handlers` collects
    the task serving each connection."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        this = asyncio.current_task()
        if handlers is not None and this is not None:
            handlers.append(this)
        served = 0
        while responses:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break  # the client closed this connection
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


def refused(response: bytes) -> None:
    """The pool raises HttpError on `response` (pytest.raises fails the test otherwise)."""

    async def main() -> None:
        server, port, _ = await serve([response], close_after=1)
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        with pytest.raises(HttpError):
            await pool.request("POST", "/x", b"{}")
        await pool.aclose()
        server.close()

    asyncio.run(main())


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
    refused(response)


def test_connection_refused_is_an_error() -> None:
    """Nobody listening: HttpError (the engine maps it to policy_unavailable)."""
    from tests.harness import free_port

    async def main() -> None:
        pool = Http1Pool(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(HttpError):
            await pool.request("GET", "/health")

    asyncio.run(main())


@pytest.mark.parametrize(
    "response",
    [
        # RFC 9112 §5.1: whitespace between a field name and its colon.
        b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length\t: 2\r\n\r\n{}",
        # RFC 9112 §5.2: obsolete line folding (a name that starts with a space).
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n X-Folded: yes\r\n\r\n{}",
        # RFC 9112 §6.3 item 5: two Content-Length fields, equal or not.
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 7\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 2\r\n\r\n{}",
        # A bare LF, a bare CR or a NUL inside a field value.
        b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 9\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-A: 1\rX\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
        # A coding other than chunked, and chunked in an HTTP/1.0 response (RFC 9112 §6.1).
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # Versions and status codes outside RFC 9112 §4.
        b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\n{}",
    ],
)
def test_ambiguous_headers_are_errors(response: bytes) -> None:
    """Padded, folded, repeated or control-laden header fields are refused (RFC 9112 §5)."""
    refused(response)


@pytest.mark.parametrize(
    "first",
    [
        # RFC 9112 §6.3 item 3: both framings; chunked wins, the connection is not reused.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
        # RFC 9112 §9.3: an HTTP/1.0 response is never kept alive.
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ],
)
def test_ambiguous_or_final_responses_are_never_pooled(first: bytes) -> None:
    """The response is used, but the next request goes out on a new connection."""

    async def main() -> None:
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
        handlers: list[asyncio.Task[Any]] = []
        server, port, conns = await serve([first, ok, ok], handlers=handlers)
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        got = await pool.request("POST", "/x", b"{}")
        again = await pool.request("POST", "/x", b"{}")
        await pool.aclose()
        await asyncio.wait(handlers, timeout=5)  # each handler sees the client's close
        server.close()
        assert got.body == b"{}"
        assert again.status == 200
        assert len(conns) == 2

    asyncio.run(main())


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("POST", "/v1/data/jit\r\nX-Injected: 1", "application/json"),
        ("POST", "/v1/data/jit\nX", "application/json"),
        ("POST", "/v1/data/jit\x00", "application/json"),
        ("POST", "/v1/data/jit HTTP/1.1", "application/json"),
        ("POST\r\n", "/x", "application/json"),
        ("POST", "/x", "application/json\r\nX-Injected: 1"),
        ("POST", "/x", "application/json\x00"),
    ],
)
def test_request_with_cr_lf_or_nul_is_refused_before_sending(
    method: str, path: str, content_type: str
) -> None:
    """Nothing reaches the server when the request line or a header value would carry a
    CR, LF, NUL or space that splits it (RFC 9112 §3, §11.2)."""

    async def main() -> list[int]:
        server, port, conns = await serve([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        with pytest.raises(HttpError, match="refusing"):
            await pool.request(method, path, b"{}", content_type=content_type)
        await pool.aclose()
        await asyncio.sleep(0.05)
        server.close()
        return conns

    assert asyncio.run(main()) == []


@pytest.mark.parametrize("url", ["http://opa local:8181", "http://opa\x00:8181", "http://opa\x7f/"])
def test_host_with_space_or_control_characters_is_refused(url: str) -> None:
    """A URL whose host would put a space or control into the Host header is a
    configuration error (urlsplit already drops CR, LF and tab)."""
    with pytest.raises(ValueError, match="host"):
        Http1Pool(url)
