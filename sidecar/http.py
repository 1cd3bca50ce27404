"""The HTTP listener: metrics, health, JWKS, RFC 7662 introspection, RFC 7009 revocation,
the AuthZEN endpoints (sidecar/authzen/) and the Shared Signals transmitter
(sidecar/ssf/routes.py).

The app sees the sidecar only through `Endpoints` (introspect, revoke, JWKS, readiness,
metrics exposition), never the engine. `/introspect` and `/revoke` require
`Authorization: Bearer <credential>` (`http_token_file`); without one configured they answer
401, unless `http_allow_anonymous_loopback` opens them on a loopback listener. An inactive,
foreign or garbage token introspects as exactly `{"active": false}`.

`HttpListener` bounds what one local user can hold (docs/security.md, "The HTTP listener
against a local user"):
- a request head must arrive complete within `http_header_timeout` of the connection opening
  or of the previous response (aiohttp's keep-alive timer: it starts when the connection
  opens, partial data does not push it back, and it closes a connection still waiting for a
  whole request; tests/integration/test_http_listener.py holds it to that);
- a form body (or a Shared Signals JSON body) must arrive within `http_body_timeout` (408);
- at most `http_max_connections` connections at once: a new one replaces the one idle
  longest, or is answered 503 `too_many_connections` when every one is handling a request.
  A Shared Signals poll (RFC 8936) holds its connection, busy, for up to 5 s while it waits
  for events: receivers polling at once count against the cap.
  The process keeps its other file descriptors for the agents' gRPC socket, the store and
  the audit log.

Each connection starts on the lean front of `sidecar/http_front.py`, which answers plain
AuthZEN evaluations itself and hands the connection to this app at the first request that is
anything else; the limits above hold on both.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

from aiohttp import web

from .authzen import AuthzenService
from .errors import ConfigError, SidecarError
from .http_front import Connection, Front
from .ssf.routes import add_routes as add_ssf_routes
from .ssf.transmitter import Transmitter

log = logging.getLogger("jit_sidecar.http")
FRONT = web.AppKey("front", Front)
"""The app's lean path for AuthZEN evaluations (sidecar/http_front.py), when it has one."""
MAX_FORM_BYTES = 32 * 1024
BACKLOG = 64
#: Seconds between two warnings that the connection cap refused someone.
CAP_WARNING_INTERVAL = 60.0
#: Seconds the listener waits at shutdown for evaluations its front is answering.
SHUTDOWN_GRACE = 5.0


