"""Real HTTP servers for the egress tests: an HTTPS "ticket API" that records every request it
receives, and a small OAuth 2.0 token endpoint (client credentials, RFC 6749 §4.4). Both are
aiohttp servers on loopback, run on an event loop of their own in a background thread, so
that synchronous tests and separate sidecar processes can talk to them."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class _ServerThread:
    """An aiohttp application served on 127.0.0.1 from a thread with its own loop."""

    def __init__(self, tls: tuple[Path, Path] | None) -> None:
        self._tls = tls
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        raise NotImplementedError

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> _ServerThread:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        context = None
        if self._tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self._tls[0]), str(self._tls[1]))
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        server: Any = site._server  # the bound port of port 0
        self.port = server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class TicketApi(_ServerThread):
    """The upstream: /api/tickets/<id> (GET, POST comments), /api/stream (slow chunks),
    /api/broken (dies mid-answer), /api/echo (answers with the request's headers, as a
    careless API might). Every request
    is recorded, with every header, before it is answered."""

    def __init__(self, cert: Path, key: Path) -> None:
        super().__init__((cert, key))
        self.received: list[Received] = []
        self.accept: Callable[[Received], bool] = lambda r: True
        """Whether the credential a request carries is valid (401 otherwise)."""

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/api"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path, _, query = request.raw_path.partition("?")
        got = Received(request.method, path, query, list(request.headers.items()), body)
        self.received.append(got)
        if not self.accept(got):
            return web.json_response({"error": "bad credential"}, status=401)
        if path == "/api/stream":
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            for i in range(200):
                await response.write(f"chunk {i}\n".encode())
                await asyncio.sleep(0.05)
            await response.write_eof()
            return response
        if path == "/api/broken":
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            await response.write(b"partial answer\n")
            await asyncio.sleep(0.1)
            assert request.transport is not None
            request.transport.close()  # the upstream dies mid-answer
            return response
        if path == "/api/echo":
            return web.json_response({"headers": dict(request.headers)})
        if path == "/api/hop":
            return web.json_response(
                {"ok": True},
                headers={"Connection": "X-Upstream-Hop", "X-Upstream-Hop": "1", "X-Kept": "1"},
            )
        return web.json_response(
            {"method": request.method, "path": unquote(path), "length": len(body)},
            status=201 if request.method == "POST" else 200,
        )


class TokenEndpoint(_ServerThread):
    """OAuth 2.0 client credentials (RFC 6749 §4.4) with HTTP Basic client authentication
    (§2.3.1): issues `at-<n>` tokens living `lifetime` seconds to `client_id` holding the
    secret in `secret_file` (re-read on each request, so tests can rotate it)."""

    def __init__(
        self, cert: Path, key: Path, client_id: str, secret_file: Path, lifetime: int = 2
    ) -> None:
        super().__init__((cert, key))
        self.client_id = client_id
        self.secret_file = secret_file
        self.lifetime = lifetime
        self.issued: list[str] = []
        self.refusals = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/oauth2/token"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/oauth2/token", self._token)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            client, _, secret = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            client = secret = ""
        if (
            scheme != "Basic"
            or unquote(client) != self.client_id
            or unquote(secret) != self.secret_file.read_text().strip()
            or form.get("grant_type") != "client_credentials"
        ):
            self.refusals += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        token = f"at-{len(self.issued) + 1}-{self.port}"
        self.issued.append(token)
        return web.Response(
            text=json.dumps(
                {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
            ),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
