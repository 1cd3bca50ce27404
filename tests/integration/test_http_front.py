"""The HTTP listener's lean front (sidecar/http_front.py) under hostile clients: it answers
AuthZEN evaluations exactly as aiohttp's path does, and hands anything else, bytes intact, to
aiohttp, so a request framed or refused one way on a fresh connection is framed or refused
the same way on a connection aiohttp already serves.

Real sidecar processes, the real `opa` binary, real TCP sockets (tests/harness.py); raw
sockets where a client library would not send the bytes. "Fresh" below is a connection
whose first request the front reads; "handed over" is one that sent `GET /healthz` first,
so aiohttp reads everything after it: the reference answer.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import OpaServer, SidecarProcess, running

pytestmark = pytest.mark.integration

DEV = "spiffe://jit.local/agent/dev"
PERMIT = {
    "subject": {"type": "agent", "id": DEV},
    "action": {"name": "docs.read"},
    "resource": {"type": "uri", "id": "docs://handbook/front"},
}
DENY = {
    "subject": {"type": "agent", "id": DEV},
    "action": {"name": "payments.refund"},
    "resource": {"type": "uri", "id": "payments://orders/42"},
}
BATCH = {
    "subject": {"type": "agent", "id": DEV},
    "resource": {"type": "uri", "id": "docs://handbook/front"},
    "evaluations": [{"action": {"name": "docs.read"}}, {"action": {"name": "docs.teleport"}}],
}


# ---------------------------------------------------------------------- raw HTTP/1.1
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    sidecar: SidecarProcess,
    document: Any = PERMIT,
    *,
    path: str = "/access/v1/evaluation",
    rid: str | None = None,
    headers: str = "",
    body: bytes | None = None,
    auth: bool = True,
) -> bytes:
    """A well-formed evaluation request, or one with `headers` (raw lines) and `body` added."""
    payload = body if body is not None else json.dumps(document).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{sidecar.http_port}\r\n"
    head += "Content-Type: application/json\r\n"
    if auth:
        head += f"Authorization: {sidecar.http_auth['Authorization']}\r\n"
    if rid is not None:
        head += f"X-Request-ID: {rid}\r\n"
    head += headers
    if "content-length" not in headers.lower():
        head += f"Content-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def connect(sidecar: SidecarProcess, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", sidecar.http_port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Reader:
    """Reads HTTP/1.1 responses (each framed by Content-Length) off one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if self.eof or remaining <= 0:
            return False
        ready, _, _ = select.select([self.sock], [], [], remaining)
        if not ready:
            return False
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def reply(self, timeout: float = 10) -> Reply | None:
        """The next response, or None at EOF or after `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline):
                return None
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if 100 <= status < 200 else int(headers.get("content-length", "0"))
        while len(rest) < length:
            if not self._fill(deadline):
                return None
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.buffer = rest[length:]
        return Reply(status, headers, rest[:length])

    def replies(self, count: int, timeout: float = 10) -> list[Reply]:
        out: list[Reply] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            reply = self.reply(max(0.0, deadline - time.monotonic()))
            if reply is None:
                break
            out.append(reply)
        return out

    def closed(self, within: float) -> bool:
        """True once the peer closes within `within` seconds (data before is kept)."""
        deadline = time.monotonic() + within
        while not self.eof and time.monotonic() < deadline:
            self._fill(deadline)
        return self.eof


def handed_over(sidecar: SidecarProcess) -> tuple[socket.socket, Reader]:
    """A connection aiohttp serves: its first request was not one the front answers."""
    sock = connect(sidecar)
    sock.sendall(HEALTHZ)
    reader = Reader(sock)
    reply = reader.reply()
    assert reply is not None and reply.status == 200
    return sock, reader


def exchange(
    sidecar: SidecarProcess, data: bytes, *, fresh: bool, count: int, expect: int | None = None
) -> list[Reply]:
    """Send `data` in one write on a fresh or handed-over connection; up to `count` answers
    (fewer when the sidecar closes the connection). With `expect`, the answers beyond the
    first `expect` get a second each, not six: one a desynchronised connection sends comes
    at once."""
    expect = count if expect is None else expect
    if fresh:
        sock = connect(sidecar)
        reader = Reader(sock)
    else:
        sock, reader = handed_over(sidecar)
    try:
        sock.sendall(data)
        out = reader.replies(expect, timeout=6)
        while len(out) == expect < count:
            extra = reader.reply(timeout=1)
            if extra is None:
                break
            out.append(extra)
            expect += 1
        return out
    finally:
        sock.close()


def comparable(replies: list[Reply]) -> list[tuple[int, str | None, str | None, str | None, Any]]:
    """What must not differ between the front and aiohttp (Date and Server may)."""
    out = []
    for r in replies:
        try:
            body: Any = r.json()
        except ValueError:
            body = r.body
        h = r.headers
        out.append(
            (r.status, h.get("content-type"), h.get("x-request-id"), h.get("connection"), body)
        )
    return out


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[SidecarProcess]:
    """A sidecar with an HTTP credential, deciding AuthZEN requests with the shipped policy."""
    with running(SidecarProcess(tmp_path_factory.mktemp("front"), opa.url)) as sidecar:
        yield sidecar


@pytest.fixture(scope="module")
def expected(front: SidecarProcess) -> dict[str, Any]:
    """The answers aiohttp's path gives to PERMIT, DENY and BATCH (the reference)."""
    out = {}
    for name, document, path in (
        ("permit", PERMIT, "/access/v1/evaluation"),
        ("deny", DENY, "/access/v1/evaluation"),
        ("batch", BATCH, "/access/v1/evaluations"),
    ):
        (reply,) = exchange(front, request(front, document, path=path), fresh=False, count=1)
        assert reply.status == 200
        out[name] = reply.json()
    assert out["permit"]["decision"] is True
    assert out["deny"]["decision"] is False
    return out