class Endpoints(Protocol):
    """What the HTTP app may ask of the sidecar."""

    async def introspect(self, token: str) -> Mapping[str, Any] | None:
        """The claims of `token` when it is active now, else None."""
        ...

    async def revoke(self, token: str) -> str | None:
        """Revoke the grant of an active `token`; its grant id, or None when there was none.

        Raises SidecarError when the revocation is not durable yet (it is in effect)."""
        ...

    def jwks(self) -> bytes:
        """The JWK Set of current and not-yet-retired public keys."""
        ...

    def readiness(self) -> dict[str, str]:
        """Each check by name: "ok" or what is wrong."""
        ...

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type."""
        ...


def create_app(
    endpoints: Endpoints,
    *,
    credential: str | None,
    anonymous: bool = False,
    body_timeout: float = 10.0,
    authzen: AuthzenService | None = None,
    transmitter: Transmitter | None = None,
    exchange: Callable[[web.Request, float], Awaitable[web.Response]] | None = None,
) -> web.Application:
    """`credential` guards /introspect and /revoke; `anonymous` opens them (loopback only,
    checked by Config.validate). With neither, they answer 401 to everyone. `exchange`
    serves POST /token, RFC 8693 token exchange (sidecar.token_exchange), guarded alike."""
    app = web.Application(client_max_size=MAX_FORM_BYTES)

    def carries_credential(header: str) -> bool:
        """`header` is an Authorization value with the credential (or none is needed)."""
        if credential is None:
            return anonymous
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), credential.encode()
        )

    def authorized(request: web.Request) -> bool:
        return carries_credential(request.headers.get("Authorization", ""))

    def guarded(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        # RFC 7662 §2.1 and RFC 7009 §2.1: the caller authenticates; RFC 6750 §3 for the
        # WWW-Authenticate challenge.
        async def wrapper(request: web.Request) -> web.StreamResponse:
            if not authorized(request):
                body = {"error": "invalid_client"}
                if credential is None:
                    body["error_description"] = "no_credential_configured"
                return web.json_response(
                    body, status=401, headers={"WWW-Authenticate": 'Bearer realm="jit-sidecar"'}
                )
            return await handler(request)

        return wrapper

    async def form_token(request: web.Request) -> str | web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return missing_token()
        try:
            async with asyncio.timeout(body_timeout):
                form = await request.post()
        except TimeoutError:
            return web.json_response(
                {"error": "invalid_request", "error_description": "body_timeout"},
                status=408,
                headers={"Connection": "close"},
            )
        except ValueError:
            # A body that is not UTF-8 form data (UnicodeDecodeError) is a bad request,
            # not a 500 with a traceback in the log.
            return missing_token()
        token = form.get("token")
        return token if isinstance(token, str) else missing_token()

    def missing_token() -> web.Response:
        return web.json_response(
            {"error": "invalid_request", "error_description": "form field `token` missing"},
            status=400,
        )

    async def handle_metrics(request: web.Request) -> web.Response:
        body, content_type = endpoints.metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = endpoints.readiness()
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def jwks(request: web.Request) -> web.Response:
        return web.Response(
            body=endpoints.jwks(),
            content_type="application/jwk-set+json",
            headers={"Cache-Control": "max-age=60"},
        )

    async def introspect(request: web.Request) -> web.Response:
        token = await form_token(request)
        if isinstance(token, web.Response):
            return token
        c = await endpoints.introspect(token)
        if c is None:
            return web.json_response({"active": False})
        body = {
            "active": True,
            "scope": c.get("scope"),
            "client_id": c.get("client_id"),
            "sub": c.get("sub"),
            "aud": c.get("aud"),
            "exp": c.get("exp"),
            "iat": c.get("iat"),
            "nbf": c.get("nbf"),
            "jti": c.get("jti"),
            "txn": c.get("txn"),
            "iss": c.get("iss"),
            "token_type": "Bearer" if "cnf" not in c else "DPoP",
            "tier": c.get("tier"),
            "authorization_details": c.get("authorization_details"),
        }
        if "cnf" in c:
            body["cnf"] = c["cnf"]
        if "act" in c:  # RFC 8693 §4.1: the agent acting for `sub` (docs/delegation.md)
            body["act"] = c["act"]
        return web.json_response(body)

    async def revoke(request: web.Request) -> web.Response:
        token = await form_token(request)
        if isinstance(token, web.Response):
            return token
        # RFC 7009 §2.2: answer 200 whether or not the token was valid or active.
        try:
            grant_id = await endpoints.revoke(token)
        except SidecarError as err:
            # Revoked in memory (and retried until recorded), but not yet durable:
            # RFC 7009 §2.2.1 says 503, so the client asks again.
            log.error(
                "revocation through /revoke not recorded yet: %s",
                err.message,
                extra={"reason": err.reason.value},
            )
            return web.json_response(
                {"error": "temporarily_unavailable", "error_description": err.reason.value},
                status=503,
                headers={"Retry-After": "1"},
            )
        if grant_id is not None:
            log.info("revoked through /revoke", extra={"grant_id": grant_id})
        return web.Response(status=200)

    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_post("/introspect", guarded(introspect))
    app.router.add_post("/revoke", guarded(revoke))
    if authzen is not None:
        authzen.add_routes(app, guarded)  # AuthZEN 1.0 + ARAP: docs/authzen.md
        app[FRONT] = authzen.front(carries_credential)
    if transmitter is not None:
        # Shared Signals: docs/shared-signals.md
        add_ssf_routes(app, transmitter, guarded, body_timeout=body_timeout)
    if exchange is not None:

        async def token(request: web.Request) -> web.StreamResponse:
            return await exchange(request, body_timeout)

        app.router.add_post("/token", guarded(token))
    return app


_BUSY_BODY = b'{"error": "temporarily_unavailable", "error_description": "too_many_connections"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Busy(asyncio.Protocol):
    """Answers a connection beyond the cap with 503 and closes it, reading nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        stream = cast(asyncio.Transport, transport)
        stream.write(_BUSY)
        stream.close()


