"""The OPA transport against real local HTTP servers (asyncio streams), including chunked
responses, keep-alive reuse and a server that closed an idle connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from sidecar._http1 import Http1Pool, HttpError, Response


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


# The transport is an asyncio.Protocol: a response is framed from whatever each read brings.
# These servers script the bytes and their timing; each runs on a real socket.

T = TypeVar("T")
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

Script = Any  # async (reader, writer) -> None, one per connection, in order


async def scripted(
    scripts: list[Script], *, path: Path | None = None, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.Server, str, list[asyncio.Task[Any]]]:
    """A server (TCP, TLS with `tls`, or the Unix socket `path`) running the next script on
    each new connection; returns its URL and the tasks serving the connections."""
    handlers: list[asyncio.Task[Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        this = asyncio.current_task()
        assert this is not None
        handlers.append(this)
        try:
            await scripts.pop(0)(reader, writer)
        finally:
            writer.close()

    if path is not None:
        server = await asyncio.start_unix_server(handle, str(path))
        return server, f"unix://{path}", handlers
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    return server, f"{'https' if tls else 'http'}://127.0.0.1:{port}", handlers


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    """The event loop a test runs on: asyncio's, and uvloop's (what `serve` runs), whose
    transports are not asyncio classes."""
    return str(request.param)


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """`main` to completion on a fresh event loop of the kind `loop` names."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as r:
        return r.run(main)


async def shut(server: asyncio.Server) -> None:
    """Stop listening; a connection still open after 5 s fails the test (an unclosed
    transport warning) instead of blocking it."""
    server.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(h.split(b":")[1])
        for h in head.split(b"\r\n")
        if h.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)


def answering(*responses: bytes, pieces: int = 0) -> Script:
    """A connection answering each request with the next response, each written in pieces
    of `pieces` bytes (0: whole) with a pause between them, so they arrive in many reads."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_request(reader)
            step = pieces or len(response)
            for at in range(0, len(response), step):
                writer.write(response[at : at + step])
                await writer.drain()
                if pieces:
                    await asyncio.sleep(0.002)
        await reader.read()  # until the client closes

    return script


def run_against(
    scripts: list[Script], requests: int, loop: str = "asyncio", **server: Any
) -> tuple[list[Response | HttpError], int]:
    """`requests` requests through one pool, in a row, to a `scripted(scripts, **server)`
    server: each result (or HttpError), and how many connections the server saw."""

    async def main() -> tuple[list[Response | HttpError], int]:
        listening, url, handlers = await scripted(scripts, **server)
        pool = Http1Pool(url)
        results: list[Response | HttpError] = []
        for _ in range(requests):
            try:
                async with asyncio.timeout(10):  # a missing limit fails, never hangs
                    results.append(await pool.request("POST", "/x", b"{}"))
            except HttpError as err:
                results.append(err)
        await pool.aclose()
        if handlers:
            await asyncio.wait(handlers, timeout=5)  # each handler sees the client's close
        await shut(listening)
        return results, len(handlers)

    return run(main(), loop)


def test_a_response_split_byte_by_byte_is_framed_and_pooled(loop: str) -> None:
    """A response arriving one byte per read (head, Content-Length body, then a chunked
    body with a chunk extension and a trailer) frames exactly and keeps the connection."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'3;ext=1\r\n{"a\r\n4\r\n":1}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    results, connections = run_against([answering(OK, chunked, pieces=1)], 2, loop)
    assert results == [Response(200, b"{}"), Response(200, b'{"a":1}')]
    assert connections == 1


