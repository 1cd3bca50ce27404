"""Each connection of the HTTP listener, and its lean path for AuthZEN evaluations.

Why: a gateway asks for an AuthZEN decision on every request it lets through, so what the
sidecar adds to OPA's own decision is latency on each of them. aiohttp's per-request path
(request and response objects, router, middlewares, payload streams) was about a third of
the sidecar's CPU per evaluation (docs/performance.md, "AuthZEN").

How: a connection starts on the **front**. A request the front fully understands is answered
here: `POST /access/v1/evaluation` or `/access/v1/evaluations`, `HTTP/1.1`, framed by one
`Content-Length`, `application/json`, carrying the listener's credential and a usable
`X-Request-ID` if any. At the first request that is anything else, the connection is handed
to aiohttp with every byte it sent that was not answered yet, and aiohttp serves it from then
on. So the front never refuses a message it does not understand: it steps aside, and every
error answer about the HTTP message (malformed, unauthorized, too large, wrong type) and every
other endpoint comes from one place, the aiohttp app. The front accepts only messages whose
framing is unambiguous (RFC 9112 §6.3: one Content-Length, no Transfer-Encoding), so it cannot
read a message boundary differently from aiohttp.

Limits, as on aiohttp's path (sidecar/http.py): a request head must be complete within
`header_timeout` of the connection opening or of the previous answer, also across the hand-over
(the front's deadline still holds until aiohttp has a request); the body within `body_timeout`
of the head (408). The listener's cap sees a connection as busy from a complete head to its
answer. While a request is being answered, and while its answer is backed up (the transport
paused writing), the front reads and decides no more on the connection: a client pipelining
requests it never reads answers to holds at most one read's worth of them, and one answer
beyond the transport's high-water mark. Reading always resumes before a hand-over, since
aiohttp resumes only what it paused itself.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol, cast

from ._http1 import TCHAR

log = logging.getLogger("jit_sidecar.http")

MAX_HEAD_BYTES = 8190
"""A longer head goes to aiohttp, whose own limits answer it. aiohttp refuses a field name or
value over 8190 bytes (400); a head within this many cannot hold one, so the front answers
no request aiohttp would refuse, without measuring each line."""
MAX_HEADERS = 64
_PREFIX = b"POST /access/v1/evaluation"
# Field lines, each but the last ending in CRLF: RFC 9110 §5.1, a field name is a token;
# §5.5, a field value is VCHAR, SP, HTAB and obs-text, of which the front takes visible ASCII,
# SP and HTAB only, so it decodes nothing aiohttp might decode otherwise.
_FIELD_LINE = TCHAR.encode() + rb"+:[\t\x20-\x7e]*"
_FIELD_LINES = re.compile(rb"%s(?:\r\n%s)*" % (_FIELD_LINE, _FIELD_LINE))
# RFC 9110 §7.2 / RFC 3986 §3.2.2: host [":" port]; echoed into URLs, so nothing else.
_HOST = re.compile(r"(?:[A-Za-z0-9.\-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")
_DIGITS = re.compile(rb"[0-9]{1,9}")
# Fields whose presence changes framing, the body or the connection (RFC 9112 §6.1, §9.6;
# RFC 9110 §10.1.1, §7.8, §8.4: aiohttp decodes a gzip, deflate, br or zstd body): aiohttp's.
_STEP_ASIDE = frozenset(
    (b"transfer-encoding", b"content-encoding", b"expect", b"upgrade", b"http2-settings")
)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


Route = Callable[[bytes, "str | None", str], Awaitable[Answer]]
"""(body, X-Request-ID, base URL) → the answer; it raises nothing for bad input (a 400 is an
answer). The body is at most `Front.max_body` bytes and says it is application/json."""


@dataclass(frozen=True, slots=True)
class Front:
    """What the front serves: routes by exact path, the credential check, the limits."""

    routes: Mapping[bytes, Route]
    authorized: Callable[[str], bool]
    """True for an `Authorization` header value that carries the listener's credential."""
    request_id_ok: Callable[[str], bool]
    max_body: int
    body_timeout: float
    body_timed_out: Answer
    """The answer to a body that did not arrive within `body_timeout` (408)."""


