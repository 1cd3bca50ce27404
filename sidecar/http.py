"""The HTTP listener: metrics, health, JWKS, RFC 7662 introspection, RFC 7009 revocation.

/introspect and /revoke require `Authorization: Bearer <credential>` when `http_token_file`
is configured (mandatory when bound beyond loopback). An inactive, foreign or garbage token
introspects as exactly `{"active": false}`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .engine import Engine
from .errors import SidecarError
from .ssf.routes import add_routes as add_ssf_routes
from .ssf.transmitter import Transmitter

log = logging.getLogger("jit_sidecar.http")
MAX_FORM_BYTES = 32 * 1024


@dataclass(slots=True)
class Readiness:
    """Facts /readyz reports; kept current by the server's probes."""

    policy_ok: bool = False
    policy_detail: str = "not checked yet"
    extra: dict[str, Callable[[], str]] = field(default_factory=dict)
    """More checks by name (e.g. `fleet`): each says "ok" or what is wrong."""


def create_app(
    engine: Engine,
    readiness: Readiness,
    *,
    credential: str | None,
    store_writable: Callable[[], bool],
    transmitter: Transmitter | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_FORM_BYTES)
    metrics = engine.metrics

    def authorized(request: web.Request) -> bool:
        if credential is None:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), credential.encode()
        )

    def guarded(
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            if not authorized(request):
                return web.json_response(
                    {"error": "invalid_client"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="jit-sidecar"'},
                )
            return await handler(request)

        return wrapper

    async def form_token(request: web.Request) -> str | None:
        if request.content_type != "application/x-www-form-urlencoded":
            return None
        try:
            form = await request.post()
        except ValueError:
            # A body that is not UTF-8 form data (UnicodeDecodeError) is a bad request,
            # not a 500 with a traceback in the log.
            return None
        token = form.get("token")
        return token if isinstance(token, str) else None

    def missing_token() -> web.Response:
        return web.json_response(
            {"error": "invalid_request", "error_description": "form field `token` missing"},
            status=400,
        )

    async def handle_metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        journal = engine.journal
        checks = {
            "policy": readiness.policy_detail if not readiness.policy_ok else "ok",
            "store": "ok" if (journal.store_healthy and store_writable()) else "not writable",
            "audit": "ok" if journal.audit_healthy else "not writable",
            "signing_key": "ok" if engine.keys.current is not None else "missing",
        }
        checks.update({name: check() for name, check in readiness.extra.items()})
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def jwks(request: web.Request) -> web.Response:
        return web.Response(
            body=engine.keys.jwks_json(engine.clock.now()),
            content_type="application/jwk-set+json",
            headers={"Cache-Control": "max-age=60"},
        )

    async def introspect(request: web.Request) -> web.Response:
        token = await form_token(request)
        if token is None:
            return missing_token()
        result = await engine.introspect(token, with_reason=False)
        if not result.active or result.grant is None:
            return web.json_response({"active": False})
        c = result.claims
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
        return web.json_response(body)

    async def revoke(request: web.Request) -> web.Response:
        token = await form_token(request)
        if token is None:
            return missing_token()
        # RFC 7009 §2.2: answer 200 whether or not the token was valid or active.
        result = await engine.introspect(token, with_reason=False)
        if result.active and result.grant is not None:
            grant_id = result.grant.grant_id
            try:
                await engine.revoke_grant(None, grant_id, "RFC 7009 revocation")
            except SidecarError as err:
                # Revoked in memory (and retried until recorded), but not yet durable:
                # RFC 7009 §2.2.1 says 503, so the client asks again.
                log.error(
                    "revocation through /revoke not recorded yet: %s",
                    err.message,
                    extra={"grant_id": grant_id, "reason": err.reason.value},
                )
                return web.json_response(
                    {"error": "temporarily_unavailable", "error_description": err.reason.value},
                    status=503,
                    headers={"Retry-After": "1"},
                )
            log.info("revoked through /revoke", extra={"grant_id": grant_id})
        return web.Response(status=200)

    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_post("/introspect", guarded(introspect))
    app.router.add_post("/revoke", guarded(revoke))
    if transmitter is not None:
        add_ssf_routes(app, transmitter, guarded)  # docs/shared-signals.md
    return app
