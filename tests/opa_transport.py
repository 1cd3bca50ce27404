"""A fault-injecting transport for `OpaClient` (httpx's MockTransport idea).

Faults only: a connection that breaks, an OPA that never answers, a status or body a real OPA
would not send. Every test of real decisions runs the real `opa` binary (tests/harness.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sidecar._http1 import Response

Handler = Callable[[str, str, bytes], Awaitable[Response]]


class MockTransport:
    """Answers each request with `await handler(method, path, body)`; the handler may raise
    `HttpError` or never return. Records each request."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[tuple[str, str, bytes]] = []
        self.closed = False

    async def request(self, method: str, path: str, body: bytes = b"") -> Response:
        self.requests.append((method, path, body))
        return await self._handler(method, path, body)

    async def aclose(self) -> None:
        self.closed = True


def answering(status: int, body: bytes) -> MockTransport:
    """Every request gets `status` and `body`."""

    async def handler(method: str, path: str, request_body: bytes) -> Response:
        return Response(status, body)

    return MockTransport(handler)
