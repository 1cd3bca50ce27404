"""Differential fuzzing of the HTTP listener's front (`sidecar.http_front.parse_head`) against
aiohttp's own request parser, in-process.

The front answers a request itself only when it understands it exactly, and otherwise hands
the connection to aiohttp. That is safe only if whatever the front accepts, aiohttp reads the
same way: one message, the same method, target and version, the same body length, no other
framing, no content coding, no upgrade, the same values of the fields the front uses, the
same keep-alive decision, and the next message starting where the front thinks it starts.
Heads are built from a grammar that mixes well-formed parts with the classic smuggling and
parsing tricks (RFC 9112 §5, §6.3, §11.2). aiohttp's C parser (what the server runs) and its
pure-Python one are both checked.
"""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy
from hypothesis import event, given, settings
from hypothesis import strategies as st

from sidecar.authzen.documents import MAX_BODY_BYTES, valid_request_id
from sidecar.http_front import Answer, Front, parse_head

CREDENTIAL = "Bearer t0ken"
ROUTES = (b"/access/v1/evaluation", b"/access/v1/evaluations")
NEXT = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


async def _never(body: bytes, rid: str | None, base: str) -> Answer:
    raise AssertionError("not called")


FRONT = Front(
    routes=dict.fromkeys(ROUTES, _never),
    authorized=lambda header: header == CREDENTIAL,
    request_id_ok=valid_request_id,
    max_body=MAX_BODY_BYTES,
    body_timeout=1.0,
    body_timed_out=Answer(408, b"{}"),
)

request_lines = st.sampled_from(
    [
        b"POST /access/v1/evaluation HTTP/1.1",
        b"POST /access/v1/evaluations HTTP/1.1",
    ]
    * 6
    + [
        b"POST /access/v1/evaluation HTTP/1.0",
        b"POST /access/v1/evaluation  HTTP/1.1",
        b"POST  /access/v1/evaluation HTTP/1.1",
        b"post /access/v1/evaluation HTTP/1.1",
        b"POST /access/v1/evaluation?x=1 HTTP/1.1",
        b"POST /access/v1/evaluation/ HTTP/1.1",
        b"POST http://x/access/v1/evaluation HTTP/1.1",
        b"POST /access/v1/evaluation HTTP/1.1 ",
        b"POST /access/v1/evaluation HTTP/2.0",
        b"POST /access/v1/%65valuation HTTP/1.1",
        b"GET /access/v1/evaluation HTTP/1.1",
    ]
)
names = st.sampled_from(
    [
        b"Host",
        b"Content-Length",
        b"content-length",
        b"Content-Type",
        b"Authorization",
        b"X-Request-ID",
        b"Connection",
        b"Transfer-Encoding",
        b"Content-Encoding",
        b"Expect",
        b"Upgrade",
        b"Keep-Alive",
        b"TE",
        b"X-Other",
        b"Content-Length ",
        b" Content-Length",
        b"Content_Length",
        b"Cont\x00ent-Length",
        b"",
    ]
)
values = st.sampled_from(
    [
        b"127.0.0.1:9464",
        b"x",
        b"[::1]:80",
        b"x y",
        b"application/json",
        b"application/json; charset=utf-8",
        b"Application/JSON",
        b"text/plain",
        CREDENTIAL.encode(),
        b"Bearer wrong",
        b"req-1",
        b"close",
        b"keep-alive",
        b"Keep-Alive, close",
        b"upgrade",
        b"chunked",
        b"gzip",
        b"identity",
        b"100-continue",
        b"2",
        b"02",
        b"+2",
        b"-2",
        b"0x2",
        b"2 2",
        b"2,2",
        b"99999999999",
        b"",
        b"\x00",
        b"a\rb",
        b"a\nb",
        b"\xff\xfe",
        b"\x7f",
        b"\tx\t",
    ]
)
separators = st.sampled_from([b": ", b":", b":\t", b" : ", b" :", b"::"])
endings = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\n "])
benign = st.tuples(
    st.sampled_from([b"X-Other", b"X-Request-ID", b"Connection", b"Accept", b"User-Agent"]),
    st.sampled_from([b": ", b":", b":\t"]),
    st.sampled_from([b"req-1", b"close", b"keep-alive", b"Keep-Alive, close", b"*/*", b"a b"]),
    st.just(b"\r\n"),
)