# ---------------------------------------------------------------------- same answers
@pytest.mark.parametrize(
    ("document", "path"),
    [
        (PERMIT, "/access/v1/evaluation"),
        (DENY, "/access/v1/evaluation"),
        (BATCH, "/access/v1/evaluations"),
        (PERMIT, "/access/v1/evaluations"),
    ],
)
def test_front_answers_as_aiohttp_does(
    front: SidecarProcess, document: dict[str, Any], path: str
) -> None:
    """An evaluation answered by the front has the status, decision and context, X-Request-ID
    echo, Content-Type and Content-Length that aiohttp's path gives the same request."""
    data = request(front, document, path=path, rid="req-same-1")
    by_front = exchange(front, data, fresh=True, count=1)
    by_aiohttp = exchange(front, data, fresh=False, count=1)
    assert len(by_front) == 1
    assert comparable(by_front) == comparable(by_aiohttp)
    assert by_front[0].status == 200
    assert by_front[0].headers["x-request-id"] == "req-same-1"
    assert by_front[0].headers["content-type"] == "application/json"
    assert int(by_front[0].headers["content-length"]) == len(by_front[0].body)
    assert "date" in by_front[0].headers


def test_front_decisions_are_audited_like_aiohttps(front: SidecarProcess) -> None:
    """An evaluation the front answers leaves one `authzen_decision` record with its request
    id, as one answered by aiohttp does."""
    before = len(front.events("authzen_decision"))
    exchange(front, request(front, PERMIT, rid="req-audit-front"), fresh=True, count=1)
    exchange(front, request(front, PERMIT, rid="req-audit-aio"), fresh=False, count=1)
    records = front.events("authzen_decision")[before:]
    assert [(r["request_id"], r["decision"]) for r in records] == [
        ("req-audit-front", True),
        ("req-audit-aio", True),
    ]


# ---------------------------------------------------------------------- keep-alive, pipelining
def test_many_evaluations_on_one_connection(
    front: SidecarProcess, expected: dict[str, Any]
) -> None:
    """Forty evaluations one after another on one kept-alive connection each get their own
    answer and request id."""
    sock = connect(front)
    reader = Reader(sock)
    got = []
    for i in range(40):
        document = PERMIT if i % 2 == 0 else DENY
        sock.sendall(request(front, document, rid=f"ka-{i}"))
        reply = reader.reply()
        assert reply is not None, i
        got.append((reply.status, reply.headers.get("x-request-id"), reply.json()))
    sock.close()
    assert got == [
        (200, f"ka-{i}", expected["permit"] if i % 2 == 0 else expected["deny"]) for i in range(40)
    ]


