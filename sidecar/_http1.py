"""A small, strict HTTP/1.1 client for one trusted upstream (OPA), with keep-alive pooling.

Why not aiohttp or httpx: one OPA decision over OPA's Unix socket through aiohttp costs
~250 µs (p50) and ~110 µs of CPU, against ~140 µs and ~30 µs for this plain keep-alive
exchange (docs/performance.md).
The upstream is a known server on loopback or a Unix socket, so the client only needs the
subset of HTTP/1.1 OPA speaks: requests with a Content-Length body, responses framed by
Content-Length or chunked encoding. Anything else is an error, never a guess.

It is still parsed as if an attacker wrote it (whoever can bind OPA's port or socket can):
each strictness rule names the RFC 9112 section it comes from. A response whose framing is
ambiguous is never pooled, so it cannot poison the next exchange on the connection.

The transport is an `asyncio.Protocol`: the bytes of a response are framed in
`data_received` as they arrive (usually all at once, straight from the read), and one future
per exchange is resolved when a whole response is framed. Against the asyncio streams it
replaced: same p50, 3 to 5 µs less CPU per exchange on uvloop, and every byte is seen by the
framing, so bytes nobody asked for close the connection (docs/performance.md, "The OPA
client's transport").
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 64 * 1024
"""The status line and header fields, and separately a chunk's size line and the trailers."""
MAX_BODY_BYTES = 4 * 1024 * 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
# RFC 9110 §5.6.2: a field name is a token; no whitespace, no separators.
TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
"""One character of a token (RFC 9110 §5.6.2); the HTTP listener's front reads field names
with it too (sidecar/http_front.py)."""
_TOKEN = re.compile(TCHAR + "+")
# RFC 9112 §3: request-target without spaces or controls (the sender side: we never send
# what a server could split into a second request, RFC 9112 §11.2).
_TARGET = re.compile(r"[\x21-\x7e]+")
# RFC 9112 §2.2 and §5: CR, LF and NUL are never part of a field value.
_FORBIDDEN_IN_VALUE = re.compile(r"[\r\n\x00]")

# Where the framing of the response in flight stands.
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS = range(5)


