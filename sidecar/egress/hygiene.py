"""Header hygiene between the agent, the proxy and the upstream.

- Hop-by-hop fields (RFC 9110 §7.6.1: Connection, the fields it names, and Proxy-Connection,
  Keep-Alive, TE, Transfer-Encoding, Upgrade) belong to one connection and are never
  forwarded, in either direction.
- A request whose framing two parsers could read differently is refused, not repaired:
  Transfer-Encoding with Content-Length (RFC 9112 §6.1: "ought to be handled as an error"),
  more than one Content-Length (§6.3 item 5), a field folded over lines (obs-fold, §5.2).
  This is request smuggling's raw material (CL.TE / TE.CL desync).
- The agent's credential (Authorization, DPoP, Proxy-Authorization) stops here; the
  upstream credential is added here and nowhere else, and a response that echoes it back
  has it masked (`Redactor`), so the secret never reaches the agent.
"""

from __future__ import annotations

from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
AGENT_CREDENTIALS = frozenset({"authorization", "dpop", "proxy-authorization"})
# Set by the proxy's own client for the upstream hop. Content-Length passes (aiohttp's parser
# vouched for it: the body forwarded has exactly that length), so a body is not re-framed
# as chunked, which some servers refuse.
REQUEST_OWN = frozenset({"host", "accept-encoding"})
# The proxy decodes what it forwards (to find an echoed secret), so length and coding change.
RESPONSE_OWN = frozenset({"content-length", "content-encoding"})


def smuggling_problem(
    headers: CIMultiDictProxy[str], raw_headers: Iterable[tuple[bytes, bytes]]
) -> str | None:
    """Why this request's framing is ambiguous, or None."""
    if "transfer-encoding" in headers and "content-length" in headers:
        return "Transfer-Encoding together with Content-Length (RFC 9112 §6.1)"
    if len(headers.getall("content-length", ())) > 1:
        return "more than one Content-Length (RFC 9112 §6.3)"
    for _, value in raw_headers:
        if b"\r" in value or b"\n" in value:
            return "a header folded over several lines (obs-fold, RFC 9112 §5.2)"
    return None


_REQUEST_DROP = HOP_BY_HOP | AGENT_CREDENTIALS | REQUEST_OWN
_RESPONSE_DROP = HOP_BY_HOP | RESPONSE_OWN


def connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    """Field names listed in Connection (RFC 9110 §7.6.1): hop-by-hop too."""
    named: set[str] = set()
    for value in headers.getall("connection", ()):
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def _dropped(base: frozenset[str], headers: CIMultiDictProxy[str]) -> frozenset[str]:
    # The common case (no Connection field) allocates no set per request.
    return base | connection_named(headers) if "connection" in headers else base


def upstream_request_headers(
    headers: CIMultiDictProxy[str], inject: tuple[str, str]
) -> CIMultiDict[str]:
    """The agent's headers minus hop-by-hop fields and its credential, plus the upstream
    credential (replacing any field of that name the agent sent)."""
    name, value = inject
    drop = _dropped(_REQUEST_DROP, headers)
    lowered = name.lower()
    out: CIMultiDict[str] = CIMultiDict(
        (k, v) for k, v in headers.items() if (low := k.lower()) not in drop and low != lowered
    )
    out[name] = value
    return out


def agent_response_headers(headers: CIMultiDictProxy[str], secret: str) -> CIMultiDict[str]:
    """The upstream's headers minus hop-by-hop fields; a field whose value contains the
    injected secret is dropped (the agent must never see it)."""
    drop = _dropped(_RESPONSE_DROP, headers)
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in drop and secret not in v
    )


class Redactor:
    """Masks every occurrence of `secret` in a byte stream cut into arbitrary chunks, with
    as many `*` as it has bytes (lengths stay true). Holds back the last len(secret)-1 bytes
    of each chunk until the next, in case the secret straddles the cut."""

    __slots__ = ("_carry", "_mask", "_secret", "hits")

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()
        self._mask = b"*" * len(self._secret)
        self._carry = b""
        self.hits = 0

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk if self._carry else chunk
        count = data.count(self._secret)
        if count:
            self.hits += count
            data = data.replace(self._secret, self._mask)
        keep = len(self._secret) - 1
        if keep <= 0 or len(data) <= keep:
            self._carry = data if keep > 0 else b""
            return b"" if keep > 0 else data
        self._carry = data[-keep:]
        return data[:-keep]

    def flush(self) -> bytes:
        data, self._carry = self._carry, b""
        return data