def test_pipelined_evaluations_in_one_send_are_answered_in_order(
    front: SidecarProcess, expected: dict[str, Any]
) -> None:
    """Twelve evaluations written in one send() get twelve answers, in order, each with its
    own decision and request id."""
    documents = [PERMIT if i % 3 else DENY for i in range(12)]
    data = b"".join(request(front, d, rid=f"pipe-{i}") for i, d in enumerate(documents))
    replies = exchange(front, data, fresh=True, count=12)
    assert [(r.status, r.headers.get("x-request-id"), r.json()) for r in replies] == [
        (200, f"pipe-{i}", expected["permit"] if d is PERMIT else expected["deny"])
        for i, d in enumerate(documents)
    ]


def test_pipelined_evaluation_introspect_evaluation(
    front: SidecarProcess, expected: dict[str, Any]
) -> None:
    """An evaluation, an /introspect and another evaluation in one send() are answered in
    order: the front answers the first, aiohttp the other two from the bytes handed over."""
    form = b"token=not-a-token"
    introspect = (
        f"POST /introspect HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {front.http_auth['Authorization']}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(form)}\r\n\r\n"
    ).encode() + form
    data = request(front, PERMIT, rid="a") + introspect + request(front, DENY, rid="c")
    replies = exchange(front, data, fresh=True, count=3)
    assert [r.status for r in replies] == [200, 200, 200]
    assert replies[0].json() == expected["permit"]
    assert replies[0].headers["x-request-id"] == "a"
    assert replies[1].json() == {"active": False}
    assert replies[2].json() == expected["deny"]
    assert replies[2].headers["x-request-id"] == "c"


def test_request_split_byte_by_byte(front: SidecarProcess, expected: dict[str, Any]) -> None:
    """An evaluation written one byte per send(), head and body, is answered once whole."""
    sock = connect(front)
    reader = Reader(sock)
    for byte in request(front, DENY, rid="bytes"):
        sock.send(bytes([byte]))
        time.sleep(0.001)
    reply = reader.reply()
    sock.close()
    assert reply is not None
    assert (reply.status, reply.headers["x-request-id"], reply.json()) == (
        200,
        "bytes",
        expected["deny"],
    )


# ---------------------------------------------------------------------- framing and smuggling
def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


SMUGGLED = json.dumps(DENY).encode()


def framing_cases(sidecar: SidecarProcess) -> dict[str, bytes]:
    """Requests the front must not answer itself: each differs from a plain evaluation in
    one way that aiohttp answers (or frames) on its own terms."""
    auth = sidecar.http_auth["Authorization"]
    body = json.dumps(PERMIT).encode()
    plain = request(sidecar, PERMIT, rid="bad")
    head, _, _ = plain.partition(b"\r\n\r\n")
    no_length = b"\r\n".join(
        line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-length")
    )
    assert no_length != head

    def with_lines(*lines: str, payload: bytes = body) -> bytes:
        extra = "".join(line + "\r\n" for line in lines).encode()
        return no_length + b"\r\n" + extra + b"\r\n" + payload

    return {
        "cl_and_te": with_lines(
            f"Content-Length: {len(_chunked(SMUGGLED))}",
            "Transfer-Encoding: chunked",
            payload=_chunked(SMUGGLED),
        ),
        "te_chunked": with_lines("Transfer-Encoding: chunked", payload=_chunked(body)),
        "two_lengths_equal": with_lines(
            f"Content-Length: {len(body)}", f"Content-Length: {len(body)}"
        ),
        "two_lengths_differ": with_lines(
            f"Content-Length: {len(body)}", f"Content-Length: {len(body) + 5}"
        ),
        "obs_fold": with_lines(f"Content-Length: {len(body)}", "X-Note: a", " folded"),
        "bare_lf": plain.replace(b"\r\n", b"\n", 3),
        "space_before_colon": with_lines(f"Content-Length : {len(body)}"),
        "nul_in_value": with_lines(f"Content-Length: {len(body)}", "X-Note: a\x00b"),
        "length_with_sign": with_lines(f"Content-Length: +{len(body)}"),
        "length_in_hex": with_lines(f"Content-Length: 0x{len(body):x}"),
        "length_too_large": with_lines("Content-Length: 99999999999999999999"),
        "length_over_limit": with_lines(f"Content-Length: {256 * 1024 + 1}"),
        "http_1_0": plain.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1),
        "absolute_form": plain.replace(
            b"POST /access", f"POST http://127.0.0.1:{sidecar.http_port}/access".encode(), 1
        ),
        "query_string": plain.replace(b"/evaluation ", b"/evaluation?x=1 ", 1),
        "lower_case_method": plain.replace(b"POST ", b"post ", 1),
        "expect_continue": with_lines(f"Content-Length: {len(body)}", "Expect: 100-continue"),
        "connection_upgrade": with_lines(
            f"Content-Length: {len(body)}", "Connection: Upgrade", "Upgrade: websocket"
        ),
        "content_encoding_gzip": with_lines(
            f"Content-Length: {len(gzip.compress(body))}",
            "Content-Encoding: gzip",
            payload=gzip.compress(body),
        ),
        "header_line_over_aiohttp_limit": with_lines(
            f"Content-Length: {len(body)}", "X-Pad: " + "a" * 9000
        ),
        "no_host": plain.replace(f"Host: 127.0.0.1:{sidecar.http_port}\r\n".encode(), b"", 1),
        "trailing_slash": plain.replace(b"/evaluation ", b"/evaluation/ ", 1),
        "control_in_auth": plain.replace(auth.encode(), auth.encode() + b"\x01", 1),
    }