class HttpListener:
    """The HTTP app on one TCP socket, with a header timeout and a connection cap.

    At the cap, a new connection takes the place of the one idle longest (no request being
    handled: waiting for a request head, or kept alive), which is closed. Idle holders
    cannot keep a caller that sends its request at once from being served, and the number of
    file descriptors stays bounded. Only when every connection is handling a request is the
    newcomer answered 503 `too_many_connections`.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        max_connections: int,
        header_timeout: float,
    ) -> None:
        app.middlewares.append(self._track)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # aiohttp arms its keep-alive timer when a connection opens and after each
            # response, and closes a connection still waiting for a whole request when it
            # fires: with this value, that is the header timeout (see the module docstring).
            keepalive_timeout=header_timeout,
            # After an early answer (401, 408), read and drop the rest of a body for at
            # most this long before closing (aiohttp's default: 10 s).
            lingering_time=2.0,
        )
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self._front = app.get(FRONT)
        self._connections: OrderedDict[asyncio.Transport, Connection] = OrderedDict()
        """Admitted connections, the one idle longest first."""
        self._admitted = 0
        """Connections admitted whose connection_made has not run yet."""
        self.answering: set[asyncio.Task[None]] = set()
        """Requests the front (sidecar/http_front.py) is answering."""
        self.evicted = 0
        self.refused = 0
        self._last_warning = 0.0
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self.port: int | None = None

    @property
    def open_connections(self) -> int:
        return len(self._connections) + self._admitted

    def bind(self, host: str, port: int) -> None:
        """Take the address (serving starts with `start`); ConfigError, not a traceback,
        when it cannot be used."""
        try:
            self._sock = _bind(host, port)
        except OSError as err:
            what = "is already in use" if err.errno == errno.EADDRINUSE else f"failed: {err}"
            raise ConfigError(
                f"cannot listen on http_addr {host}:{port}: the address {what} "
                "(choose another with --http-addr, or '' to disable the HTTP listener)"
            ) from err
        self.port = self._sock.getsockname()[1]

    async def start(self) -> None:
        """Serve on the bound address."""
        assert self._sock is not None, "bind() first"
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, sock=self._sock, backlog=BACKLOG)

    def _protocol(self) -> asyncio.Protocol:
        if self.open_connections >= self.max_connections and not self._evict_one():
            self.refused += 1
            self._warn("refusing new ones with 503")
            return _Busy()
        server = self._runner.server
        assert server is not None  # set up in start()
        self._admitted += 1
        return Connection(server, self, self._front)

    def _evict_one(self) -> bool:
        for transport, conn in self._connections.items():
            if not conn.busy:
                del self._connections[transport]
                transport.abort()  # frees its descriptor now; connection_lost follows
                self.evicted += 1
                self._warn("closing the ones idle longest")
                return True
        return False

    def _warn(self, action: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= CAP_WARNING_INTERVAL:
            self._last_warning = now
            log.warning(
                "HTTP listener at its cap of %d connections: %s",
                self.max_connections,
                action,
                extra={"count": self.evicted + self.refused, "reason": "too_many_connections"},
            )

    def _opened(self, conn: Connection) -> None:
        self._admitted -= 1
        assert conn.transport is not None
        self._connections[conn.transport] = conn

    def _closed(self, conn: Connection) -> None:
        if conn.transport is not None:
            self._connections.pop(conn.transport, None)

    def _idle(self, conn: Connection) -> None:
        """`conn` finished a request: idle from now, so the youngest idle one."""
        transport = conn.transport
        if transport is not None and transport in self._connections:
            self._connections.move_to_end(transport)

    @web.middleware
    async def _track(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        transport = request.transport
        conn = self._connections.get(transport) if transport is not None else None
        if transport is None or conn is None:
            return await handler(request)
        conn.busy += 1
        conn.started += 1
        try:
            return await handler(request)
        finally:
            conn.busy -= 1
            self._idle(conn)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()  # closes the socket too
            # Evaluations the front is answering finish first (aiohttp's cleanup waits for
            # its own handlers likewise), then the app closes, then what is left open.
            if self.answering:
                await asyncio.wait(self.answering, timeout=SHUTDOWN_GRACE)
            await self._runner.cleanup()
            for transport in list(self._connections):
                transport.close()
        elif self._sock is not None:
            self._sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening now takes the port for good; connections wait in the backlog until
        # start() serves them.
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