class Listener(Protocol):
    """What a connection tells its listener (sidecar/http.py `HttpListener`), declared here
    so that this module does not import the listener's (an import cycle through authzen)."""

    header_timeout: float
    answering: set[asyncio.Task[None]]
    """Requests the front is answering (the listener waits for them at shutdown)."""

    def _opened(self, conn: Connection) -> None: ...

    def _closed(self, conn: Connection) -> None: ...

    def _idle(self, conn: Connection) -> None: ...


@dataclass(frozen=True, slots=True)
class Request:
    """A request head the front serves: its route, framing and the fields it uses."""

    route: Route
    head_length: int
    body_length: int
    request_id: str | None
    base: str
    close: bool


class Connection(asyncio.Protocol):
    """One admitted connection: on the front (when the listener has one) until it hands over
    to aiohttp's protocol, which it then forwards to. Tells the listener when it opens, ends,
    and starts or finishes a request."""

    __slots__ = (
        "_buffer",
        "_deadline",
        "_eof",
        "_front",
        "_inner",
        "_listener",
        "_make_inner",
        "_pending",
        "_serving",
        "_started_at_handover",
        "_writing_paused",
        "busy",
        "started",
        "transport",
    )

    def __init__(
        self,
        make_inner: Callable[[], asyncio.Protocol],
        listener: Listener,
        front: Front | None,
    ) -> None:
        self._make_inner = make_inner
        self._inner: asyncio.Protocol | None = None
        self._listener = listener
        self._front = front
        self.busy = 0
        """Requests being handled (a connection with none is idle: evictable)."""
        self.started = 0
        """Requests aiohttp began to handle (the front's deadline watches it after a hand-over)."""
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: Request | None = None
        """A complete head whose body is still arriving."""
        self._serving = False
        self._eof = False
        self._writing_paused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._started_at_handover = -1

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)
        self._listener._opened(self)
        if self._front is None:
            self._hand_over()
        else:
            self._arm(self._listener.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener._closed(self)
        self._disarm()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._buffer += data
        if not self._serving:
            self._next()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        self._eof = True
        # Keep the transport open only to send the answer being prepared; an unfinished
        # request is dropped, as aiohttp drops it.
        return True if self._serving else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._inner is not None:
            self._inner.resume_writing()
        elif not self._serving and self.transport is not None and not self.transport.is_closing():
            # The front paused reading when it took its last request: read and decide on.
            self.transport.resume_reading()
            self._next()

    # ------------------------------------------------------------------ the front
    def _next(self) -> None:
        """Read what the buffer holds: answer a complete request, wait for more, or step
        aside."""
        assert self._front is not None
        assert self.transport is not None
        if self._pending is None:
            buffer = self._buffer
            if not buffer:
                return
            if not buffer.startswith(_PREFIX) and not _PREFIX.startswith(buffer):
                self._hand_over()
                return
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
            if end < 0:
                if len(buffer) >= MAX_HEAD_BYTES:
                    self._hand_over()
                return
            request = parse_head(self._front, bytes(buffer[:end]), end + 4)
            if request is None:
                self._hand_over()
                return
            self._pending = request
            self.busy += 1  # as on aiohttp's path: busy from a complete head
            self._arm(self._front.body_timeout, self._body_timed_out)
        request = self._pending
        end = request.head_length + request.body_length
        if len(self._buffer) < end:
            return
        self._disarm()
        self._pending = None
        body = bytes(self._buffer[request.head_length : end])
        del self._buffer[:end]
        self._serving = True
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._serve(request, body))
        answering = self._listener.answering  # a strong reference until it is done
        answering.add(task)
        task.add_done_callback(answering.discard)

    async def _serve(self, request: Request, body: bytes) -> None:
        close = request.close
        try:
            answer = await request.route(body, request.request_id, request.base)
        except Exception:  # a bug: logged with its traceback, answered without one
            log.exception("AuthZEN evaluation failed", extra={"reason": "internal"})
            answer = Answer(500, b'{"error":"server_error"}')
            close = True
        transport = self.transport
        self.busy -= 1
        self._listener._idle(self)
        self._serving = False
        if transport is None or transport.is_closing():
            return
        transport.write(_response(answer, request.request_id, close))
        if close or self._eof:
            transport.close()
            return
        self._arm(self._listener.header_timeout, self._head_timed_out)
        if not self._writing_paused:  # else resume_writing goes on
            transport.resume_reading()
            self._next()

    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, starting with the unanswered bytes."""
        assert self.transport is not None
        inner = self._inner = self._make_inner()
        self._started_at_handover = self.started
        inner.connection_made(self.transport)
        if self._writing_paused:
            inner.pause_writing()
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            inner.data_received(data)

    # ------------------------------------------------------------------ deadlines
    def _arm(self, delay: float, then: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(delay, then)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        """No whole request head in time: closed, as aiohttp closes it. After a hand-over,
        only while aiohttp has not begun a request either."""
        self._deadline = None
        if self._inner is not None and (self.started != self._started_at_handover or self.busy):
            return
        if self.transport is not None:
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport is None or self._pending is None or self._inner is not None:
            return
        self._pending = None
        self.busy -= 1
        self._listener._idle(self)
        assert self._front is not None
        self.transport.write(_response(self._front.body_timed_out, None, True))
        self.transport.close()


def parse_head(front: Front, head: bytes, head_length: int) -> Request | None:
    """The request `head` (without its final CRLF CRLF) asks for, when the front serves it
    exactly; else None: the connection is then aiohttp's. Whatever this accepts, aiohttp's
    parser reads with the same framing and fields (tests/fuzz/test_http_front_fuzz.py)."""
    lines = head.split(b"\r\n")
    # RFC 9112 §3: method SP request-target SP HTTP-version. Only origin-form targets
    # equal to a route: no query, no absolute-form, no trailing slash.
    method, _, rest = lines[0].partition(b" ")
    target, _, version = rest.partition(b" ")
    route = front.routes.get(target)
    if method != b"POST" or route is None or version != b"HTTP/1.1":
        return None
    if len(lines) > MAX_HEADERS + 1:
        return None
    # RFC 9112 §5.1: no whitespace before the colon; §5.2: no obs-fold (a line starting
    # with whitespace has no token before its colon). A bare CR or LF inside a line, NUL
    # or any other control (RFC 9112 §2.2) is not in a value either. One match for all.
    if not _FIELD_LINES.fullmatch(head, len(lines[0]) + 2):
        return None
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.lower()
        if key in _STEP_ASIDE or key in fields:
            return None  # a repeated field is aiohttp's to combine or refuse
        fields[key] = value.strip(b" \t")
    length = fields.get(b"content-length")
    if length is None or not _DIGITS.fullmatch(length) or int(length) > front.max_body:
        return None
    media = fields.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    if media != b"application/json":
        return None
    host = fields.get(b"host", b"").decode("ascii")
    if not _HOST.fullmatch(host):
        return None  # RFC 9112 §3.2: a request without a usable Host is aiohttp's 400
    if not front.authorized(fields.get(b"authorization", b"").decode("ascii")):
        return None  # aiohttp's path answers 401 with the challenge
    request_id: str | None = None
    if b"x-request-id" in fields:
        request_id = fields[b"x-request-id"].decode("ascii")
        if not front.request_id_ok(request_id):
            return None
    tokens = {t.strip().lower() for t in fields.get(b"connection", b"").split(b",")}
    if not tokens <= {b"", b"close", b"keep-alive"}:
        return None  # other connection options name hop-by-hop fields: aiohttp's
    return Request(
        route=route,
        head_length=head_length,
        body_length=int(length),
        request_id=request_id,
        base="http://" + host,
        close=b"close" in tokens,
    )


_dates: tuple[int, bytes] = (0, b"")


@functools.cache
def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode())


def _response(answer: Answer, request_id: str | None, close: bool) -> bytes:
    """The HTTP/1.1 response (RFC 9112 §4), Date included (RFC 9110 §6.6.1)."""
    global _dates
    loop_time = int(asyncio.get_running_loop().time())
    if _dates[0] != loop_time:
        _dates = (loop_time, formatdate(usegmt=True).encode())
    head = [
        _status_line(answer.status),
        b"Content-Type: " + answer.content_type.encode(),
        b"Content-Length: %d" % len(answer.body),
        b"Date: " + _dates[1],
    ]
    if request_id is not None:
        head.append(b"X-Request-ID: " + request_id.encode("ascii"))  # AuthZEN §10.1.3
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + answer.body