CASES = [
    "cl_and_te",
    "te_chunked",
    "two_lengths_equal",
    "two_lengths_differ",
    "obs_fold",
    "bare_lf",
    "space_before_colon",
    "nul_in_value",
    "length_with_sign",
    "length_in_hex",
    "length_too_large",
    "length_over_limit",
    "http_1_0",
    "absolute_form",
    "query_string",
    "lower_case_method",
    "expect_continue",
    "connection_upgrade",
    "content_encoding_gzip",
    "header_line_over_aiohttp_limit",
    "no_host",
    "trailing_slash",
    "control_in_auth",
]


@pytest.mark.parametrize("case", CASES)
def test_framing_differs_nowhere_from_aiohttp(
    front: SidecarProcess, expected: dict[str, Any], case: str
) -> None:
    """A request that is not a plain evaluation, followed by a plain one in the same send(),
    gets on a fresh connection exactly the answers aiohttp gives on a connection it already
    serves; the follow-up, when answered, is answered as itself (no desynchronisation)."""
    data = framing_cases(front)[case] + request(front, DENY, rid="follow")
    by_front = exchange(front, data, fresh=True, count=3, expect=2)
    by_aiohttp = exchange(front, data, fresh=False, count=3, expect=2)
    assert comparable(by_front) == comparable(by_aiohttp)
    assert by_front, "no answer at all"
    for reply in by_front:
        if reply.headers.get("x-request-id") == "follow":
            assert (reply.status, reply.json()) == (200, expected["deny"])
        if reply.status == 200 and reply.headers.get("x-request-id") == "bad":
            # Only a request aiohttp frames as this very evaluation may be decided.
            assert reply.json() == expected["permit"], case


# ---------------------------------------------------------------------- refusals
def test_refusals_are_aiohttps(front: SidecarProcess) -> None:
    """Without or with a wrong credential (401 with WWW-Authenticate), a bad X-Request-ID, a
    wrong Content-Type, a body over 256 KiB, a non-UTF-8 or non-JSON body: the answer on a
    fresh connection is the one aiohttp gives, with its reason code."""
    big = b'{"pad": "' + b"a" * (256 * 1024) + b'"}'
    cases = {
        "no_credential": (request(front, PERMIT, auth=False), 401, None),
        "wrong_credential": (
            request(
                front, PERMIT, auth=False, headers="Authorization: Bearer guess-0123456789\r\n"
            ),
            401,
            None,
        ),
        "bad_request_id": (request(front, PERMIT, rid="a\tb"), 400, "invalid_request_id"),
        "long_request_id": (request(front, PERMIT, rid="r" * 257), 400, "invalid_request_id"),
        "wrong_type": (
            request(front, PERMIT).replace(b"application/json", b"text/plain", 1),
            400,
            "content_type",
        ),
        "too_large": (request(front, body=big), 400, "body_too_large"),
        "not_utf8": (request(front, body=b'{"a": "\xff"}'), 400, "not_utf8"),
        "bad_json": (request(front, body=b'{"a": '), 400, "bad_json"),
        "not_an_object": (request(front, body=b"[1]"), 400, "bad_json"),
    }
    got = {}
    for name, (data, _, _) in cases.items():
        by_front = exchange(front, data, fresh=True, count=1)
        by_aiohttp = exchange(front, data, fresh=False, count=1)
        assert comparable(by_front) == comparable(by_aiohttp), name
        assert by_front, name
        got[name] = by_front[0]
    for name, (_, status, reason) in cases.items():
        assert got[name].status == status, name
        if status == 401:
            assert got[name].headers["www-authenticate"].startswith("Bearer"), name
        else:
            assert got[name].json()["reason"] == reason, name