@st.composite
def heads(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A head (ending in CRLF CRLF) and a body of the length its first Content-Length says."""
    line = draw(request_lines)
    fields: list[tuple[bytes, bytes, bytes, bytes]] = []
    # Mostly the fields a request the front takes needs, so that acceptance is reached often.
    if draw(st.integers(0, 7)):
        fields += [
            (b"Host", b": ", b"127.0.0.1:9464", b"\r\n"),
            (b"Content-Type", b": ", b"application/json", b"\r\n"),
            (b"Authorization", b": ", CREDENTIAL.encode(), b"\r\n"),
            (b"Content-Length", b": ", b"2", b"\r\n"),
        ]
    hostile = st.tuples(names, separators, values, endings)
    extra = draw(st.lists(st.one_of(benign, benign, benign, hostile), min_size=0, max_size=4))
    for item in extra:
        fields.insert(draw(st.integers(0, len(fields))), item)
    head = line + b"\r\n" + b"".join(n + s + v + e for n, s, v, e in fields) + b"\r\n"
    return head, b"{}"


def _aiohttp_read(parser_class: Any, data: bytes) -> list[tuple[Any, bytes]]:
    """The messages aiohttp's parser reads from `data`, with their bodies."""

    async def read() -> list[tuple[Any, bytes]]:
        parser = parser_class(
            mock.Mock(), asyncio.get_running_loop(), 2**16, max_line_size=8190, max_field_size=8190
        )
        messages, upgraded, _ = parser.feed_data(data)
        assert not upgraded
        out = []
        for message, payload in messages:
            out.append((message, payload.read_nowait(-1)))
        return out

    return asyncio.run(read())


@pytest.mark.parametrize("parser_class", [HttpRequestParser, HttpRequestParserPy])
@settings(max_examples=1500)
@given(drawn=heads())
def test_what_the_front_takes_aiohttp_reads_the_same_way(
    parser_class: Any, drawn: tuple[bytes, bytes]
) -> None:
    """A head the front accepts is one aiohttp reads with the same method, target, version,
    body length (no chunking, coding or upgrade), field values and keep-alive, and the next
    request starts where the front says its body ends."""
    head, body = drawn
    end = head.find(b"\r\n\r\n")
    request = parse_head(FRONT, head[:end], end + 4) if end >= 0 else None
    event("front takes it" if request is not None else "front steps aside")
    if request is None:
        return
    assert request.head_length == len(head)
    body = body.ljust(request.body_length, b" ")[: request.body_length]
    # After `Connection: close` both stop reading (llhttp refuses data after it).
    following_request = b"" if request.close else NEXT
    messages = _aiohttp_read(parser_class, head + body + following_request)
    assert len(messages) == (1 if request.close else 2), messages
    message, payload = messages[0]
    assert message.method == "POST"
    assert message.path.encode() in ROUTES
    assert message.version == (1, 1)
    assert not message.chunked
    assert message.compression is None
    assert not message.upgrade
    assert message.headers.getall("Content-Length") == [str(request.body_length)]
    assert payload == body
    assert message.should_close == request.close
    assert request.base == "http://" + message.headers["Host"]
    assert message.headers.getall("Authorization") == [CREDENTIAL]
    assert message.headers.get("X-Request-ID") == request.request_id
    assert message.headers["Content-Type"].split(";")[0].strip().lower() == "application/json"
    if not request.close:
        following = messages[1][0]
        assert (following.method, following.path) == ("GET", "/healthz")


def test_the_grammar_reaches_both_outcomes() -> None:
    """The well-formed request is taken and a smuggling classic is not: the property above
    is not vacuous."""
    good = (
        b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: " + CREDENTIAL.encode() + b"\r\nContent-Length: 2"
    )
    assert parse_head(FRONT, good, len(good) + 4) is not None
    smuggled = good + b"\r\nTransfer-Encoding: chunked"
    assert parse_head(FRONT, smuggled, len(smuggled) + 4) is None