class HttpError(Exception):
    """Transport-level failure: connect, protocol or framing."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class _Head:
    status: int
    headers: dict[str, str]
    """Field names lower-cased; each name at most once."""
    reusable: bool
    """False when the connection must be closed after this response (never pooled)."""


class _StaleConnection(Exception):
    """A pooled connection the server had already closed; retried on another one."""


class _Conn(asyncio.Protocol):
    """One connection: frames the response to the request in flight as its bytes arrive.

    At most one exchange at a time (no pipelining). Bytes that arrive when no exchange
    waits for them, or after the end of the response, close the connection: whatever they
    are, the next exchange could not tell them from its own response (RFC 9112 §9.3.2)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        """What arrived of the response in flight and is not framed yet."""
        self._waiter: asyncio.Future[Response] | None = None
        self._received = False
        """Whether any byte of the response in flight arrived (a stale connection sends none)."""
        self.lost = False
        """Closed by either side, or no longer trusted: never reused."""
        self.reusable = False
        """Whether the last response left the connection fit for another exchange."""
        self._state = _HEAD
        self._scanned = 0
        """How much of `_buf` was searched for the separator the state waits for."""
        self._head: _Head | None = None
        self._need = 0
        self._chunks: list[bytes] = []
        self._total = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though not necessarily a subclass of asyncio.Transport
        # (uvloop's, which the sidecar runs on, are not).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Unsolicited bytes (an idle connection, or past the end of a response that was
            # already handed over): a pipelining or smuggling attempt, never pooled.
            self.close()
            return
        self._received = True
        buf: bytes | bytearray = data  # usually a whole response in one read: no copy
        if self._buf:
            self._buf += data
            buf = self._buf
        try:
            done, response = self._frame(buf)
        except HttpError as err:
            waiter.set_exception(err)
            self.close()
            return
        if response is None:
            if buf is self._buf:
                del buf[:done]
            else:
                self._buf += memoryview(data)[done:]
            return
        assert self._head is not None
        # Bytes after the response can only be an answer to no request (pipelining or a
        # smuggling attempt): the response is used, the connection closed.
        self.reusable = self._head.reusable and done == len(buf)
        self._buf.clear()
        self._waiter = None
        self._state = _HEAD
        self._head = None
        if not self.reusable:
            self.close()
        waiter.set_result(response)

    def eof_received(self) -> bool | None:
        self._lose(None)
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(exc)

    # The exchange

    def send(self, payload: bytes) -> asyncio.Future[Response]:
        """Write a request; the future resolves to its whole response."""
        assert self._transport is not None, "sent before connection_made"
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._received = False
        self.reusable = False
        self._transport.write(payload)
        return waiter

    def close(self) -> None:
        self._waiter = None
        self.lost = True
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def _lose(self, exc: BaseException | None) -> None:
        self.lost = True
        self.reusable = False
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if not self._received:
            # Nothing of the response: on a pooled connection, the server had closed it.
            stale = _StaleConnection("connection closed before a response")
            stale.__cause__ = exc
            waiter.set_exception(stale)
        elif exc is not None:  # incl. TLS errors mid-response
            error = HttpError(f"connection error: {exc}")
            error.__cause__ = exc
            waiter.set_exception(error)
        else:
            waiter.set_exception(HttpError("connection closed mid-response"))

    # Framing (RFC 9112 §6.3), over what has arrived so far

    def _frame(self, buf: bytes | bytearray) -> tuple[int, Response | None]:
        """How many bytes of `buf` are framed, and the whole response once it is."""
        pos = 0
        if self._state == _HEAD:
            end = self._find(buf, 0, b"\r\n\r\n", MAX_HEADER_BYTES, "response headers too large")
            if end < 0:
                return 0, None
            pos = end + 4
            head = self._head = _parse_head(bytes(buf[:pos]))
            if head.headers.get("transfer-encoding", "").lower() == "chunked":
                self._state = _CHUNK_SIZE
                self._chunks = []
                self._total = 0
            else:
                length = head.headers.get("content-length")
                if length is None or not (length.isascii() and length.isdigit()):
                    raise HttpError("response without Content-Length")
                n = int(length)
                if n > MAX_BODY_BYTES:
                    raise HttpError("response body too large")
                self._need = n
                self._state = _BODY
        if self._state == _BODY:
            end = pos + self._need
            if len(buf) < end:
                return pos, None
            assert self._head is not None
            return end, Response(self._head.status, bytes(buf[pos:end]))
        return self._frame_chunks(buf, pos)

    def _find(
        self, buf: bytes | bytearray, pos: int, separator: bytes, limit: int, too_long: str
    ) -> int:
        """Where `separator` starts in `buf` from `pos`, or -1 while it has not arrived.
        Flow control: never more than `limit` bytes held waiting for it; bytes already
        searched are not searched again (a response may arrive one byte per read)."""
        end = buf.find(separator, max(pos, self._scanned - len(separator) + 1))
        if end < 0:
            if len(buf) - pos >= limit:
                raise HttpError(too_long)
            self._scanned = len(buf) - pos  # the caller keeps buf[pos:] for the next read
            return -1
        self._scanned = 0
        if end - pos + len(separator) > limit:
            raise HttpError(too_long)
        return end

    def _frame_chunks(self, buf: bytes | bytearray, pos: int) -> tuple[int, Response | None]:
        while True:
            if self._state == _CHUNK_SIZE:
                end = self._find(buf, pos, b"\r\n", MAX_HEADER_BYTES, "malformed chunk size")
                if end < 0:
                    return pos, None
                digits = bytes(buf[pos:end]).split(b";", 1)[0].strip()
                pos = end + 2
                # RFC 9112 §7.1: hex digits only; int(..., 16) also takes "-1", "0x1f"
                # and "1_0".
                if not _HEX.fullmatch(digits):
                    raise HttpError("malformed chunk size")
                size = int(digits, 16)
                if size == 0:
                    self._state = _TRAILERS
                    self._total = 0  # now counts trailer bytes
                    continue
                self._total += size
                if self._total > MAX_BODY_BYTES:
                    raise HttpError("response body too large")
                self._need = size
                self._state = _CHUNK_DATA
            elif self._state == _CHUNK_DATA:
                end = pos + self._need
                if len(buf) < end + 2:
                    return pos, None
                if buf[end : end + 2] != b"\r\n":
                    raise HttpError("malformed chunk terminator")
                self._chunks.append(bytes(buf[pos:end]))
                pos = end + 2
                self._state = _CHUNK_SIZE
            else:
                # RFC 9112 §7.1.2: trailer fields, discarded; the section ends with an
                # empty line, and is bounded like a head.
                limit = MAX_HEADER_BYTES - self._total
                end = self._find(buf, pos, b"\r\n", limit, "response trailers too large")
                if end < 0:
                    return pos, None
                if end == pos:
                    assert self._head is not None
                    return end + 2, Response(self._head.status, b"".join(self._chunks))
                self._total += end + 2 - pos
                pos = end + 2