# ---------------------------------------------------------------------- connection handling
def test_connection_close_is_honoured(front: SidecarProcess, expected: dict[str, Any]) -> None:
    """An evaluation with `Connection: close` is answered with `Connection: close`, then the
    sidecar closes; an evaluation pipelined after it is not answered."""
    sock = connect(front)
    reader = Reader(sock)
    sock.sendall(request(front, PERMIT, headers="Connection: close\r\n") + request(front, DENY))
    replies = reader.replies(2, timeout=5)
    closed = reader.closed(5)
    sock.close()
    assert [(r.status, r.json()) for r in replies] == [(200, expected["permit"])]
    assert replies[0].headers["connection"] == "close"
    assert closed


def test_client_eof_after_the_request_still_gets_the_answer(
    front: SidecarProcess, expected: dict[str, Any]
) -> None:
    """A client that half-closes right after its evaluations still gets every answer, then
    the sidecar closes."""
    sock = connect(front)
    reader = Reader(sock)
    sock.sendall(request(front, PERMIT, rid="eof-1") + request(front, DENY, rid="eof-2"))
    sock.shutdown(socket.SHUT_WR)
    replies = reader.replies(2, timeout=5)
    closed = reader.closed(5)
    sock.close()
    assert [(r.headers["x-request-id"], r.json()) for r in replies] == [
        ("eof-1", expected["permit"]),
        ("eof-2", expected["deny"]),
    ]
    assert closed


# ---------------------------------------------------------------------- timeouts
@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, opa: OpaServer) -> Iterator[SidecarProcess]:
    """A sidecar with a 4 s header timeout and a 1 s body timeout."""
    process = SidecarProcess(
        tmp_path_factory.mktemp("quick"),
        opa.url,
        "--http-header-timeout",
        "4",
        "--http-body-timeout",
        "1",
    )
    with running(process) as sidecar:
        yield sidecar


def dribble(
    sock: socket.socket, reader: Reader, data: bytes, every: float, limit: float
) -> float | None:
    """Send `data` one byte every `every` seconds (cycling); seconds until the peer closed,
    or None if it had not after `limit`."""
    opened = time.monotonic()
    i = 0
    while time.monotonic() - opened < limit:
        if reader.closed(every):
            return time.monotonic() - opened
        try:
            sock.send(data[i % len(data) : i % len(data) + 1])
        except OSError:
            return time.monotonic() - opened
        i += 1
    return None


def test_head_dribbled_slower_than_the_header_timeout_is_closed(quick: SidecarProcess) -> None:
    """An evaluation head sent a byte every 0.2 s is cut off once the 4 s header timeout has
    passed since the connection opened."""
    sock = connect(quick)
    reader = Reader(sock)
    head = request(quick, PERMIT).partition(b"\r\n\r\n")[0]
    closed_at = dribble(sock, reader, head[:200], 0.2, 15)
    sock.close()
    assert closed_at is not None, "never cut off"
    assert 3.5 <= closed_at <= 8.0, closed_at
    assert reader.buffer == b""  # no answer


def test_head_diverging_late_keeps_the_original_deadline(quick: SidecarProcess) -> None:
    """A head that looks like an evaluation for 3 s and then diverges is handed to aiohttp,
    and is still cut off at the header deadline of the connection opening (4 s), not at
    aiohttp's own deadline counted from the hand-over (7 s)."""
    sock = connect(quick)
    reader = Reader(sock)
    opened = time.monotonic()
    prefix = b"POST /access/v1/evaluation"
    for byte in prefix:
        sock.send(bytes([byte]))
        time.sleep(2.6 / len(prefix))
    assert not reader.closed(3.0 - (time.monotonic() - opened))
    sock.send(b"X")  # no longer an evaluation: aiohttp's from now on
    closed_at = dribble(sock, reader, b"Y", 0.1, 15)
    sock.close()
    assert closed_at is not None, "never cut off"
    assert 3.5 <= closed_at + 3.0 <= 6.0, closed_at + 3.0