def test_chunks_split_across_reads_are_framed(loop: str) -> None:
    """Chunk sizes, data and terminators cut at every third byte still frame the body."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (b"a" * 300, b"b" * 17, b"c"))
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    results, connections = run_against([answering(response, OK, pieces=3)], 2, loop)
    assert results == [Response(200, b"a" * 300 + b"b" * 17 + b"c"), Response(200, b"{}")]
    assert connections == 1


@pytest.mark.parametrize(
    "extra",
    [
        # A second response in the same write (pipelining, or a smuggled answer).
        OK,
        # Only a few bytes after the end of the body.
        b"\r\n",
    ],
)
def test_bytes_after_a_response_are_never_pooled(extra: bytes, loop: str) -> None:
    """The response is used, but what follows it is never read as the next answer: the
    next request goes out on a new connection (RFC 9112 §9.3.2)."""
    fresh = b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"n":2}'
    results, connections = run_against([answering(OK + extra), answering(fresh)], 2, loop)
    assert results == [Response(200, b"{}"), Response(200, b'{"n":2}')]
    assert connections == 2


def test_bytes_on_an_idle_connection_close_it(loop: str) -> None:
    """Bytes that arrive after a response was handed over (nobody asked for them) close the
    pooled connection: the next request does not take them for its answer."""

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"forged"')
        await reader.read()

    async def main() -> tuple[list[Response], int]:
        fresh = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ntrue"
        server, url, handlers = await scripted([late, answering(fresh)])
        pool = Http1Pool(url)
        first = await pool.request("POST", "/x", b"{}")
        await asyncio.sleep(0.2)
        second = await pool.request("POST", "/x", b"{}")
        await pool.aclose()
        await asyncio.wait(handlers, timeout=5)
        await shut(server)
        return [first, second], len(handlers)

    results, connections = run(main(), loop)
    assert results == [Response(200, b"{}"), Response(200, b"true")]
    assert connections == 2


def test_cancellation_mid_response_closes_the_connection(loop: str) -> None:
    """A caller's timeout that fires after half a response, on a connection that already
    served one, closes it (the server sees the close) and the next request goes out on a
    new one."""
    seen_close: list[bytes] = []

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"a"')
        await writer.drain()
        seen_close.append(await reader.read())  # b"" once the client closed

    async def main() -> tuple[Response, bool, Response, int]:
        server, url, handlers = await scripted([half, answering(OK)])
        pool = Http1Pool(url)
        first = await pool.request("POST", "/x", b"{}")
        timed_out = False
        try:
            async with asyncio.timeout(0.2):
                await pool.request("POST", "/x", b"{}")
        except TimeoutError:
            timed_out = True
        await asyncio.wait(handlers[:1], timeout=5)
        again = await pool.request("POST", "/x", b"{}")
        await pool.aclose()
        await asyncio.wait(handlers, timeout=5)
        await shut(server)
        return first, timed_out, again, len(handlers)

    first, timed_out, again, connections = run(main(), loop)
    assert first == Response(200, b"{}")
    assert timed_out
    assert seen_close == [b""]
    assert again == Response(200, b"{}")
    assert connections == 2


@pytest.mark.parametrize(
    ("partial", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Le", "mid-response"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{"a"', "mid-response"),
        (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a"', "mid-response"),
        (b"", "before a response"),
    ],
)
def test_connection_closed_mid_head_or_mid_body_is_an_error(
    partial: bytes, reason: str, loop: str
) -> None:
    """A fresh connection that closes before the response is whole is an HttpError, never a
    short body."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(partial)
        await writer.drain()

    results, connections = run_against([cut], 1, loop)
    assert isinstance(results[0], HttpError)
    assert reason in str(results[0])
    assert connections == 1


def test_a_reset_pooled_connection_is_retried_on_a_fresh_one(loop: str) -> None:
    """A pooled connection the server resets (RST, not FIN) when the next request arrives
    is replaced transparently, like one it had closed."""

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await read_request(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    results, connections = run_against([reset, answering(OK)], 2, loop)
    assert results == [Response(200, b"{}"), Response(200, b"{}")]
    assert connections == 2


def endless(first: bytes, then: bytes) -> Script:
    """A connection answering with `first`, then `then` over and over until the client
    closes: a response with no end."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(first)
        try:
            while True:
                writer.write(then)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    return script


@pytest.mark.parametrize(
    ("first", "then", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\n", b"X-A: " + b"a" * 1000 + b"\r\n", "headers too large"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"%x\r\n%s\r\n" % (64 * 1024, b"b" * 64 * 1024),
            "body too large",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;", b"e" * 1024, "chunk size"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
            b"X-Trailer: " + b"t" * 1000 + b"\r\n",
            "trailers too large",
        ),
    ],
)
def test_an_endless_response_is_refused_at_the_limit(
    first: bytes, then: bytes, reason: str
) -> None:
    """A head, chunked body, chunk-size line or trailer section that never ends is an
    HttpError once it passes its limit (MAX_HEADER_BYTES, MAX_BODY_BYTES), not a buffer
    that grows until the timeout."""
    results, _ = run_against([endless(first, then)], 1)
    assert isinstance(results[0], HttpError)
    assert reason in str(results[0])


def test_unix_socket_keepalive(tmp_path: Path, loop: str) -> None:
    """`unix:///path` (OPA's Unix socket) carries several exchanges on one connection."""
    results, connections = run_against([answering(OK, OK)], 2, loop, path=tmp_path / "opa.sock")
    assert results == [Response(200, b"{}"), Response(200, b"{}")]
    assert connections == 1


@pytest.mark.parametrize("trusted", [True, False])
def test_https_verifies_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: bool, loop: str
) -> None:
    """https:// frames responses over TLS and pools the connection when the server's
    certificate chains to a trusted CA; an untrusted one fails at connect, twice."""
    from tests.harness import tls_files

    ca, cert, key = tls_files(tmp_path)
    # ssl.create_default_context() trusts what OpenSSL's default verify paths name.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca if trusted else tmp_path / "none.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    results, connections = run_against([answering(OK, OK)], 2, loop, tls=context)
    if trusted:
        assert results == [Response(200, b"{}"), Response(200, b"{}")]
        assert connections == 1
    else:
        assert all(isinstance(r, HttpError) and "connect failed" in str(r) for r in results)
        assert connections == 0