def _request_bytes(method: str, path: str, host: str, body: bytes, content_type: str) -> bytes:
    """The whole request, refused before anything is sent if a field could split it."""
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(path):
        raise HttpError("refusing to send a malformed request line")
    if _FORBIDDEN_IN_VALUE.search(content_type):
        raise HttpError("refusing to send CR, LF or NUL in a header value")
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Accept: application/json\r\n\r\n"
    ).encode("ascii")
    return head + body


def _parse_head(head: bytes) -> _Head:
    """Status and headers of a head ending in an empty line, and whether the connection
    may carry another exchange."""
    if len(head) > MAX_HEADER_BYTES:
        raise HttpError("response headers too large")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    # RFC 9112 §4: HTTP-version SP 3DIGIT SP [reason-phrase]
    if (
        len(parts) < 2
        or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise HttpError("malformed status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        text = line.decode("latin-1")
        name, sep, value = text.partition(":")
        # RFC 9112 §5.1: no whitespace between the name and the colon ("a server MUST
        # reject"; a client facing a hostile upstream does the same). A leading space is
        # obsolete line folding (RFC 9112 §5.2), refused too.
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpError("malformed header line")
        # A bare CR or LF (the head is split on CRLF only) would let one line carry two
        # fields to a lenient parser; NUL never belongs (RFC 9112 §2.2, RFC 9110 §5.5).
        if _FORBIDDEN_IN_VALUE.search(value):
            raise HttpError("control character in a header value")
        key = name.lower()
        # A repeated field (above all Content-Length, RFC 9112 §6.3 item 5) is how
        # responses get split; OPA never repeats one, so any repeat is an error.
        if key in headers:
            raise HttpError(f"duplicate header {key!r}")
        headers[key] = value.strip(" \t")
    chunked = "transfer-encoding" in headers
    if chunked and headers["transfer-encoding"].lower() != "chunked":
        # RFC 9112 §6.3 item 4: any other coding is framed by the connection's close.
        raise HttpError("unsupported Transfer-Encoding")
    http10 = parts[0] == b"HTTP/1.0"
    if http10 and chunked:
        # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
        raise HttpError("Transfer-Encoding in an HTTP/1.0 response")
    reusable = (
        # RFC 9112 §9.3: HTTP/1.0 has no persistent connection we rely on.
        not http10
        # RFC 9112 §6.3 item 3: both framings may be a smuggling attempt; the chunked
        # framing wins for this response, and the connection is not trusted again.
        and not (chunked and "content-length" in headers)
        and headers.get("connection", "").lower() != "close"
    )
    return _Head(int(parts[1]), headers, reusable)


class Http1Pool:
    """Keep-alive connections to one origin: `http://host:port`, `https://…` or `unix:///path`."""

    def __init__(self, url: str, *, max_idle: int = 64) -> None:
        parts = urlsplit(url)
        self._unix_path: str | None = None
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "unix":
            self._unix_path = parts.path
            self._host_header = "localhost"
        elif parts.scheme in ("http", "https"):
            if not parts.hostname:
                raise ValueError(f"no host in {url!r}")
            self._host = parts.hostname
            self._port = parts.port or (443 if parts.scheme == "https" else 80)
            self._host_header = parts.netloc
            if not _TARGET.fullmatch(self._host_header):
                raise ValueError(f"unusable host in {url!r}")
            if parts.scheme == "https":
                self._ssl = ssl.create_default_context()
        else:
            raise ValueError(f"unsupported scheme in {url!r}")
        self._idle: deque[_Conn] = deque()
        self._max_idle = max_idle

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            if self._unix_path is not None:
                _, conn = await loop.create_unix_connection(_Conn, self._unix_path)
            else:
                _, conn = await loop.create_connection(_Conn, self._host, self._port, ssl=self._ssl)
        except OSError as err:  # incl. a failed TLS handshake
            raise HttpError(f"connect failed: {err.strerror or err}") from err
        return conn

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> Response:
        """One request; the caller bounds it with a timeout. Reuses an idle connection and
        retries once on a fresh one if the reused connection turns out to be closed."""
        payload = _request_bytes(method, path, self._host_header, body, content_type)
        while self._idle:
            conn = self._idle.pop()
            if conn.lost:
                continue
            try:
                return await self._exchange(conn, payload)
            except _StaleConnection:
                break  # the others are likely as old: straight to a fresh one
        try:
            return await self._exchange(await self._connect(), payload)
        except _StaleConnection as err:
            raise HttpError(str(err)) from err.__cause__

    async def _exchange(self, conn: _Conn, payload: bytes) -> Response:
        try:
            return await conn.send(payload)
        finally:
            # Not reusable unless a whole response was framed, with nothing after it: a
            # cancelled exchange (the caller's timeout) may still have bytes on the way.
            if conn.reusable and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                conn.close()

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()