BODY_TIMED_OUT = {
    "error": "invalid_request",
    "reason": "body_timeout",
    "error_description": "the request body did not arrive in time",
}


def test_body_slower_than_the_body_timeout_gets_408(quick: SidecarProcess) -> None:
    """An evaluation whose body stops arriving gets 408 body_timeout after the 1 s body
    timeout, and the connection is closed."""
    sock = connect(quick)
    reader = Reader(sock)
    data = request(quick, PERMIT)
    sock.sendall(data[:-5])
    started = time.monotonic()
    reply = reader.reply(10)
    waited = time.monotonic() - started
    closed = reader.closed(5)
    sock.close()
    assert reply is not None
    assert reply.status == 408
    assert reply.json() == BODY_TIMED_OUT
    assert reply.headers["connection"] == "close"
    assert 0.9 <= waited <= 6, waited
    assert closed


def test_body_slower_than_the_body_timeout_gets_408_after_a_hand_over(
    quick: SidecarProcess,
) -> None:
    """On a connection aiohttp serves, an evaluation whose body stops arriving also gets 408
    body_timeout, so it cannot hold a busy slot of the connection cap for ever."""
    sock, reader = handed_over(quick)
    sock.sendall(request(quick, PERMIT)[:-5])
    reply = reader.reply(6)
    closed = reader.closed(5)
    sock.close()
    assert reply is not None
    assert reply.status == 408
    assert reply.json() == BODY_TIMED_OUT  # the front's answer, word for word
    assert reply.headers["connection"] == "close"
    assert closed


def test_an_access_request_body_slower_than_the_body_timeout_gets_408(
    quick: SidecarProcess,
) -> None:
    """An ARAP access request (aiohttp's endpoint) whose body stops arriving gets the same
    408 body_timeout, and the connection is closed."""
    sock = connect(quick)
    reader = Reader(sock)
    sock.sendall(request(quick, {"evaluation_id": "e"}, path="/access/v1/requests")[:-3])
    reply = reader.reply(6)
    closed = reader.closed(5)
    sock.close()
    assert reply is not None
    assert reply.status == 408
    assert reply.json() == BODY_TIMED_OUT
    assert closed


def test_idle_after_an_answer_is_closed_at_the_header_timeout(quick: SidecarProcess) -> None:
    """A kept-alive connection idle after the front's answer is closed once the header
    timeout passes without a new request head."""
    sock = connect(quick)
    reader = Reader(sock)
    sock.sendall(request(quick, PERMIT))
    reply = reader.reply()
    answered = time.monotonic()
    closed = reader.closed(12)
    idle = time.monotonic() - answered
    sock.close()
    assert reply is not None and reply.status == 200
    assert closed
    assert 3.5 <= idle <= 8.0, idle


# ---------------------------------------------------------------------- the connection cap
SLOW_POLICY = """package front.slow

import rego.v1

# Asks an address that accepts and never answers: OPA waits for the whole timeout.
decision := {"decision": true, "context": {"waited": true}} if {
	url := "http://127.0.0.1:%d/"
	r := http.send({"method": "GET", "url": url, "timeout": "2s", "raise_error": false})
	r
}
"""


@pytest.fixture
def hold() -> Iterator[int]:
    """A port that accepts connections and never answers them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


def test_idle_front_connections_are_evicted_busy_ones_are_not(
    tmp_path: Path, own_opa: OpaServer, hold: int
) -> None:
    """At a cap of 2, a newcomer replaces a connection idle on the front, not one whose
    evaluation OPA is still deciding; that one still gets its answer. With both busy, the
    next newcomer gets 503 too_many_connections."""
    own_opa.put_policy("front_slow", SLOW_POLICY % hold)
    process = SidecarProcess(
        tmp_path / "s",
        own_opa.url,
        "--http-max-connections",
        "2",
        "--authzen-decision-path",
        "front/slow/decision",
        "--opa-timeout",
        "10",
    )
    with running(process) as sidecar:
        idle = connect(sidecar)
        idle_reader = Reader(idle)
        busy = connect(sidecar)
        busy_reader = Reader(busy)
        time.sleep(0.3)
        busy.sendall(request(sidecar, PERMIT, rid="busy"))
        time.sleep(0.5)  # the evaluation is with OPA now
        newcomer = connect(sidecar)
        new_reader = Reader(newcomer)
        newcomer.sendall(request(sidecar, PERMIT, rid="new"))
        idle_closed = idle_reader.closed(3)
        time.sleep(0.5)  # the newcomer's evaluation is with OPA too
        third = connect(sidecar)
        refused = Reader(third).reply(5)
        busy_reply = busy_reader.reply(10)
        new_reply = new_reader.reply(10)
        for sock in (idle, busy, newcomer, third):
            sock.close()
    assert idle_closed
    assert refused is not None and refused.status == 503
    assert refused.json()["error_description"] == "too_many_connections"
    assert busy_reply is not None
    assert (busy_reply.status, busy_reply.headers["x-request-id"]) == (200, "busy")
    assert busy_reply.json() == {"decision": True, "context": {"waited": True}}
    assert new_reply is not None and new_reply.status == 200


# ---------------------------------------------------------------------- clients that never read
def stalled(sidecar: SidecarProcess, within: float) -> int:
    """The number of `authzen_decision` records once it stops growing for 2 s."""
    counts = [len(sidecar.events("authzen_decision"))]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        time.sleep(1.0)
        counts.append(len(sidecar.events("authzen_decision")))
        if len(counts) >= 3 and counts[-1] == counts[-3]:
            return counts[-1]
    raise AssertionError(f"still deciding after {within} s: {counts}")


AMPLIFIED = {
    "subject": {"type": "agent", "id": DEV},
    "action": {"name": "payments.refund"},
    "resource": {"type": "uri", "id": "payments://orders/42"},
    "evaluations": [{}] * 256,
}
"""A 1 KB request whose answer is about 35 KB: 256 denials, each with its reasons."""


def send_all_you_can(sock: socket.socket, data: bytes, within: float) -> int:
    """Write as much of `data` as the peer takes within `within` seconds; bytes written."""
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + within
    while sent < len(data) and time.monotonic() < deadline:
        _, writable, _ = select.select([], [sock], [], 0.2)
        if writable:
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(data[sent:])
    sock.setblocking(True)
    return sent


def amplified(sidecar: SidecarProcess) -> tuple[bytes, int]:
    """AMPLIFIED as a request, and the size of its answer."""
    one = request(sidecar, AMPLIFIED, path="/access/v1/evaluations")
    (reply,) = exchange(sidecar, one, fresh=False, count=1)
    assert reply.status == 200
    return one, len(reply.body)


def test_answers_backed_up_are_bounded_per_connection(front: SidecarProcess) -> None:
    """A client that pipelines 200 amplified batches (7 MB of answers) and reads nothing: the
    front decides no more once its answers back up, so what it wrote is what the kernel holds
    (tcp_wmem, 4 MB at most) plus about one answer, not everything it had read; once the
    client reads, every one of them is answered."""
    one, answer = amplified(front)
    count = 200
    wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    before = len(front.events("authzen_decision"))
    sock = connect(front, rcvbuf=4096)
    reader = Reader(sock)
    try:
        send_all_you_can(sock, one * count, 10)
        decided = (stalled(front, 60) - before) // 256
        replies = reader.replies(count, timeout=120)
    finally:
        sock.close()
    # The kernel's send buffer, the client's small receive buffer, the transport's
    # high-water mark (64 KiB) and the answer that crossed it.
    assert decided * answer <= wmem + 256 * 1024 + 2 * answer, (decided, answer, wmem)
    assert decided < count
    assert len(replies) == count
    assert {r.status for r in replies} == {200}


def test_a_hand_over_while_answers_are_backed_up_keeps_reading(front: SidecarProcess) -> None:
    """A connection handed to aiohttp while the front's answers were backed up (the client
    was not reading) is read on once the client reads: a request sent after is answered."""
    one, _ = amplified(front)
    count = 180  # about 180 KB of requests (one read), 6 MB of answers (more than tcp_wmem)
    sock = connect(front, rcvbuf=4096)
    reader = Reader(sock)
    try:
        sock.sendall(one * count + HEALTHZ)
        stalled(front, 60)
        replies = reader.replies(count + 1, timeout=120)
        sock.sendall(HEALTHZ)
        after = reader.reply(10)
    finally:
        sock.close()
    assert [r.status for r in replies] == [200] * (count + 1)
    assert replies[-1].json() == {"status": "ok"}
    assert after is not None, "the handed-over connection no longer reads"
    assert after.status == 200
